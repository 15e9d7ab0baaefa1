"""What is deterministic (README "What is deterministic", issue 10).

A macOS cache records each input file's mtime and inode in its image list, as dyld-1162's
builder does (SubCache.cpp: ``images->modTime = inputFile->mtime; images->inode = ...`` unless
the dylibs are removed from disk). So two builds from *copies* of the same files differ in those
fields (and in what is derived from the bytes: the UUIDs and code signatures) and in nothing
else; with SOURCE_DATE_EPOCH (or --source-date-epoch) every recorded mtime is that time and
every inode 0, and the copies build byte-identical caches. The expected mtimes and inodes come
from os.stat of the input files, the fields are read with struct at the offsets of
docs/cache-format.md §1; -j does not change a byte.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, RawFile, snapshot
from conftest import cli_env

from dyldcache.builder.pipeline import BuildOptions, build_cache

MAIN = "dyld_shared_cache_arm64"
EPOCH = 1_700_000_000


def _build(root: Path, out: Path, *extra: str, epoch: str | None = None) -> None:
    env = cli_env()
    env.pop("SOURCE_DATE_EPOCH", None)
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    args = ["build", "--arch", "arm64", "-q", "-o", str(out), "--root", str(root), *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "dyldcache", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


def _image_infos(main: Path) -> dict[str, tuple[int, int]]:
    """install name -> (modTime, inode) of dyld_cache_image_info (32 bytes each)."""
    raw = RawFile(main)
    out = {}
    for i in range(raw.field("imagesCount")):
        _addr, mtime, inode, path_off = struct.unpack_from(
            "<3QI", raw.data, raw.field("imagesOffset") + 32 * i
        )
        out[raw.data[path_off : raw.data.index(b"\0", path_off)].decode()] = (mtime, inode)
    return out


def _masked(main: Path) -> bytes:
    """The main file with the fields that follow from the input files' identity zeroed: every
    image info's modTime and inode, the header UUID, and the code signature (derived from the
    bytes, as the UUID is)."""
    raw = RawFile(main)
    data = bytearray(raw.data)
    for i in range(raw.field("imagesCount")):
        at = raw.field("imagesOffset") + 32 * i
        data[at + 8 : at + 24] = bytes(16)
    data[0x58:0x68] = bytes(16)
    sig, size = raw.field("codeSignatureOffset"), raw.field("codeSignatureSize")
    data[sig : sig + size] = bytes(size)
    return bytes(data)


@pytest.fixture(scope="module")
def copies(cache_factory: CacheFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of the arm64 example root: other inodes, and other mtimes for the second."""
    base = tmp_path_factory.mktemp("copies")
    one, two = base / "one", base / "two"
    shutil.copytree(cache_factory.root("arm64"), one, symlinks=True)
    shutil.copytree(cache_factory.root("arm64"), two, symlinks=True)
    for k, path in enumerate(sorted(p for p in two.rglob("*") if p.is_file())):
        os.utime(path, (1_600_000_000 + k, 1_600_000_000 + k))
    return one, two


def test_copies_differ_only_in_mtime_and_inode(copies: tuple[Path, Path], tmp_path: Path) -> None:
    one, two = copies
    _build(one, tmp_path / "a")
    _build(two, tmp_path / "b")
    for root, out in ((one, tmp_path / "a"), (two, tmp_path / "b")):
        expected = {}
        for name in _image_infos(out / MAIN):
            st = os.stat(root / name.lstrip("/"))
            expected[name] = (int(st.st_mtime), st.st_ino)
        assert _image_infos(out / MAIN) == expected
    a, b = (tmp_path / "a" / MAIN).read_bytes(), (tmp_path / "b" / MAIN).read_bytes()
    assert a != b
    assert _masked(tmp_path / "a" / MAIN) == _masked(tmp_path / "b" / MAIN)
    assert (tmp_path / "a" / (MAIN + ".map")).read_bytes() == (tmp_path / "b" / (MAIN + ".map")).read_bytes()
    json_a = json.loads((tmp_path / "a" / (MAIN + ".json")).read_text())
    json_b = json.loads((tmp_path / "b" / (MAIN + ".json")).read_text())
    assert json_a.pop("uuid") != json_b.pop("uuid")
    assert json_a == json_b


def test_source_date_epoch_makes_copies_identical(copies: tuple[Path, Path], tmp_path: Path) -> None:
    one, two = copies
    _build(one, tmp_path / "a", epoch=str(EPOCH))
    _build(two, tmp_path / "b", epoch=str(EPOCH))
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    infos = _image_infos(tmp_path / "a" / MAIN)
    assert len(infos) == 7
    assert set(infos.values()) == {(EPOCH, 0)}
    # the option does the same, and wins over the variable
    _build(two, tmp_path / "c", "--source-date-epoch", str(EPOCH), epoch="12345")
    assert snapshot(tmp_path / "c") == snapshot(tmp_path / "a")


def test_a_bad_source_date_epoch_is_a_usage_error(copies: tuple[Path, Path], tmp_path: Path) -> None:
    env = cli_env(SOURCE_DATE_EPOCH="yesterday")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dyldcache",
            "build",
            "--arch",
            "arm64",
            "-o",
            str(tmp_path),
            "--root",
            str(copies[0]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "dyldcache build: error: SOURCE_DATE_EPOCH: not a time in seconds since 1970: 'yesterday'\n"
    )


def test_workers_do_not_change_a_byte(generated_corpus: Path, tmp_path: Path) -> None:
    """-j 1 and -j 2 on an 80-dylib corpus (enough for both worker pools to run)."""
    for jobs in (1, 2):
        out = str(tmp_path / f"j{jobs}")
        build_cache(BuildOptions(arch="arm64", output_dir=out, root=str(generated_corpus), jobs=jobs))
    assert snapshot(tmp_path / "j1") == snapshot(tmp_path / "j2")
