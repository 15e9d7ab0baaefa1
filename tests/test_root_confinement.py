"""Nothing outside --root is opened: not through `..` in a --dylib-list entry, not through a
symlink (file or folder) that climbs out of the root. Checked with an audit hook that sees every
`open` and `os.listdir`/`os.scandir` the build makes in this process (jobs=1)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory

from dyldcache.builder.pipeline import BuildOptions, build_cache

_SEEN: list[str] = []
_WATCHING = [False]


def _hook(event: str, args: tuple[object, ...]) -> None:
    if _WATCHING[0] and event in ("open", "os.listdir", "os.scandir", "os.readlink") and args:
        path = args[0]
        if isinstance(path, str | bytes | os.PathLike):
            _SEEN.append(os.fsdecode(os.path.abspath(os.fsdecode(path))))


sys.addaudithook(_hook)


@pytest.fixture
def escaping_root(cache_factory: CacheFactory, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    shutil.copytree(cache_factory.root("arm64"), root, symlinks=True)
    outside = tmp_path / "outside"
    (outside / "usr" / "lib").mkdir(parents=True)
    for name in ("libfxsecret.dylib", "libfxa.dylib"):
        shutil.copy(root / "usr" / "lib" / "libfxa.dylib", outside / "usr" / "lib" / name)
    (outside / "passwd").write_text("root:x:0:0\n")
    # a folder symlink that climbs out of the root, and a file symlink that does
    os.symlink("../../../outside/usr/lib", root / "usr" / "lib" / "ext")
    os.symlink("../../../outside/usr/lib/libfxsecret.dylib", root / "usr" / "lib" / "libfxlink.dylib")
    return root, outside


def _build(options: BuildOptions) -> object:
    _SEEN.clear()
    _WATCHING[0] = True
    try:
        return build_cache(options)
    finally:
        _WATCHING[0] = False


def test_a_dylib_list_cannot_reach_outside_the_root(escaping_root: tuple[Path, Path], tmp_path: Path) -> None:
    root, outside = escaping_root
    listed = [
        "/usr/lib/libSystem.B.dylib",
        "/usr/lib/libfxa.dylib",
        "../outside/usr/lib/libfxsecret.dylib",
        "/usr/lib/../../../outside/passwd",
        "/usr/lib/ext/libfxsecret.dylib",
        "/usr/lib/libfxlink.dylib",
    ]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(listed) + "\n")
    result = _build(
        BuildOptions(
            arch="arm64", output_dir=str(tmp_path / "out"), root=str(root), dylib_list=str(lst), jobs=1
        )
    )
    touched = [p for p in _SEEN if p.startswith(str(outside))]
    assert touched == [], f"opened outside the root: {touched}"
    assert sorted(result.dylibs) == ["/usr/lib/libSystem.B.dylib", "/usr/lib/libfxa.dylib"]  # type: ignore[attr-defined]
    warnings = "\n".join(result.warnings)  # type: ignore[attr-defined]
    for entry in listed[2:]:
        assert f"'{'/' + entry.lstrip('/')}'" in warnings and "outside the root" in warnings, entry


def test_a_walked_root_does_not_follow_links_out(escaping_root: tuple[Path, Path], tmp_path: Path) -> None:
    root, outside = escaping_root
    result = _build(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=str(root), jobs=1))
    touched = [p for p in _SEEN if p.startswith(str(outside))]
    assert touched == [], f"opened outside the root: {touched}"
    assert "/usr/lib/libfxlink.dylib" not in result.dylibs  # type: ignore[attr-defined]
    assert not any("secret" in d for d in result.dylibs)  # type: ignore[attr-defined]
    assert any("/usr/lib/libfxlink.dylib" in w and "outside the root" in w for w in result.warnings)  # type: ignore[attr-defined]
