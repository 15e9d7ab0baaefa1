"""The example that ships with dyldcache: clang-22 objects of a small set of C and Objective-C
libraries (sources in the repository's ``tests/fixtures/src``) and the recipe that links
them, with ``dyldcache link``, into a root filesystem ready for ``dyldcache build``.

``dyldcache build --example`` uses it; so do the tests and the benchmark corpus.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..link.linker import LinkInput, LinkOptions, link
from ..macho.file import open_macho
from ..macho.tbd import format_tbd

EXAMPLES_DIR = Path(__file__).resolve().parent
OBJ_DIR = EXAMPLES_DIR / "obj"
TBD_DIR = EXAMPLES_DIR / "tbd"


@dataclass(frozen=True, slots=True)
class ExampleDylib:
    """One example library: its object's stem, its install name, and what it links against."""

    name: str
    install_name: str
    #: (example name or "tbd:<file>", mode) in command-line order; mode as LinkInput.mode
    deps: tuple[tuple[str, str], ...] = ()


#: in dependency order (every dependency comes first)
EXAMPLE_DYLIBS: tuple[ExampleDylib, ...] = (
    ExampleDylib("libsystem", "/usr/lib/libSystem.B.dylib"),
    ExampleDylib("liba", "/usr/lib/libfxa.dylib", (("libsystem", "load"),)),
    # libb's missing weak imports come from a newer "SDK" stub of libfxa: they exist at link
    # time, not in the libfxa that goes into the cache, so they bind to 0
    ExampleDylib("libb", "/usr/lib/libfxb.dylib", (("sdk:liba", "load"), ("libsystem", "load"))),
    ExampleDylib("libc", "/usr/lib/libfxc.dylib", (("liba", "reexport"), ("libsystem", "load"))),
    ExampleDylib("libd", "/usr/lib/libfxd.dylib", (("libc", "load"),)),
    ExampleDylib("libobjc", "/usr/lib/libobjc.A.dylib", (("libsystem", "load"),)),
    ExampleDylib("objc", "/usr/lib/libfxobjc.dylib", (("libobjc", "load"), ("libsystem", "load"))),
)

#: symbols the "SDK" stub of libfxa adds (libb imports them weakly)
SDK_ONLY_SYMBOLS = ("_fx_missing_data", "_fx_missing_fn")

ARCHS = ("arm64", "arm64e", "x86_64")


def example(name: str) -> ExampleDylib:
    for d in EXAMPLE_DYLIBS:
        if d.name == name:
            return d
    raise KeyError(name)


def _sdk_stub(dylib_path: str, install_name: str, arch: str, platform: str, folder: str) -> str:
    """A .tbd for a linked example dylib, plus the SDK-only symbols."""
    image = open_macho(dylib_path, arch)
    symbols = sorted({e.name for e in image.exports} | set(SDK_ONLY_SYMBOLS))
    path = os.path.join(folder, os.path.basename(install_name) + ".sdk.tbd")
    text = format_tbd(install_name, [f"{arch}-{platform}"], symbols)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def link_examples(
    arch: str,
    root: str,
    *,
    fixups: str = "chained",
    platform: str | None = None,
    weak_dylib: bool = False,
    names: tuple[str, ...] | None = None,
    split_seg_version: int = 2,
    lazy_binding: bool = False,
    on_linked: Callable[[], None] | None = None,
) -> list[str]:
    """Link the examples into ``root`` (a root filesystem: each dylib at its install name).

    ``weak_dylib`` links libb's weak imports against ``tbd/libfxmissing.tbd`` instead, so libb
    gains an LC_LOAD_WEAK_DYLIB on a dylib that never exists. ``split_seg_version=1`` (x86_64)
    links as ld64 does by default there: split seg v1 and no __DATA_CONST. ``lazy_binding``
    (opcode fixups) calls imports through __stub_helper as ld64 did before chained fixups; every
    dylib then also links libSystem, whose dyld_stub_binder the helpers jump to.
    ``on_linked`` is called after each dylib is written (progress). Returns the written paths.
    """
    if arch not in ARCHS:
        raise UsageError(f"no example objects for {arch!r} (have {', '.join(ARCHS)})")
    written: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dyldcache-example-") as scratch:
        for d in EXAMPLE_DYLIBS:
            if names is not None and d.name not in names:
                continue
            out = os.path.join(root, d.install_name.lstrip("/"))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            inputs = [LinkInput(str(OBJ_DIR / arch / f"{d.name}.o"))]
            for ref, mode in d.deps:
                if ref.startswith("sdk:"):
                    dep = example(ref[4:])
                    if weak_dylib:
                        inputs.append(LinkInput(written[dep.name], mode))
                        inputs.append(LinkInput(str(TBD_DIR / "libfxmissing.tbd"), "weak"))
                    else:
                        target = platform or "macos"
                        stub = _sdk_stub(written[dep.name], dep.install_name, arch, target, scratch)
                        inputs.append(LinkInput(stub, mode))
                else:
                    inputs.append(LinkInput(written[ref], mode))
            if lazy_binding and d.name != "libsystem" and "libsystem" not in dict(d.deps):
                inputs.append(LinkInput(written["libsystem"], "load"))
            search = sorted({os.path.dirname(p) for p in written.values()})
            link(
                LinkOptions(
                    arch=arch,
                    output=out,
                    install_name=d.install_name,
                    inputs=inputs,
                    platform=platform,
                    fixups=fixups,
                    search_paths=search,
                    split_seg_version=split_seg_version,
                    lazy_binding=lazy_binding,
                )
            )
            written[d.name] = out
            if on_linked is not None:
                on_linked()
    return list(written.values())
