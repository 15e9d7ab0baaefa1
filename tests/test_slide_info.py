"""Slide info v1/v2/v3/v5: hand-worked bytes, round trips through our decoder AND through a reference
decoder written here straight from the bit layouts of docs/cache-format.md §2.9-§2.13 (it computes the
value the runtime would store at a given slide), rejection cases, malformed blobs, and the golden cache."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from conftest import shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyldcache.cache.slide_info import (
    CACHE_POINTER_DTYPE,
    encode_slide_info_v2,
    encode_slide_info_v3,
    encode_slide_info_v5,
    slide_info_size,
)
from dyldcache.cache.slide_info_decode import decode_slide_info
from dyldcache.errors import CacheFormatError

M64 = (1 << 64) - 1
KEYS = ("IA", "IB", "DA", "DB")


def u16(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<H", b, o)[0])


def u64(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<Q", b, o)[0])


# ---------------------------------------------------------------------------------------------
# reference decoders: offset -> what the runtime writes there at `slide` (+ auth data)


def ref_v2(blob: bytes, mapping: bytes, slide: int) -> dict[int, int]:
    _v, page_size, starts_off, starts_count, extras_off, _ec, mask, value_add = struct.unpack_from(
        "<6I2Q", blob
    )
    delta_shift = (mask & -mask).bit_length() - 1 - 2  # ctz(delta_mask) - 2
    out: dict[int, int] = {}

    def chain(page: int, off: int) -> None:
        while True:
            raw = u64(mapping, page + off)
            delta = (raw & mask) >> delta_shift
            value = raw & ~mask & M64
            if value:
                out[page + off] = (value + value_add + slide) & M64
            if delta == 0:
                return
            off += delta

    for i in range(starts_count):
        start = u16(blob, starts_off + 2 * i)
        if start == 0x4000:  # no rebase
            continue
        if start & 0x8000:  # several chains, listed in page_extras
            j = start & 0x3FFF
            while True:
                extra = u16(blob, extras_off + 2 * j)
                chain(i * page_size, (extra & 0x3FFF) * 4)
                if extra & 0x8000:
                    break
                j += 1
        else:
            chain(i * page_size, start * 4)
    return out


def ref_v3(blob: bytes, mapping: bytes, slide: int) -> dict[int, tuple[int, Any]]:
    _v, page_size, count, _pad, auth_value_add = struct.unpack_from("<4IQ", blob)
    out: dict[int, tuple[int, Any]] = {}
    for i in range(count):
        start = u16(blob, 24 + 2 * i)
        if start == 0xFFFF:
            continue
        off = i * page_size + start
        while True:
            raw = u64(mapping, off)
            assert not raw >> 62 & 1, "bit 62 is a bind to the kernel"
            if raw >> 63:  # authenticated: 32-bit offset, diversity 32-47, addrDiv 48, key 49-50
                value = (raw & 0xFFFFFFFF) + auth_value_add + slide
                out[off] = (value, (raw >> 32 & 0xFFFF, raw >> 48 & 1, KEYS[raw >> 49 & 3]))
            else:  # plain: 51-bit value, top 8 bits of the pointer kept in bits 43-50
                v51 = raw & ((1 << 51) - 1)
                value = ((v51 & 0x0007F80000000000) << 13) | (v51 & 0x000007FFFFFFFFFF)
                out[off] = ((value + slide) & M64, None)
            nxt = (raw >> 51 & 0x7FF) * 8
            if nxt == 0:
                break
            off += nxt
    return out


def ref_v5(blob: bytes, mapping: bytes, slide: int) -> dict[int, tuple[int, Any]]:
    _v, page_size, count, _pad, value_add = struct.unpack_from("<4IQ", blob)
    out: dict[int, tuple[int, Any]] = {}
    for i in range(count):
        start = u16(blob, 24 + 2 * i)
        if start == 0xFFFF:
            continue
        off = i * page_size + start
        while True:
            raw = u64(mapping, off)
            value = (raw & 0x3FFFFFFFF) + value_add + slide  # 34-bit runtimeOffset
            if raw >> 63:  # diversity 34-49, addrDiv 50, keyIsData 51
                out[off] = (value, (raw >> 34 & 0xFFFF, raw >> 50 & 1, "DA" if raw >> 51 & 1 else "IA"))
            else:  # high8 in 34-41 goes back on top after sliding
                out[off] = (value | (raw >> 34 & 0xFF) << 56, None)
            nxt = (raw >> 52 & 0x7FF) * 8
            if nxt == 0:
                break
            off += nxt
    return out


# ---------------------------------------------------------------------------------------------
# pointer-set strategies


def make_pointers(rows: list[tuple[int, int, int, int, int, int, int]]) -> np.ndarray:
    arr = np.zeros(len(rows), dtype=CACHE_POINTER_DTYPE)
    for i, row in enumerate(rows):
        arr[i] = row
    return arr


@st.composite
def layouts(draw: st.DrawFn, page_size: int, align: int, max_pages: int = 4) -> tuple[int, list[int]]:
    """(mapping size, sorted pointer offsets): aligned, inside one page each, not overlapping."""
    pages = draw(st.integers(1, max_pages))
    size = pages * page_size - draw(st.sampled_from([0, 0, page_size // 2]))
    slots = draw(st.lists(st.integers(0, size // align - 1), max_size=120, unique=True))
    offsets: list[int] = []
    for off in sorted(s * align for s in slots):
        if off % page_size > page_size - 8 or off + 8 > size or (offsets and off - offsets[-1] < 8):
            continue
        offsets.append(off)
    # sometimes a page packed with pointers: the longest chain there is
    if draw(st.booleans()) and not offsets:
        offsets = list(range(0, min(page_size, size) - 7, 8))
    return size, offsets


def background(size: int, seed: int) -> bytearray:
    """Random bytes: the encoder must touch nothing but the pointer words."""
    return bytearray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())


def untouched(before: bytes, after: bytes, offsets: np.ndarray) -> bool:
    mask = np.ones(len(before), bool)
    for off in offsets.tolist():
        mask[off : off + 8] = False
    b, a = np.frombuffer(before, np.uint8), np.frombuffer(after, np.uint8)
    return bool((b[mask] == a[mask]).all())


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# v2


@SETTINGS
@given(
    data=st.data(),
    value_add=st.sampled_from([0, 0x7FF800000000]),
    delta_mask=st.sampled_from([0x00FFFF0000000000, 0x0000030000000000, 0x00000F0000000000]),
    slide=st.integers(0, 1 << 30).map(lambda x: x & ~0xFFF),
)
def test_v2_round_trip(data: st.DataObject, value_add: int, delta_mask: int, slide: int) -> None:
    size, offsets = data.draw(layouts(4096, 4))
    rows = []
    for off in offsets:
        target = value_add + data.draw(st.integers(1, (1 << 40) - 1))
        rows.append((off, target, data.draw(st.integers(0, 255)), 0, 0, 0, 0))
    pointers = make_pointers(rows)
    mapping = background(size, len(offsets))
    before = bytes(mapping)
    blob = encode_slide_info_v2(memoryview(mapping), pointers, value_add=value_add, delta_mask=delta_mask)
    assert untouched(before, bytes(mapping), pointers["offset"])
    version, decoded = decode_slide_info(blob, bytes(mapping), 0x180000000, "m", 0)
    assert version == 2
    np.testing.assert_array_equal(decoded, pointers)
    # the runtime view: each pointer becomes (target | high8 << 56) + slide
    expected = {int(p["offset"]): (int(p["target"]) | int(p["high8"]) << 56) + slide for p in pointers}
    assert ref_v2(blob, bytes(mapping), slide) == expected
    extras = struct.unpack_from("<I", blob, 20)[0]
    assert len(blob) == slide_info_size(2, size, 4096, extras)


def test_v2_hand_worked_page() -> None:
    # two 4 KiB pages; page 0 holds pointers at 0x10 and 0x28, page 1 none
    mapping = bytearray(0x2000)
    ptrs = make_pointers([(0x10, 0x180004000, 0, 0, 0, 0, 0), (0x28, 0x180008010, 0xAB, 0, 0, 0, 0)])
    blob = encode_slide_info_v2(memoryview(mapping), ptrs, value_add=0)
    expected_blob = bytes.fromhex(
        "02000000"  # version 2
        "00100000"  # page_size 0x1000
        "28000000"  # page_starts_offset 40
        "02000000"  # page_starts_count: 0x2000 / 0x1000
        "2c000000"  # page_extras_offset: right after the starts (40 + 2 * 2), though there are none
        "00000000"  # page_extras_count
        "0000000000ffff00"  # delta_mask 0x00FFFF0000000000
        "0000000000000000"  # value_add 0 (arm64)
        "0400"  # page 0: first pointer at 0x10 = 4 words of 4 bytes
        "0040"  # page 1: DYLD_CACHE_SLIDE_PAGE_ATTR_NO_REBASE
    )
    assert blob == expected_blob
    # 0x10: 0x180004000, next pointer 0x18 bytes on = 6 units of 4 -> 6 << 40
    assert mapping[0x10:0x18] == bytes.fromhex("0040008001060000")
    # 0x28: 0x180008010 | 0xAB << 56, end of chain (delta 0)
    assert mapping[0x28:0x30] == bytes.fromhex("10800080010000ab")
    rest = bytes(mapping[:0x10] + mapping[0x18:0x28] + mapping[0x30:])
    assert rest == bytes(0x2000 - 16)


def test_v2_page_extras_hand_worked() -> None:
    # a 2-bit delta field (max 3 units = 12 bytes): 0x0 -> 0x8 links, 0x8 -> 0x100 cannot
    mapping = bytearray(0x1000)
    ptrs = make_pointers(
        [(0x0, 0x1000, 0, 0, 0, 0, 0), (0x8, 0x2000, 0, 0, 0, 0, 0), (0x100, 0x3000, 0, 0, 0, 0, 0)]
    )
    blob = encode_slide_info_v2(memoryview(mapping), ptrs, value_add=0, delta_mask=0x0000030000000000)
    assert blob == bytes.fromhex(
        "02000000"
        "00100000"
        "28000000"
        "01000000"
        "2a000000"  # page_extras_offset = 40 + 2 * 1 page
        "02000000"  # two chain starts
        "0000000000030000"  # delta_mask 3 << 40
        "0000000000000000"
        "0080"  # page 0: ATTR_EXTRA | extras index 0
        "0000"  # chain at word 0
        "4080"  # chain at word 0x40 (byte 0x100) | ATTR_END
    )
    assert u64(mapping, 0) == 0x1000 | 2 << 40  # 8 bytes on = 2 units
    assert u64(mapping, 8) == 0x2000
    assert u64(mapping, 0x100) == 0x3000
    assert ref_v2(blob, bytes(mapping), 0x4000) == {0: 0x5000, 8: 0x6000, 0x100: 0x7000}


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ((0x8, 1 << 40, 0, 0, 0, 0, 0), "delta mask"),  # value bit 40 is a delta bit
        ((0x8, 0x1000, 0, 1, 0, 0, 0), "authenticated"),
        ((0xFFC, 0x1000, 0, 0, 0, 0, 0), "crosses"),
        ((0x8, 0, 0, 0, 0, 0, 0), "never slid"),  # target == value_add stores 0
        ((0x6, 0x1000, 0, 0, 0, 0, 0), "aligned"),
        ((0x2000, 0x1000, 0, 0, 0, 0, 0), "does not fit"),
        ((0x8, 0x1000, 0, 0, 2, 0, 0), "key/diversity"),
    ],
)
def test_v2_rejects(row: tuple[int, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        encode_slide_info_v2(memoryview(bytearray(0x2000)), make_pointers([row]), value_add=0)  # type: ignore[list-item]
    assert f"{row[0]:#x}" in str(info.value)


def test_v2_rejects_overlap_and_low_targets() -> None:
    m = memoryview(bytearray(0x1000))
    with pytest.raises(ValueError, match="overlaps"):
        encode_slide_info_v2(
            m, make_pointers([(0, 0x10, 0, 0, 0, 0, 0), (4, 0x10, 0, 0, 0, 0, 0)]), value_add=0
        )
    with pytest.raises(ValueError, match="below value_add"):
        encode_slide_info_v2(m, make_pointers([(0, 0x10, 0, 0, 0, 0, 0)]), value_add=0x7FF800000000)
    with pytest.raises(ValueError, match="delta mask"):
        encode_slide_info_v2(
            m, make_pointers([(0, 0x10, 0, 0, 0, 0, 0)]), value_add=0, delta_mask=0x0F0F << 40
        )


# ---------------------------------------------------------------------------------------------
# v3


@SETTINGS
@given(data=st.data(), slide=st.integers(0, 1 << 30).map(lambda x: x & ~0x3FFF))
def test_v3_round_trip(data: st.DataObject, slide: int) -> None:
    base = 0x180000000
    size, offsets = data.draw(layouts(4096, 8))
    rows = []
    for off in offsets:
        if data.draw(st.booleans()):
            target = base + data.draw(st.integers(0, 0xFFFFFFFF))
            rows.append(
                (
                    off,
                    target,
                    0,
                    1,
                    data.draw(st.integers(0, 3)),
                    data.draw(st.integers(0, 1)),
                    data.draw(st.integers(0, 0xFFFF)),
                )
            )
        else:
            rows.append(
                (off, data.draw(st.integers(0, (1 << 43) - 1)), data.draw(st.integers(0, 255)), 0, 0, 0, 0)
            )
    pointers = make_pointers(rows)
    mapping = background(size, len(offsets) + 1)
    before = bytes(mapping)
    blob = encode_slide_info_v3(memoryview(mapping), pointers, auth_value_add=base)
    assert untouched(before, bytes(mapping), pointers["offset"])
    version, decoded = decode_slide_info(blob, bytes(mapping), base, "m", 0)
    assert version == 3
    np.testing.assert_array_equal(decoded, pointers)
    expected = {}
    for p in pointers:
        if p["auth"]:
            expected[int(p["offset"])] = (
                int(p["target"]) + slide,
                (int(p["diversity"]), int(p["addr_div"]), KEYS[int(p["key"])]),
            )
        else:
            expected[int(p["offset"])] = ((int(p["target"]) | int(p["high8"]) << 56) + slide, None)
    assert ref_v3(blob, bytes(mapping), slide) == expected
    assert len(blob) == slide_info_size(3, size, 4096)


def test_v3_hand_worked_pointer() -> None:
    mapping = bytearray(0x1000)
    ptrs = make_pointers(
        [
            (0x0, 0x180001234, 0x0F, 0, 0, 0, 0),  # plain, high8 0x0F
            (0x18, 0x180004000, 0, 1, 2, 1, 0x1234),  # auth DA, address diversity, discriminator 0x1234
        ]
    )
    blob = encode_slide_info_v3(memoryview(mapping), ptrs, auth_value_add=0x180000000)
    assert blob == bytes.fromhex("0300000000100000010000000000000000000080010000000000")
    # plain: 0x180001234 | 0x0F << 43, next = 0x18 / 8 = 3 in bits 51-61
    assert u64(mapping, 0) == 0x180001234 | 0x0F << 43 | 3 << 51
    # auth: offset 0x4000, diversity 0x1234 << 32, addrDiv << 48, key 2 << 49, bit 63
    assert u64(mapping, 0x18) == 0x4000 | 0x1234 << 32 | 1 << 48 | 2 << 49 | 1 << 63


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ((0x8, 0x180000000 + (1 << 32), 0, 1, 0, 0, 0), "4 GiB"),
        ((0x8, 0x17FFFFFF0, 0, 1, 0, 0, 0), "4 GiB"),
        ((0x8, 1 << 43, 0, 0, 0, 0, 0), "43 bits"),
        ((0x4, 0x180000000, 0, 0, 0, 0, 0), "aligned"),
        ((0x8, 0x180000000, 7, 1, 0, 0, 0), "high8"),
        ((0x8, 0x180000000, 0, 0, 0, 1, 0), "key/diversity"),
    ],
)
def test_v3_rejects(row: tuple[int, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        encode_slide_info_v3(memoryview(bytearray(0x1000)), make_pointers([row]), auth_value_add=0x180000000)  # type: ignore[list-item]
    assert f"{row[0]:#x}" in str(info.value)


# ---------------------------------------------------------------------------------------------
# v5


@SETTINGS
@given(data=st.data(), slide=st.integers(0, 1 << 30).map(lambda x: x & ~0x3FFF))
def test_v5_round_trip(data: st.DataObject, slide: int) -> None:
    base = 0x180000000
    size, offsets = data.draw(layouts(16384, 8, max_pages=3))
    rows = []
    for off in offsets:
        target = base + data.draw(st.integers(0, (1 << 34) - 1))
        if data.draw(st.booleans()):
            rows.append(
                (
                    off,
                    target,
                    0,
                    1,
                    data.draw(st.sampled_from([0, 2])),
                    data.draw(st.integers(0, 1)),
                    data.draw(st.integers(0, 0xFFFF)),
                )
            )
        else:
            rows.append((off, target, data.draw(st.integers(0, 255)), 0, 0, 0, 0))
    pointers = make_pointers(rows)
    mapping = background(size, len(offsets) + 2)
    before = bytes(mapping)
    blob = encode_slide_info_v5(memoryview(mapping), pointers, value_add=base)
    assert untouched(before, bytes(mapping), pointers["offset"])
    version, decoded = decode_slide_info(blob, bytes(mapping), base, "m", 0)
    assert version == 5
    np.testing.assert_array_equal(decoded, pointers)
    expected = {}
    for p in pointers:
        if p["auth"]:
            expected[int(p["offset"])] = (
                int(p["target"]) + slide,
                (int(p["diversity"]), int(p["addr_div"]), KEYS[int(p["key"])]),
            )
        else:
            expected[int(p["offset"])] = ((int(p["target"]) + slide) | int(p["high8"]) << 56, None)
    assert ref_v5(blob, bytes(mapping), slide) == expected
    assert len(blob) == slide_info_size(5, size, 16384)


def test_v5_longest_link_in_a_16k_page() -> None:
    # pointers at 0 and 0x3FF8: 0x7FF strides of 8, the largest the 11-bit field holds
    mapping = bytearray(0x4000)
    ptrs = make_pointers([(0, 0x180000010, 0, 0, 0, 0, 0), (0x3FF8, 0x180000020, 0, 1, 2, 0, 7)])
    blob = encode_slide_info_v5(memoryview(mapping), ptrs, value_add=0x180000000)
    assert blob == bytes.fromhex("0500000000400000010000000000000000000080010000000000")
    assert u64(mapping, 0) == 0x10 | 0x7FF << 52
    assert u64(mapping, 0x3FF8) == 0x20 | 7 << 34 | 1 << 51 | 1 << 63
    assert ref_v5(blob, bytes(mapping), 0) == {0: (0x180000010, None), 0x3FF8: (0x180000020, (7, 0, "DA"))}


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ((0x8, 0x180000000, 0, 1, 1, 0, 0), "key 1"),  # IB
        ((0x8, 0x180000000, 0, 1, 3, 0, 0), "key 3"),  # DB
        ((0x8, 0x180000000 + (1 << 34), 0, 0, 0, 0, 0), "16 GiB"),
        ((0x8, 0x100000000, 0, 0, 0, 0, 0), "16 GiB"),
        ((0xC, 0x180000000, 0, 0, 0, 0, 0), "aligned"),
    ],
)
def test_v5_rejects(row: tuple[int, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        encode_slide_info_v5(memoryview(bytearray(0x4000)), make_pointers([row]), value_add=0x180000000)  # type: ignore[list-item]
    assert f"{row[0]:#x}" in str(info.value)


def test_empty_mapping_has_only_no_rebase_pages() -> None:
    empty = np.zeros(0, CACHE_POINTER_DTYPE)
    blob2 = encode_slide_info_v2(memoryview(bytearray(0x3000)), empty, value_add=0)
    assert blob2[40:] == b"\x00\x40" * 3
    blob3 = encode_slide_info_v3(memoryview(bytearray(0x3000)), empty, auth_value_add=0)
    assert blob3[24:] == b"\xff\xff" * 3
    blob5 = encode_slide_info_v5(memoryview(bytearray(0x8000)), empty, value_add=0)
    assert blob5[24:] == b"\xff\xff" * 2
    for blob in (blob2, blob3):
        assert decode_slide_info(blob, bytes(0x3000), 0, "m", 0)[1].size == 0


def test_large_sets_are_vectorized() -> None:
    # 300k pointers in 8 MiB: a per-pointer Python loop would take many seconds
    rng = np.random.default_rng(7)
    size = 8 << 20
    offs = np.sort(rng.choice(size // 8, 300_000, replace=False)) * 8
    ptrs = np.zeros(offs.size, CACHE_POINTER_DTYPE)
    ptrs["offset"] = offs
    ptrs["target"] = rng.integers(0x180000000, 0x180000000 + (1 << 32), offs.size)
    import time

    start = time.perf_counter()
    mapping = bytearray(size)
    blob = encode_slide_info_v3(memoryview(mapping), ptrs, auth_value_add=0x180000000)
    _, decoded = decode_slide_info(blob, bytes(mapping), 0, "m", 0)
    assert time.perf_counter() - start < 15
    np.testing.assert_array_equal(decoded, ptrs)


@pytest.mark.parametrize("limit", [0, 1 << 30])
@pytest.mark.parametrize("version", [2, 3, 5])
def test_decode_with_and_without_a_flag_per_slot(
    monkeypatch: pytest.MonkeyPatch, version: int, limit: int
) -> None:
    """The decoder walks mappings up to a size with a flag per 4 or 8 bytes and larger ones
    by sorting what it visited: either way it returns every encoded pointer, by offset."""
    import dyldcache.cache.slide_info_decode as slide_info_decode

    monkeypatch.setattr(slide_info_decode, "_MARKED_WALK_LIMIT", limit)
    rng = np.random.default_rng(version)
    page = 0x4000 if version == 5 else 0x1000
    size = 64 * page - page // 2  # the last page is cut short
    offs = np.sort(rng.choice(size // 8, 5000, replace=False)) * 8
    ptrs = np.zeros(offs.size, CACHE_POINTER_DTYPE)
    ptrs["offset"] = offs
    ptrs["target"] = rng.integers(0x180000000, 0x180000000 + (1 << 32), offs.size)
    mapping = bytearray(size)
    if version == 2:
        blob = encode_slide_info_v2(memoryview(mapping), ptrs, value_add=0)
    elif version == 3:
        blob = encode_slide_info_v3(memoryview(mapping), ptrs, auth_value_add=0x180000000)
    else:
        blob = encode_slide_info_v5(memoryview(mapping), ptrs, value_add=0x180000000)
    _, decoded = decode_slide_info(blob, bytes(mapping), 0, "m", 0)
    np.testing.assert_array_equal(decoded, ptrs)


# ---------------------------------------------------------------------------------------------
# v1 (decode only)


def test_v1_hand_built() -> None:
    # 2 pages, both using bitmap 0, which marks words 1 and 3 (bits 1 and 3 of byte 0)
    entries_offset = 128
    blob = bytearray(entries_offset + 128)
    struct.pack_into("<6I", blob, 0, 1, 24, 2, entries_offset, 1, 128)
    struct.pack_into("<2H", blob, 24, 0, 0)
    blob[entries_offset] = 0b1010
    mapping = bytearray(0x2000)
    for off, value in ((4, 0x1A001000), (12, 0x1A002000), (0x1004, 0x1A003000), (0x100C, 0x1A004000)):
        struct.pack_into("<I", mapping, off, value)
    version, ptrs = decode_slide_info(bytes(blob), bytes(mapping), 0x1A100000, "m", 0)
    assert version == 1
    assert ptrs["offset"].tolist() == [4, 12, 0x1004, 0x100C]
    assert ptrs["target"].tolist() == [0x1A001000, 0x1A002000, 0x1A003000, 0x1A004000]
    struct.pack_into("<H", blob, 26, 5)  # page 1 names bitmap 5 of 1
    with pytest.raises(CacheFormatError, match="bitmap 5") as info:
        decode_slide_info(bytes(blob), bytes(mapping), 0, "m", 0x1000)
    assert info.value.offset == 0x1000 + 26


def test_v1_adjacent_words_are_two_pointers() -> None:
    """v1 (32-bit caches, cache-format.md §2.9) slides 4-byte words: bits 0 and 1 of a
    page's bitmap mark the words at 0 and 4, two pointers side by side, not an overlap."""
    entries_offset = 128
    blob = bytearray(entries_offset + 128)
    struct.pack_into("<6I", blob, 0, 1, 24, 1, entries_offset, 1, 128)
    blob[entries_offset] = 0b11
    mapping = struct.pack("<2I", 0x1A001000, 0x1A002000) + bytes(0x1000 - 8)
    _, ptrs = decode_slide_info(bytes(blob), mapping, 0x1A100000, "m", 0)
    assert ptrs["offset"].tolist() == [0, 4]
    assert ptrs["target"].tolist() == [0x1A001000, 0x1A002000]


# ---------------------------------------------------------------------------------------------
# malformed blobs


def v2_blob(starts: list[int], extras: list[int] = (), mask: int = 0x00FFFF0000000000) -> bytes:  # type: ignore[assignment]
    head = struct.pack(
        "<6I2Q", 2, 0x1000, 40, len(starts), 40 + 2 * len(starts) if extras else 0, len(extras), mask, 0
    )
    return head + struct.pack(f"<{len(starts)}H", *starts) + struct.pack(f"<{len(extras)}H", *extras)


@pytest.mark.parametrize(
    ("blob", "mapping_words", "at", "words"),
    [
        (v2_blob([0x4000, 0x4000, 0x4000]), {}, 12, "3 page starts"),  # mapping has 2 pages
        (v2_blob([0x3FE, 0x4000]), {0xFF8: 0x1000 | 4 << 40}, 40, "leaves its page"),  # 0xFF8 + 16
        (v2_blob([0x0, 0x4000]), {0x0: 0x1000 | 1 << 40}, 40, "into itself"),  # 4-byte link
        (v2_blob([0x3FF, 0x4000]), {}, 40, "outside its page"),  # 0xFFC + 8 crosses
        (v2_blob([0x8000, 0x4000], [0x0001]), {}, 40, "extras run off"),  # no ATTR_END
        (v2_blob([0x8000, 0x4000], [0x0000, 0x8000]), {0: 0x1000}, 0, "overlap"),  # two chains at 0
        (v2_blob([0x4000, 0x4000], mask=0x0F0F << 40), {}, 24, "contiguous"),
        (v2_blob([0x4000, 0x4000])[:30], {}, 0, "does not fit"),
        (struct.pack("<IIII", 7, 0, 0, 0), {}, 0, "unsupported slide info version 7"),
    ],
)
def test_malformed_blobs_name_the_offset(
    blob: bytes, mapping_words: dict[int, int], at: int, words: str
) -> None:
    mapping = bytearray(0x2000)
    for off, value in mapping_words.items():
        struct.pack_into("<Q", mapping, off, value)
    with pytest.raises(CacheFormatError, match=words) as info:
        decode_slide_info(blob, bytes(mapping), 0x182018000, "cache", 0x1C000)
    assert info.value.offset == 0x1C000 + at
    assert info.value.path == "cache"


def test_malformed_v3_blobs() -> None:
    head = struct.pack("<4IQ", 3, 0x1000, 1, 0, 0x180000000)
    mapping = bytearray(0x1000)
    with pytest.raises(CacheFormatError, match="unaligned or outside") as info:
        decode_slide_info(head + struct.pack("<H", 4), bytes(mapping), 0, "c", 0x100)
    assert info.value.offset == 0x100 + 24
    with pytest.raises(CacheFormatError, match="unaligned or outside"):
        decode_slide_info(head + struct.pack("<H", 0x1000), bytes(mapping), 0, "c", 0)
    struct.pack_into("<Q", mapping, 0, 1 << 62)
    with pytest.raises(CacheFormatError, match="bit 62"):
        decode_slide_info(head + struct.pack("<H", 0), bytes(mapping), 0, "c", 0)
    with pytest.raises(CacheFormatError, match="extend past the end of the blob"):
        decode_slide_info(head, bytes(mapping), 0, "c", 0)
    # one page start for a two-page mapping
    with pytest.raises(CacheFormatError, match="1 page starts for a mapping of 0x2000") as info:
        decode_slide_info(head + struct.pack("<H", 0), bytes(0x2000), 0, "c", 0x40)
    assert info.value.offset == 0x40 + 8
    # a v5 link of 0 strides is the chain's end; a link into the page's last 7 bytes is not
    head5 = struct.pack("<4IQ", 5, 0x4000, 1, 0, 0x180000000)
    m5 = bytearray(0x4000)
    struct.pack_into("<Q", m5, 0x3FF0, 1 << 52)  # 0x3FF0 + 8 = 0x3FF8: fine, then end
    assert decode_slide_info(head5 + struct.pack("<H", 0x3FF0), bytes(m5), 0, "c", 0)[1][
        "offset"
    ].tolist() == [
        0x3FF0,
        0x3FF8,
    ]


# ---------------------------------------------------------------------------------------------
# golden cache


def test_golden_slide_info() -> None:
    data = shared_path("data", "golden", "dyld_shared_cache_arm64-macOS").read_bytes()
    blob = data[0x1C000:0x20000]
    # validators.md §4: v2, page_size 4096, delta_mask 0x00FFFF0000000000, value_add 0, 4 pages all NO_REBASE
    # (Apple's builder put the empty extras array right after the 4 starts: offset 0x30)
    assert struct.unpack_from("<6I2Q", blob) == (2, 4096, 40, 4, 0x30, 0, 0x00FFFF0000000000, 0)
    assert struct.unpack_from("<4H", blob, 40) == (0x4000,) * 4
    version, ptrs = decode_slide_info(blob, data[0x18000:0x1C000], 0x182018000, "golden", 0x1C000)
    assert version == 2 and ptrs.size == 0
    assert ref_v2(blob, data[0x18000:0x1C000], 0x4000) == {}


def test_the_builder_precheck_names_the_cache_address_of_a_pointer_slide_info_cannot_hold() -> None:
    """Phase 5's check (optimizers/slide_info.slid_pointers) applies every rule of the format
    but the chains to a dylib's bound pointers, given in any order. Slide info v2 (arm64 macOS,
    cache-format.md §4) has no authenticated pointers, so one far from the others must be
    reported at its own cache address; unauthenticated, the pointers pass, sorted, each with
    the word v2 stores for it: the target (value_add is 0 on arm64) with high8 in bits 56-63."""
    from dyldcache.builder.bind import CACHE_POINTER_FIELDS
    from dyldcache.builder.config import make_config
    from dyldcache.builder.optimizers.slide_info import slid_pointers

    cfg = make_config("arm64", "macos")
    assert cfg.slide_info_version == 2
    base = 0x1_8000_0000
    first, far = base + 0x4FF0, base + 0x30_7FF8  # 3 MiB apart, each within its page
    rows = [
        (first + 8, base, 0, 0, 0, 0, 0),
        (far, base + 0x100, 0x80, 1, 0, 0, 0),
        (first, base + 0x80, 0, 0, 0, 0, 0),
    ]
    pointers = np.array(rows, dtype=CACHE_POINTER_FIELDS)
    with pytest.raises(ValueError, match=f"pointer at {far:#x} is authenticated") as info:
        slid_pointers(cfg, pointers)
    assert "mapping offset" not in str(info.value)
    pointers["auth"] = 0
    slid = slid_pointers(cfg, pointers)
    assert slid["location"].tolist() == [first, first + 8, far]
    assert slid["value"].tolist() == [base + 0x80, base, 0x80 << 56 | (base + 0x100)]
    assert len(slid_pointers(cfg, pointers[:0])) == 0


@pytest.mark.parametrize(
    ("location", "words"),
    [(0x1_8000_4FFC, "crosses a 0x1000-byte page"), (0x1_8000_4FF4, "overlaps"), (0x1_8000_4FF2, "aligned")],
)
def test_the_builder_precheck_rejects_the_layout_v2_cannot_chain(location: int, words: str) -> None:
    """Pointers slide info v2 cannot chain (cache-format.md §2.10: 4-byte aligned words, each
    inside its 4 KiB page, none sharing a byte with another) are named by cache address."""
    from dyldcache.builder.bind import CACHE_POINTER_FIELDS
    from dyldcache.builder.config import make_config
    from dyldcache.builder.optimizers.slide_info import slid_pointers

    base = 0x1_8000_0000
    rows = [(base + 0x4FF0, base, 0, 0, 0, 0, 0), (location, base, 0, 0, 0, 0, 0)]
    with pytest.raises(ValueError, match=words) as info:
        slid_pointers(make_config("arm64", "macos"), np.array(rows, dtype=CACHE_POINTER_FIELDS))
    assert f"pointer at {location:#x}" in str(info.value)
