"""LC_SEGMENT_SPLIT_INFO v1/v2: decoder and encoder (macho/split_seg.py).

Oracles: the byte example worked by hand in linker-notes §6.2, hand-assembled streams whose
meaning is derived in comments, hypothesis round trips, and corruption at known offsets.
"""

from __future__ import annotations

import contextlib
import os
import struct

import numpy as np
import pytest
from conftest import shared_path
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.errors import MachOFormatError
from dyldcache.macho import constants as C
from dyldcache.macho.file import parse_macho
from dyldcache.macho.format import LinkeditDataCommand, MachHeader64, SegmentCommand64
from dyldcache.macho.split_seg import (
    SPLIT_SEG_DTYPE,
    SPLIT_SEG_V1_DTYPE,
    encode_split_seg_v1,
    encode_split_seg_v2,
    read_split_seg,
)

# linker-notes §6.2: BR26 __text(1) -> __stubs(2) at 0x10 and 0x40, both to 0x0; and
# __stubs(2) -> __got(5): ADRP at 0x0 and OFF12 at 0x4, both to 0x0.
NOTES_EXAMPLE = bytes.fromhex("7F 02 01 02 01 00 01 07 02 10 30 02 05 01 00 02 05 01 00 06 01 04 00") + b"\0"
NOTES_ENTRIES = [  # (kind, from_section, to_section, from_offset, to_offset)
    (C.DYLD_CACHE_ADJ_V2_ARM64_BR26, 1, 2, 0x10, 0x0),
    (C.DYLD_CACHE_ADJ_V2_ARM64_BR26, 1, 2, 0x40, 0x0),
    (C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, 2, 5, 0x0, 0x0),
    (C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, 2, 5, 0x4, 0x0),
]


def _entries(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=SPLIT_SEG_DTYPE)


def _rows(arr: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in row) for row in arr.tolist()]


def test_notes_example_encodes_byte_for_byte() -> None:
    # input order must not matter: the encoder sorts
    shuffled = _entries([NOTES_ENTRIES[k] for k in (3, 0, 2, 1)])
    assert encode_split_seg_v2(shuffled) == NOTES_EXAMPLE
    assert len(NOTES_EXAMPLE) == 24


def test_notes_example_decodes() -> None:
    info = read_split_seg(NOTES_EXAMPLE, "notes", 0x100)
    assert info.version == 2
    assert _rows(info.entries) == [tuple(r) for r in NOTES_ENTRIES]
    assert info.counts_by_kind() == {5: 1, 6: 1, 7: 2}


def test_hand_assembled_v2() -> None:
    # 7F                     v2
    # 01                     one FromToSection
    # 03 04 02               from section 3 to section 4, two ToOffsets
    # 10 01                  to-offset 0x10 (delta 0x10), one kind group
    #   02 01 08             kind POINTER_64, one from-offset: 8
    # 20 02                  to-offset 0x10 + 0x20 = 0x30, two kind groups
    #   04 02 00 04          kind DELTA_64, from-offsets 0 and 0 + 4 = 4
    #   0C 01 86 01          kind IMAGE_OFF_32, from-offset 0x86 (two-byte ULEB, group restarts at 0)
    # 00 00 00 00            terminator and padding
    raw = bytes.fromhex("7F 01 03 04 02 10 01 02 01 08 20 02 04 02 00 04 0C 01 86 01 00 00 00 00")
    info = read_split_seg(raw, "hand", 0)
    assert _rows(info.entries) == [
        (2, 3, 4, 0x8, 0x10),
        (4, 3, 4, 0x0, 0x30),
        (4, 3, 4, 0x4, 0x30),
        (12, 3, 4, 0x86, 0x30),
    ]
    assert encode_split_seg_v2(info.entries) == raw


def test_hand_assembled_v1() -> None:
    # 02 80 80 01 08 00      kind 2 (64-bit pointer): deltas 0x4000 (ULEB 80 80 01) and 8
    #                        -> offsets 0x4000 and 0x4008 from the mach header
    # 01 80 02 00            kind 1 (32-bit pointer): delta 0x100 -> offset 0x100 (restarts at 0)
    # 00 00                  end of stream, padding
    raw = bytes.fromhex("02 80 80 01 08 00 01 80 02 00 00 00")
    info = read_split_seg(raw, "v1", 0)
    assert info.version == 1
    assert [tuple(int(x) for x in r) for r in info.entries.tolist()] == [(2, 0x4000), (2, 0x4008), (1, 0x100)]
    assert info.counts_by_kind() == {1: 1, 2: 2}
    # the encoder writes kinds in ascending order and pads to 8
    assert encode_split_seg_v1(info.entries) == bytes.fromhex(
        "01 80 02 00 02 80 80 01 08 00 00 00 00 00 00 00"
    )


def test_empty_v2() -> None:
    raw = encode_split_seg_v2(np.zeros(0, dtype=SPLIT_SEG_DTYPE))
    assert raw == bytes.fromhex("7F 00 00 00 00 00 00 00")
    info = read_split_seg(raw, "empty")
    assert info.version == 2 and len(info) == 0 and info.counts_by_kind() == {}


@st.composite
def _v2_entries(draw: st.DrawFn) -> np.ndarray:
    # few distinct values so that groups and duplicates happen
    sections = st.integers(0, 6) | st.integers(0, 0xFFFF)
    offsets = st.sampled_from([0, 4, 8, 0x10, 0x4000]) | st.integers(0, (1 << 64) - 1)
    rows = draw(st.lists(st.tuples(st.integers(1, 13), sections, sections, offsets, offsets), max_size=80))
    return _entries(rows)


@settings(max_examples=300, deadline=None)
@given(_v2_entries())
def test_v2_round_trip(entries: np.ndarray) -> None:
    raw = encode_split_seg_v2(entries)
    assert raw[0] == 0x7F and len(raw) % 8 == 0
    info = read_split_seg(raw, "rt")
    assert info.version == 2
    order = np.lexsort(
        (
            entries["from_offset"],
            entries["kind"],
            entries["to_offset"],
            entries["to_section"],
            entries["from_section"],
        )
    )
    assert _rows(info.entries) == _rows(entries[order])
    # and decoding is stable under re-encoding
    assert encode_split_seg_v2(info.entries) == raw


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted({1, 2, 3, 4, 5, 6, *range(0x10, 0x30)})),
        st.sets(st.integers(1, (1 << 64) - 1), min_size=1, max_size=20),
        max_size=6,
    )
)
def test_v1_round_trip(groups: dict[int, set[int]]) -> None:
    rows = [(kind, off) for kind, offs in groups.items() for off in offs]
    entries = np.array(rows, dtype=SPLIT_SEG_V1_DTYPE)
    info = read_split_seg(encode_split_seg_v1(entries), "v1")
    assert info.version == 1
    assert sorted(tuple(int(x) for x in r) for r in info.entries.tolist()) == sorted(rows)


def test_encoder_rejects() -> None:
    with pytest.raises(ValueError, match="kind 14"):
        encode_split_seg_v2(_entries([(14, 1, 2, 0, 0)]))
    with pytest.raises(ValueError, match="kind 0"):
        encode_split_seg_v2(_entries([(0, 1, 2, 0, 0)]))
    with pytest.raises(ValueError, match="repeated"):
        encode_split_seg_v1(np.array([(2, 8), (2, 8)], dtype=SPLIT_SEG_V1_DTYPE))
    with pytest.raises(ValueError, match="not a v1 kind"):
        encode_split_seg_v1(np.array([(7, 8)], dtype=SPLIT_SEG_V1_DTYPE))


# ---------------------------------------------------------------------------------------------
# malformed streams


def _error(raw: bytes, base: int = 0x1000) -> MachOFormatError:
    with pytest.raises(MachOFormatError) as exc:
        read_split_seg(raw, "bad", base)
    return exc.value


def test_bad_kind() -> None:
    # the notes example with the first kind (byte 7, value 7) changed to 14
    raw = bytearray(NOTES_EXAMPLE)
    raw[7] = 14
    err = _error(bytes(raw))
    assert err.offset == 0x1000 + 7 and "kind 14" in err.message


def test_truncated_streams() -> None:
    # cut inside the second FromToSection, and inside a from-offset run
    assert _error(NOTES_EXAMPLE[:13]).offset == 0x1000 + 11  # where the cut FromToSection starts
    assert "truncated" in _error(NOTES_EXAMPLE[:13]).message
    assert _error(NOTES_EXAMPLE[:10]).offset == 0x1000 + 10
    # an unterminated ULEB at the very end
    err = _error(bytes.fromhex("7F 01 01 02 01 00 01 07 01 90"))
    assert err.offset == 0x1000 + 9 and "ULEB" in err.message
    # v1: a kind group that never ends
    assert _error(bytes.fromhex("02 80 80 01 08")).offset == 0x1000 + 5


def test_trailing_data() -> None:
    assert len(read_split_seg(NOTES_EXAMPLE + bytes(16), "pad")) == 4  # zero padding is fine
    err = _error(NOTES_EXAMPLE[:-1] + b"\x05")
    assert err.offset == 0x1000 + 23 and "after the last entry" in err.message
    assert _error(bytes.fromhex("02 08 00 00 03")).offset == 0x1000 + 4


def test_bad_v1_kind() -> None:
    err = _error(bytes.fromhex("02 08 00 07 08 00 00"))
    assert err.offset == 0x1000 + 3 and "kind 0x7" in err.message


def test_overflow() -> None:
    # an 11-byte ULEB, and a 10-byte one whose last byte carries bits beyond 2^64
    assert "longer" in _error(bytes.fromhex("7F") + b"\xff" * 10 + b"\x01").message
    assert "overflows" in _error(bytes.fromhex("7F") + b"\xff" * 9 + b"\x02").message
    # two from-deltas of 2^63 add up past 2^64
    big = b"\x80" * 9 + b"\x01"  # ULEB of 2^63
    err = _error(bytes.fromhex("7F 01 01 02 01 00 01 02 02") + big + big + b"\x00")
    assert "overflows" in err.message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_raise_only_format_errors(raw: bytes, v2: bool) -> None:
    data = (b"\x7f" + raw) if v2 else raw
    try:
        info = read_split_seg(data, "random", 0x40)
    except MachOFormatError as exc:
        assert exc.offset is not None and 0x40 <= exc.offset <= 0x40 + len(data)
    else:
        assert info.version == (2 if data[:1] == b"\x7f" else 1)


def test_fuzzed_files() -> None:
    folder = shared_path("data", "fuzzed")
    for entry in sorted(os.listdir(folder)):
        raw = (folder / entry).read_bytes()
        for start in range(0, min(len(raw), 1 << 16), 61):
            for prefix in (b"", b"\x7f"):
                with contextlib.suppress(MachOFormatError):
                    read_split_seg(prefix + raw[start : start + 256], entry, start)
        try:
            image = parse_macho(raw, entry)
        except MachOFormatError:
            continue
        with contextlib.suppress(MachOFormatError):
            _ = image.split_seg


def test_machofile_split_seg() -> None:
    """MachOFile.split_seg hands the payload and its file offset to read_split_seg."""
    payload = NOTES_EXAMPLE
    le_off = 0x1000
    cmds = SegmentCommand64(
        C.LC_SEGMENT_64, 72, b"__TEXT".ljust(16, b"\0"), 0, 0x1000, 0, 0x1000, 5, 5, 0, 0
    ).pack()
    cmds += SegmentCommand64(
        C.LC_SEGMENT_64, 72, b"__LINKEDIT".ljust(16, b"\0"), 0x1000, 0x1000, le_off, len(payload), 1, 1, 0, 0
    ).pack()
    cmds += LinkeditDataCommand(C.LC_SEGMENT_SPLIT_INFO, 16, le_off, len(payload)).pack()
    header = MachHeader64(C.MH_MAGIC_64, C.CPU_TYPE_ARM64, 0, C.MH_DYLIB, 3, len(cmds), 0).pack()
    image_bytes = (header + cmds).ljust(le_off, b"\0") + payload
    image = parse_macho(image_bytes, "split.dylib")
    assert image.split_seg_version == 2
    assert image.split_seg is not None and _rows(image.split_seg.entries) == [tuple(r) for r in NOTES_ENTRIES]
    # a bad kind is reported at its absolute file offset
    broken = bytearray(image_bytes)
    broken[le_off + 7] = 0x20
    with pytest.raises(MachOFormatError) as exc:
        _ = parse_macho(bytes(broken), "split.dylib").split_seg
    assert exc.value.offset == le_off + 7
    assert struct.unpack_from("<I", image_bytes, 0)[0] == C.MH_MAGIC_64
