"""The ObjC fixture root: the committed clang-22 objects of tests/fixtures/src/objc (a libobjc
stand-in that really dispatches messages, and three dylibs whose classes, categories and
protocols cross dylib boundaries), linked with our linker into a root, and caches built from it.

- /usr/lib/libSystem.B.dylib: the example libsystem.o (malloc, calloc, strcmp ...);
- /usr/lib/libobjc.A.dylib: runtime.o (NSObject, Protocol, objc_msgSend ...), links libSystem;
- /usr/lib/libfxshapes.dylib: shapes.o (FXBase : NSObject, protocol FXNamed);
- /usr/lib/libfxpoly.dylib: poly.o (FXPoly : FXBase, category FXBase (FXPolyExtras), FXNamed
  declared again, FXCounted);
- /usr/lib/libfxtop.dylib: top.o (FXTop : FXPoly, category NSObject (FXTopDebug), the C entry
  points the emulation test calls).

The same objects linked by ld64.lld-22 with ``-objc_relative_method_lists`` give a root whose
method lists are relative (12-byte entries naming selector references), as ld64 writes them
for current OSes: :func:`relative_objc_cache` (arm64, x86_64; lld cannot link arm64e's
authenticated pointers). lld writes no split seg info; the builder synthesizes it
(``-ignore_optimization_hints`` keeps ADRP pairs the synthesis can move).

Each root and cache is made once per test process.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conftest import tool

from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache
from dyldcache.examples import OBJ_DIR
from dyldcache.link.linker import LinkInput, LinkOptions, link

OBJC_SRC = Path(__file__).resolve().parent / "fixtures" / "src" / "objc"
OBJC_OBJ = OBJC_SRC / "obj"
ARCHS = ("arm64", "arm64e", "x86_64")

LIBSYSTEM = "/usr/lib/libSystem.B.dylib"
LIBOBJC = "/usr/lib/libobjc.A.dylib"
SHAPES = "/usr/lib/libfxshapes.dylib"
POLY = "/usr/lib/libfxpoly.dylib"
TOP = "/usr/lib/libfxtop.dylib"

#: (install name, object, dependencies by install name), dependencies first
OBJC_DYLIBS: tuple[tuple[str, Path | None, tuple[str, ...]], ...] = (
    (LIBSYSTEM, None, ()),
    (LIBOBJC, Path("runtime.o"), (LIBSYSTEM,)),
    (SHAPES, Path("shapes.o"), (LIBOBJC, LIBSYSTEM)),
    (POLY, Path("poly.o"), (SHAPES, LIBOBJC, LIBSYSTEM)),
    (TOP, Path("top.o"), (POLY, SHAPES, LIBOBJC, LIBSYSTEM)),
)
#: the images with ObjC metadata
OBJC_IMAGES = (LIBOBJC, SHAPES, POLY, TOP)


def _object(arch: str, obj: Path | None) -> str:
    return str(OBJ_DIR / arch / "libsystem.o") if obj is None else str(OBJC_OBJ / arch / obj)


def link_objc_root(arch: str, root: str, platform: str = "macos") -> dict[str, str]:
    """Link the ObjC fixture dylibs into ``root`` (each at its install name); install name -> path."""
    written: dict[str, str] = {}
    for install_name, obj, deps in OBJC_DYLIBS:
        out = os.path.join(root, install_name.lstrip("/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        link(
            LinkOptions(
                arch=arch,
                output=out,
                install_name=install_name,
                inputs=[LinkInput(_object(arch, obj))] + [LinkInput(written[d]) for d in deps],
                platform=platform,
            )
        )
        written[install_name] = out
    return written


@dataclass(frozen=True)
class ObjCBuilt:
    arch: str
    platform: str
    root: str
    #: install name -> input dylib path
    inputs: dict[str, str]
    result: BuildResult

    @property
    def main(self) -> str:
        return str(self.result.files[0])


def _scratch(tag: str) -> str:
    path = tempfile.mkdtemp(prefix=f"dyldcache-objc-{tag}-")
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.cache
def objc_root(arch: str, platform: str = "macos") -> tuple[str, dict[str, str]]:
    root = os.path.join(_scratch(f"root-{arch}-{platform}"), "root")
    return root, link_objc_root(arch, root, platform)


@functools.cache
def objc_cache(arch: str, platform: str = "macos") -> ObjCBuilt:
    """A cache of the ObjC fixture root, built once per process."""
    root, inputs = objc_root(arch, platform)
    out = os.path.join(_scratch(f"cache-{arch}-{platform}"), "cache")
    result = build_cache(BuildOptions(arch=arch, platform=platform, output_dir=out, root=root, jobs=1))
    return ObjCBuilt(arch, platform, root, inputs, result)


#: the archs ld64.lld-22 links the fixture objects for
RELATIVE_ARCHS = ("arm64", "x86_64")


#: LC_BUILD_VERSION, and the platforms of its platform field (mach-o/loader.h)
_LC_BUILD_VERSION = 0x32
_PLATFORMS = {"macos": 1, "ios": 2}


def _set_platform(path: str, platform: str) -> None:
    """Rewrite the platform of the LC_BUILD_VERSION of the thin 64-bit Mach-O at ``path``
    (lld refuses to link the fixture's macOS objects for iOS; the metadata is the same). The
    stale ad-hoc signature is not read by the builder."""
    data = bytearray(Path(path).read_bytes())
    ncmds = struct.unpack_from("<I", data, 16)[0]
    at = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, at)
        if cmd == _LC_BUILD_VERSION:
            struct.pack_into("<I", data, at + 8, _PLATFORMS[platform])
        at += size
    Path(path).write_bytes(bytes(data))


@functools.cache
def relative_objc_cache(arch: str, platform: str = "macos") -> ObjCBuilt:
    """A cache of the fixture root linked by ld64.lld-22 with relative method lists (for iOS:
    linked for macOS, then marked iOS by :func:`_set_platform`)."""
    root = os.path.join(_scratch(f"lld-root-{arch}-{platform}"), "root")
    written: dict[str, str] = {}
    for install_name, obj, deps in OBJC_DYLIBS:
        out = os.path.join(root, install_name.lstrip("/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        args = [tool("ld64.lld-22"), "-arch", arch, "-platform_version", "macos", "13.0", "13.0", "-dylib"]
        args += ["-objc_relative_method_lists", "-ignore_optimization_hints", "-install_name", install_name]
        args += ["-o", out, _object(arch, obj)] + [written[d] for d in deps]
        subprocess.run(args, check=True, capture_output=True)
        written[install_name] = out
    for path in written.values() if platform != "macos" else ():
        _set_platform(path, platform)
    out = os.path.join(_scratch(f"lld-cache-{arch}-{platform}"), "cache")
    result = build_cache(BuildOptions(arch=arch, platform=platform, output_dir=out, root=root, jobs=1))
    return ObjCBuilt(arch, platform, root, written, result)
