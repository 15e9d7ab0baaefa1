"""Apple-linked Mach-O images from a few pinned macOS wheels on PyPI, for differential tests.

The wheels (about 11 MB in all) are fetched once with ``pip download`` into
``$DYLDCACHE_TEST_CACHE`` (default ``~/.cache/dyldcache-tests``) and unpacked next to it. They
were linked by Apple's linkers (ld64 for the x86_64 ones, ld-prime 1053 for arm64) with classic
LC_DYLD_INFO opcodes: rebases, binds incl. flat-namespace and addends, lazy binds, weak binds
(the C++ ones), exports with weak definitions, and function starts. ``CHAINED_WHEELS`` lists
wheels built for macOS 14 whose bundled dylibs use chained fixups instead (``macho_paths(CHAINED_WHEELS)``).

Offline, the tests that use them skip, except under ``DYLDCACHE_REQUIRE_ORACLES=1``, where a
missing corpus fails the test (a test that always skips could never fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path

import pytest
from conftest import REQUIRE_ORACLES

#: (project, exact version, wheel platform tag); the tag must be the one the wheel is built for
WHEELS: tuple[tuple[str, str, str], ...] = (
    ("pillow", "11.3.0", "macosx_10_10_x86_64"),  # 18 dylibs + 8 bundles, ld64
    ("pillow", "11.3.0", "macosx_11_0_arm64"),  # the same, ld 1053.12 (ld-prime)
    ("kiwisolver", "1.4.8", "macosx_10_9_x86_64"),  # C++: weak binds, flat-namespace binds
    ("kiwisolver", "1.4.8", "macosx_11_0_arm64"),
    ("contourpy", "1.3.2", "macosx_10_9_x86_64"),  # C++ (pybind11): weak binds, bind addends
    ("contourpy", "1.3.2", "macosx_11_0_arm64"),
)
#: wheels built for macOS 14 whose bundled dylibs use LC_DYLD_CHAINED_FIXUPS (pointer format 6):
#: scipy's .dylibs/libgfortran, libquadmath and special/libsf_error_state (22 MB download)
CHAINED_WHEELS: tuple[tuple[str, str, str], ...] = (("scipy", "1.15.3", "macosx_14_0_arm64"),)
#: the wheels whose bundled dylibs tests/test_wheel_caches.py puts into caches, per arch: eight
#: projects, 58 MH_DYLIBs per arch (about 60 MB of downloads in all), every one linked
#: by Apple's ld64 or ld-prime without split seg info (their install names are outside
#: /usr/lib), with @loader_path and @rpath loads and delocate's /DLC/ install names; pyzmq's
#: are universal2 (fat) files
CACHE_WHEELS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "arm64": (
        ("pillow", "11.3.0", "macosx_11_0_arm64"),  # 18: zlib-ng, libjpeg, libpng, libwebp, lzma, tiff, ...
        ("pycurl", "7.49.0", "macosx_11_0_arm64"),  # 15: libcurl, OpenSSL 3, nghttp2/3, ssh2, brotli, idn2
        ("psycopg2-binary", "2.9.13", "macosx_11_0_arm64"),  # 10: libpq, OpenSSL 3, Kerberos, OpenLDAP
        ("gmpy2", "2.3.2", "macosx_11_0_arm64"),  # 3: GMP, MPFR, MPC
        ("h5py", "3.16.0", "macosx_11_0_arm64"),  # 3: HDF5 (LC_RPATH @loader_path/), zlib
        ("tables", "3.11.1", "macosx_11_0_arm64"),  # 5: HDF5, blosc2 (an @rpath install name), lzo
        ("shapely", "2.2.0", "macosx_11_0_arm64"),  # 2: GEOS (C++)
        ("pyzmq", "27.3.0", "macosx_10_15_universal2"),  # 2: libzmq (C++), libsodium; fat
    ),
    "x86_64": (
        ("pillow", "11.3.0", "macosx_10_10_x86_64"),
        ("pycurl", "7.49.0", "macosx_10_9_x86_64"),
        ("psycopg2-binary", "2.9.13", "macosx_10_9_x86_64"),
        ("gmpy2", "2.3.2", "macosx_10_9_x86_64"),
        ("h5py", "3.16.0", "macosx_10_9_x86_64"),
        ("tables", "3.11.1", "macosx_10_9_x86_64"),
        ("shapely", "2.2.0", "macosx_10_9_x86_64"),
        ("pyzmq", "27.3.0", "macosx_10_15_universal2"),
    ),
}
PYTHON_VERSION = "3.11"

_MH_MAGIC_64 = b"\xcf\xfa\xed\xfe"
_MH_DYLIB = 6
_MH_BUNDLE = 8


def cache_dir() -> Path:
    env = os.environ.get("DYLDCACHE_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dyldcache-tests"


def _unavailable(message: str) -> None:
    if REQUIRE_ORACLES:
        pytest.fail(f"wheel corpus required (DYLDCACHE_REQUIRE_ORACLES=1) but unavailable: {message}")
    pytest.skip(f"wheel corpus unavailable: {message}")


def _fetch(project: str, version: str, platform: str) -> Path:
    """The unpacked wheel's folder, downloading and unpacking it on first use."""
    root = cache_dir() / "wheels"
    final = root / f"{project}-{version}-{platform}"
    if (final / ".complete").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--no-deps", "--platform", platform,
            "--python-version", PYTHON_VERSION, f"{project}=={version}", "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _Unavailable(f"pip download {project}=={version}: {exc}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise _Unavailable(f"pip download {project}=={version} ({platform}) failed: {' '.join(tail)}")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(unpacked)
        (unpacked / ".complete").write_text(wheels[0].name + "\n")
        # another test process may have got there first; either copy will do
        if not (final / ".complete").exists():
            shutil.rmtree(final, ignore_errors=True)
            os.replace(unpacked, final)
    return final


class _Unavailable(Exception):
    pass


def _is_image(path: Path, filetypes: tuple[int, ...]) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return len(head) == 16 and head[:4] == _MH_MAGIC_64 and int.from_bytes(head[12:16], "little") in filetypes


@cache
def _corpus(wheels: tuple[tuple[str, str, str], ...] = WHEELS) -> tuple[tuple[Path, ...], str | None]:
    paths: list[Path] = []
    try:
        for project, version, platform in wheels:
            folder = _fetch(project, version, platform)
            for dirpath, _, names in os.walk(folder):  # os.walk, not glob: the dylibs are in .dylibs
                for name in names:
                    p = Path(dirpath) / name
                    if _is_image(p, (_MH_DYLIB, _MH_BUNDLE)):
                        paths.append(p)
    except _Unavailable as exc:
        return (), str(exc)
    return tuple(sorted(paths)), None


def macho_paths(wheels: tuple[tuple[str, str, str], ...] = WHEELS) -> list[Path]:
    """Every thin 64-bit MH_DYLIB / MH_BUNDLE image in the pinned wheels (skips when offline);
    ``wheels`` picks another list, e.g. CHAINED_WHEELS."""
    paths, problem = _corpus(wheels)
    if problem is not None:
        _unavailable(problem)
    if not paths:
        _unavailable("the wheels hold no Mach-O images")
    return list(paths)


def wheel_folders(wheels: tuple[tuple[str, str, str], ...]) -> list[Path]:
    """The unpacked folder of each wheel, downloading it on first use (skips when offline)."""
    try:
        return [_fetch(project, version, platform) for project, version, platform in wheels]
    except _Unavailable as exc:
        _unavailable(str(exc))
        raise AssertionError("unreachable") from exc
