"""Ad-hoc code signature: Apple's signature on the golden cache (verified, re-built byte for byte, its
UUID re-derived), random data checked against hashlib directly, and single-byte corruption."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from conftest import shared_path

from dyldcache.cache.code_signature import (
    CodeDirectory,
    build_code_signature,
    code_directory,
    hash_pages,
    signature_size,
    uuid_from_code_directory,
    verify_code_signature,
)

GOLDEN_ID = "com.apple.dyld.cache.arm64.release"


def golden() -> bytes:
    return shared_path("data", "golden", "dyld_shared_cache_arm64-macOS").read_bytes()


def parse_superblob(sig: bytes) -> dict[int, bytes]:
    """slot type -> blob bytes, read with struct from the CS_SuperBlob layout (big-endian)."""
    magic, length, count = struct.unpack_from(">3I", sig)
    assert magic == 0xFADE0CC0
    out = {}
    for k in range(count):
        slot, off = struct.unpack_from(">2I", sig, 12 + 8 * k)
        blob_len = struct.unpack_from(">I", sig, off + 4)[0]
        out[slot] = sig[off : off + blob_len]
    assert sum(len(b) for b in out.values()) + 12 + 8 * count == length
    return out


def test_golden_signature_verifies() -> None:
    data = golden()
    assert verify_code_signature(data, 0x30000, 0x4000) == []


def test_golden_code_directory_fields() -> None:
    # read off the hexdump of 0x30024 (validators.md §4 gives the signature at 0x30000)
    data = golden()
    cd = CodeDirectory.unpack_from(code_directory(data[0x30000:0x34000]))
    assert (cd.magic, cd.length, cd.version, cd.flags) == (0xFADE0C02, 0x6BB, 0x20400, 2)
    assert (cd.hash_offset, cd.ident_offset, cd.n_special_slots, cd.n_code_slots) == (0xBB, 0x58, 2, 0x30)
    assert (cd.code_limit, cd.hash_size, cd.hash_type, cd.page_size) == (0x30000, 32, 2, 12)
    assert (cd.exec_seg_base, cd.exec_seg_limit, cd.exec_seg_flags) == (0, 0x18000, 0)
    assert (cd.scatter_offset, cd.team_offset, cd.code_limit64, cd.platform) == (0, 0, 0, 0)


def test_golden_signature_rebuilt_byte_for_byte() -> None:
    # same covered bytes, identifier, page size and exec segment -> exactly Apple's superblob
    data = golden()
    ours = build_code_signature(
        memoryview(data)[:0x30000],
        identifier=GOLDEN_ID,
        page_size=4096,
        exec_seg_base=0,
        exec_seg_limit=0x18000,
    )
    assert len(ours) == signature_size(0x30000, 4096, GOLDEN_ID) == 0x6F3
    assert ours == data[0x30000 : 0x30000 + len(ours)]
    assert CodeDirectory.unpack_from(code_directory(ours)) == CodeDirectory.unpack_from(
        code_directory(data[0x30000:])
    )


def test_golden_uuid_comes_from_its_code_directory() -> None:
    # §6: sign with a zero uuid, hash the CD, set the version/variant bits, write the uuid, re-hash page 0
    data = bytearray(golden())
    uuid = bytes(data[0x58:0x68])
    cd = bytearray(code_directory(data[0x30000:0x34000]))
    hash_offset = struct.unpack_from(">I", cd, 16)[0]
    data[0x58:0x68] = bytes(16)
    cd[hash_offset : hash_offset + 32] = hashlib.sha256(data[:4096]).digest()
    assert uuid_from_code_directory(bytes(cd)) == uuid == bytes.fromhex("857bce1a017e34649909d58ee21cf8dc")


@pytest.mark.parametrize(
    ("size", "page"), [(0x4000 * 3, 0x4000), (0x1000 * 5, 0x1000), (0x2345, 0x1000), (0, 0x4000)]
)
def test_random_data_signature_against_hashlib(size: int, page: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    ident = "com.apple.dyld.cache.arm64e.development"
    sig = build_code_signature(data, identifier=ident, page_size=page, exec_seg_base=0, exec_seg_limit=0x4000)
    assert len(sig) == signature_size(size, page, ident)
    blobs = parse_superblob(sig)
    assert set(blobs) == {0, 2, 0x10000}
    assert blobs[2] == bytes.fromhex("fade0c010000000c00000000")  # empty requirements
    assert blobs[0x10000] == bytes.fromhex("fade0b0100000008")  # empty CMS wrapper
    cd = blobs[0]
    _m, _len, version, flags, hash_offset, ident_offset, n_special, n_code, limit = struct.unpack_from(
        ">9I", cd
    )
    hash_size, hash_type, _platform, log2 = struct.unpack_from(">4B", cd, 36)
    assert (version, flags, hash_size, hash_type, 1 << log2) == (0x20400, 2, 32, 2, page)
    assert cd[ident_offset:].split(b"\0")[0] == ident.encode()
    pages = [data[o : o + page] for o in range(0, size, page)]
    assert (n_special, n_code, limit) == (2, len(pages), size)
    for i, chunk in enumerate(pages):
        assert cd[hash_offset + 32 * i : hash_offset + 32 * (i + 1)] == hashlib.sha256(chunk).digest()
    assert cd[hash_offset - 64 : hash_offset - 32] == hashlib.sha256(blobs[2]).digest()  # slot -2
    assert cd[hash_offset - 32 : hash_offset] == bytes(32)  # slot -1: no Info.plist
    assert verify_code_signature(data + sig, size, len(sig)) == []


def test_flipping_one_byte_reports_that_page() -> None:
    page = 0x1000
    data = bytearray(np.random.default_rng(3).integers(0, 256, 8 * page, dtype=np.uint8).tobytes())
    sig = build_code_signature(
        bytes(data), identifier="x", page_size=page, exec_seg_base=0, exec_seg_limit=page
    )
    data[5 * page + 17] ^= 0x40
    problems = verify_code_signature(bytes(data) + sig, len(data), len(sig))
    assert len(problems) == 1
    assert problems[0].startswith("page 5 (file offset 0x5000)")


def test_structural_problems() -> None:
    data = bytes(0x2000)
    sig = build_code_signature(data, identifier="x", page_size=0x1000, exec_seg_base=0, exec_seg_limit=0)
    whole = data + sig
    # the signature must start where the covered bytes end
    moved = data + bytes(16) + sig
    assert any(
        "code limit 0x2000 is not the signature offset 0x2010" in p
        for p in verify_code_signature(moved, len(data) + 16, len(sig))
    )
    bad = bytearray(whole)
    bad[len(data)] ^= 1  # superblob magic
    assert "magic" in verify_code_signature(bytes(bad), len(data), len(sig))[0]
    bad = bytearray(whole)
    bad[len(data) + 36 + 37] = 1  # CodeDirectory hashType -> SHA-1 with a 32-byte hash size
    assert "hash size" in verify_code_signature(bytes(bad), len(data), len(sig))[0]
    assert "outside the file" in verify_code_signature(whole, len(data), len(sig) + 1)[0]
    with pytest.raises(ValueError):
        code_directory(b"\xfa\xde\x0c\xc0" + bytes(8))


def test_parallel_hashing_matches_serial() -> None:
    # more than one 8 MiB chunk, with a short last page
    data = np.random.default_rng(9).integers(0, 256, (20 << 20) + 100, dtype=np.uint8).tobytes()
    expected = b"".join(hashlib.sha256(data[o : o + 0x4000]).digest() for o in range(0, len(data), 0x4000))
    assert hash_pages(memoryview(data), 0x4000) == expected


def test_uuid_bits() -> None:
    cd = b"any code directory"
    u = uuid_from_code_directory(cd)
    h = hashlib.sha256(cd).digest()
    assert u[6] >> 4 == 3 and u[8] >> 6 == 2
    assert u[:6] == h[:6] and u[7] == h[7] and u[9:] == h[9:16]
    assert u[6] & 0xF == h[6] & 0xF and u[8] & 0x3F == h[8] & 0x3F
