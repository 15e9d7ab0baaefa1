"""The bundled example dylibs, linked once per test process for every arch and fixup style
(``dyldcache.examples.link_examples``), shared by the linker, split seg, emulation and CLI tests."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dyldcache.examples import EXAMPLE_DYLIBS, OBJ_DIR, link_examples

#: (arch, fixup style) of every linked set; arm64e has no opcode form
CONFIGS: tuple[tuple[str, str], ...] = (
    ("arm64", "chained"),
    ("arm64", "opcodes"),
    ("arm64e", "chained"),
    ("x86_64", "chained"),
    ("x86_64", "opcodes"),
)
CONFIG_IDS = [f"{a}-{f}" for a, f in CONFIGS]
NAMES = tuple(d.name for d in EXAMPLE_DYLIBS)


@dataclass(frozen=True)
class LinkedSet:
    arch: str
    fixups: str
    root: Path
    #: in EXAMPLE_DYLIBS order (dependencies first)
    paths: tuple[Path, ...]

    def path(self, name: str) -> Path:
        return self.paths[NAMES.index(name)]

    def object(self, name: str) -> Path:
        """The object file the dylib ``name`` was linked from."""
        return OBJ_DIR / self.arch / f"{name}.o"

    def items(self) -> list[tuple[str, Path]]:
        return list(zip(NAMES, self.paths, strict=True))


@functools.cache
def linked(
    arch: str, fixups: str = "chained", weak_dylib: bool = False, split_seg: int = 2, lazy: bool = False
) -> LinkedSet:
    tag = f"{arch}-{fixups}-v{split_seg}" + ("-lazy" if lazy else "")
    root = Path(tempfile.mkdtemp(prefix=f"dyldcache-linked-{tag}-"))
    atexit.register(shutil.rmtree, root, True)
    paths = link_examples(
        arch,
        str(root),
        fixups=fixups,
        weak_dylib=weak_dylib,
        split_seg_version=split_seg,
        lazy_binding=lazy,
    )
    return LinkedSet(arch, fixups, root, tuple(Path(p) for p in paths))


def all_dylibs() -> list[tuple[str, str, str, Path]]:
    """(arch, fixups, example name, path) of every linked dylib of every config."""
    return [(a, f, n, p) for a, f in CONFIGS for n, p in linked(a, f).items()]
