"""Small contract items of the error handling: the right error type, exit status and report for
1-byte damage (regressions from a fuzz campaign against the command line)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, RawCache
from conftest import run_cli

from dyldcache.errors import MachOFormatError
from dyldcache.macho.fat import parse_fat


@pytest.mark.parametrize("size", [4, 8, 12, 27])
def test_a_truncated_fat_header_is_a_macho_format_error(size: int) -> None:
    data = struct.pack(">II", 0xCAFEBABE, 1) + struct.pack(">iiIII", 0x0100000C, 0, 0x4000, 0x100, 14)
    with pytest.raises(MachOFormatError) as info:
        parse_fat(data[:size], "cut.dylib")
    assert str(info.value).startswith("cut.dylib: offset 0x")


def test_verify_reports_an_image_path_outside_the_file(cache_factory: CacheFactory, tmp_path: Path) -> None:
    built = cache_factory.build("arm64")
    copy = tmp_path / "dyld_shared_cache_arm64"
    shutil.copyfile(built.main, copy)
    raw = RawCache(copy)
    data = bytearray(copy.read_bytes())
    images_at = raw.main.field("imagesOffset")
    struct.pack_into("<I", data, images_at + 24, len(data) + 0x1000)  # image 0's pathFileOffset
    copy.write_bytes(bytes(data))
    proc = run_cli("verify", str(copy))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    as_json = run_cli("verify", "--json", str(copy))
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["ok"] is False


def test_a_dylib_with_a_corrupt_magic_in_a_root_is_reported(
    cache_factory: CacheFactory, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(cache_factory.root("arm64"), root, symlinks=True)
    bad = root / "usr" / "lib" / "libfxbroken.dylib"
    data = bytearray((root / "usr" / "lib" / "libfxa.dylib").read_bytes())
    data[0] ^= 0xFF
    bad.write_bytes(bytes(data))
    proc = run_cli("build", "--arch", "arm64", "--json", "-o", str(tmp_path / "out"), "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    reasons = {e["path"]: e["reason"] for e in json.loads(proc.stdout)["evictions"]}
    assert "/usr/lib/libfxbroken.dylib" in reasons
    assert "not a Mach-O file" in reasons["/usr/lib/libfxbroken.dylib"]
    assert str(bad) in reasons["/usr/lib/libfxbroken.dylib"]
