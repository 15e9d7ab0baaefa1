"""Fuzz targets: one function per part of dyldcache that reads untrusted bytes.

Each target takes the fuzzer's bytes, runs the code on them, and raises :class:`Bug` (or lets an
unexpected exception through) when the contract breaks:

- ``reader``: any bytes as a Mach-O file. Only :class:`~dyldcache.errors.FormatError` may come out
  of parsing and decoding, and every message names the file.
- ``builder``: the bytes replace one dylib (libfxa) of the example root; the build must succeed
  (that dylib is evicted or placed) or fail only because nothing at all could be placed; a cache
  it writes must pass ``verify``.
- ``cache``: any bytes as a cache main file. ``info``, ``list``, ``verify``, ``objc`` and the
  inspection reader calls may only report problems or raise FormatError/UsageError.

The same functions replay the saved crashers in the test suite (tests/test_fuzz.py) and run
under atheris in long campaigns (fuzz/run.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dyldcache.errors import DyldCacheError, FormatError, NothingPlacedError, UsageError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


class Bug(AssertionError):
    """The contract of a target is broken by an input (save it as a crasher)."""


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="dyldcache-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the reader


def reader(data: bytes) -> None:
    from dyldcache.macho.describe import describe_image
    from dyldcache.macho.fat import is_fat, parse_fat
    from dyldcache.macho.file import parse_macho

    path = "fuzzed.dylib"
    try:
        slices = [s.arch for s in parse_fat(data, path)] if is_fat(data) else [None]
        for arch in slices:
            image = parse_macho(data, path, arch)
            describe_image(image)  # fixups, exports, split seg, dependencies: every decoder
            image.symbol_table  # noqa: B018
            image.indirect_symbols  # noqa: B018
            image.function_starts  # noqa: B018
            image.data_in_code  # noqa: B018
    except FormatError as exc:
        if path not in str(exc):
            raise Bug(f"format error does not name the file: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# the builder

_ROOTS: dict[str, Path] = {}
VICTIM = "/usr/lib/libfxa.dylib"


def example_root(arch: str = "arm64") -> Path:
    """The bundled example, linked once per process into a temporary root."""
    if arch not in _ROOTS:
        from dyldcache.examples import link_examples

        root = Path(tempfile.mkdtemp(prefix=f"dyldcache-fuzz-root-{arch}-"))
        link_examples(arch, str(root))
        _ROOTS[arch] = root
    return _ROOTS[arch]


def builder(data: bytes, arch: str = "arm64") -> None:
    from dyldcache.builder.pipeline import BuildOptions, build_cache
    from dyldcache.cache.verify import verify_cache

    with _scratch() as work:
        root = work / "root"
        shutil.copytree(example_root(arch), root, symlinks=True)
        (root / VICTIM.lstrip("/")).write_bytes(data)
        try:
            result = build_cache(
                BuildOptions(arch=arch, output_dir=str(work / "out"), root=str(root), jobs=1)
            )
        except NothingPlacedError:
            raise Bug("one bad dylib made every dylib ineligible") from None
        except DyldCacheError as exc:
            raise Bug(f"the build failed because of one dylib: {type(exc).__name__}: {exc}") from exc
        problems = verify_cache(result.files[0])
        if problems:
            raise Bug(f"the cache written fails verify: {problems[:3]}")


# ---------------------------------------------------------------------------------------------
# the cache reader


def cache(data: bytes) -> None:
    from dyldcache.cache.describe import cache_info, cache_list
    from dyldcache.cache.objc_report import objc_report
    from dyldcache.cache.reader import DyldCache
    from dyldcache.cache.verify import verify_cache

    with _scratch() as work:
        path = work / "dyld_shared_cache_arm64"
        path.write_bytes(data)
        calls: list[Callable[[], object]] = [
            lambda: cache_info(str(path)),
            lambda: cache_list(str(path)),
            lambda: verify_cache(str(path)),
            # the ObjC tables and every image's ObjC metadata
            lambda: objc_report(str(path), selectors=True, classes=True, protocols=True),
        ]
        for call in calls:
            with contextlib.suppress(FormatError, UsageError):
                call()
        try:
            with DyldCache.open(path) as c:
                for img in c.images:
                    with contextlib.suppress(FormatError):
                        c.image_macho(img.index).exports  # noqa: B018
                with contextlib.suppress(FormatError):
                    c.dylibs_trie()
                with contextlib.suppress(FormatError):
                    c.local_symbols()
        except (FormatError, UsageError):
            pass


TARGETS: dict[str, Callable[[bytes], None]] = {"reader": reader, "builder": builder, "cache": cache}


def seeds(target: str) -> list[Path]:
    """The seed inputs of a target: the fixture dylibs, ../shared data and the test caches."""
    repo = HERE.parent
    shared = repo.parent / "shared" / "data"
    out: list[Path] = []
    if target in ("reader", "builder"):
        out += sorted(example_root("arm64").rglob("*.dylib"))
        if target == "reader":
            for sub in ("macho", "fuzzed", "real/ios14.4-arm64-procursus", "real/no-split-seg"):
                if (shared / sub).is_dir():
                    out += sorted(
                        p for p in (shared / sub).rglob("*") if p.is_file() and p.stat().st_size < 4 << 20
                    )
    if target == "cache":
        for sub in ("golden", "real/apple-caches", "fuzzed"):
            if (shared / sub).is_dir():
                out += sorted(p for p in (shared / sub).rglob("*") if p.is_file() and "LICENSE" not in p.name)
    return out


def crashers(target: str) -> list[Path]:
    """Saved inputs that once broke the target (replayed by the tests)."""
    folder = CORPUS / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def run_one(target: str, data: bytes) -> None:
    """Run ``target`` on ``data`` in this process (what the tests and atheris call)."""
    os.environ.setdefault("DYLDCACHE_FUZZING", "1")
    TARGETS[target](data)
