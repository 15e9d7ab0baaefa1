"""Rebase opcodes: hand-assembled streams, round trips, llvm-objdump and Apple's linkers as oracles."""

from __future__ import annotations

import contextlib
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import LLVM_OBJDUMP, shared_path, time_limit, tool
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.errors import MachOFormatError
from dyldcache.macho import constants as C
from dyldcache.macho.file import MachOFile, open_macho
from dyldcache.macho.fixups import FIXUP_FLAG_32BIT, FixupKind
from dyldcache.macho.format import DyldInfoCommand, MachHeader64, Section64, SegmentCommand64
from dyldcache.macho.rebase_opcodes import decode_rebase_opcodes, encode_rebase_opcodes, read_rebases

P, A32, R32 = C.REBASE_TYPE_POINTER, C.REBASE_TYPE_TEXT_ABSOLUTE32, C.REBASE_TYPE_TEXT_PCREL32
# segment 0 is __TEXT-like, 1 and 2 data-like, in the (vmaddr, vmsize) form the decoder takes
SEGS = [(0, 0x4000), (0x4000, 0x1000), (0x5000, 0x1000)]


# -- a tiny image with LC_DYLD_INFO_ONLY, for the read_* functions --------------------------------


def build_dyld_info_image(
    *,
    rebase: bytes = b"",
    bind: bytes = b"",
    weak_bind: bytes = b"",
    lazy_bind: bytes = b"",
    data: bytes = b"",
) -> MachOFile:
    """A minimal x86_64 dylib: __TEXT (file 0-0x1000), __DATA (vm 0x1000-0x3000, only the first
    0x1000 bytes in the file, holding ``data``), __LINKEDIT (the streams, from file 0x2000)."""
    linkedit = bytearray()
    offsets = {}
    for name, blob in (("rebase", rebase), ("bind", bind), ("weak", weak_bind), ("lazy", lazy_bind)):
        offsets[name] = (0x2000 + len(linkedit), len(blob))
        linkedit += blob
    cmds = bytearray()

    def segment(
        name: bytes, vmaddr: int, vmsize: int, fileoff: int, filesize: int, sections: bytes = b""
    ) -> None:
        nsects = len(sections) // Section64.SIZE
        cmds.extend(
            SegmentCommand64(
                C.LC_SEGMENT_64, SegmentCommand64.SIZE + len(sections), name.ljust(16, b"\0"),
                vmaddr, vmsize, fileoff, filesize, 3, 3, nsects, 0,
            ).pack()
            + sections
        )  # fmt: skip

    segment(b"__TEXT", 0, 0x1000, 0, 0x1000)
    data_sect = Section64(b"__data".ljust(16, b"\0"), b"__DATA".ljust(16, b"\0"), 0x1000, 0x1000, 0x1000,
                          3, 0, 0, 0, 0, 0, 0).pack()  # fmt: skip
    segment(b"__DATA", 0x1000, 0x2000, 0x1000, 0x1000, data_sect)
    segment(b"__LINKEDIT", 0x3000, 0x1000, 0x2000, len(linkedit))
    cmds += DyldInfoCommand(
        C.LC_DYLD_INFO_ONLY, DyldInfoCommand.SIZE, *offsets["rebase"], *offsets["bind"], *offsets["weak"],
        *offsets["lazy"], 0, 0,
    ).pack()  # fmt: skip
    header = MachHeader64(C.MH_MAGIC_64, 0x01000007, 3, C.MH_DYLIB, 4, len(cmds), 0).pack()
    image = bytearray(0x2000)
    image[: len(header) + len(cmds)] = header + cmds
    image[0x1000 : 0x1000 + len(data)] = data
    return MachOFile(bytes(image + linkedit), "tiny.dylib")


# -- hand-assembled streams -------------------------------------------------------------------------


def test_decode_every_opcode() -> None:
    stream = bytes.fromhex(
        "11"  # SET_TYPE_IMM pointer
        "22 10"  # SET_SEGMENT_AND_OFFSET_ULEB segment 2, offset 0x10
        "52"  # DO_REBASE_IMM_TIMES 2: 0x10, 0x18 -> offset 0x20
        "30 08"  # ADD_ADDR_ULEB 8 -> 0x28
        "41"  # ADD_ADDR_IMM_SCALED 1 (x 8) -> 0x30
        "60 03"  # DO_REBASE_ULEB_TIMES 3: 0x30, 0x38, 0x40 -> 0x48
        "70 10"  # DO_REBASE_ADD_ADDR_ULEB 0x10: 0x48 -> 0x48 + 8 + 0x10 = 0x60
        "80 03 08"  # DO_REBASE_ULEB_TIMES_SKIPPING_ULEB 3, skip 8: 0x60, 0x70, 0x80 -> 0x90
        "12"  # SET_TYPE_IMM text absolute32
        "21 04"  # SET_SEGMENT_AND_OFFSET_ULEB segment 1, offset 4
        "51"  # DO_REBASE_IMM_TIMES 1: 4 (a 4-byte location)
        "00"  # DONE
        "ff"  # never read
    )
    assert decode_rebase_opcodes(stream, SEGS, "t", 0) == [
        (2, 0x10, P), (2, 0x18, P), (2, 0x30, P), (2, 0x38, P), (2, 0x40, P), (2, 0x48, P),
        (2, 0x60, P), (2, 0x70, P), (2, 0x80, P), (1, 4, A32),
    ]  # fmt: skip


def test_pointer_size_4_scales_immediates() -> None:
    # 41 adds 1 x 4, and runs step by 4
    stream = bytes.fromhex("11 21 00 52 41 51")
    assert decode_rebase_opcodes(stream, SEGS, "t", 0, pointer_size=4) == [(1, 0, P), (1, 4, P), (1, 0xC, P)]


def test_end_of_data_without_done_is_fine() -> None:
    assert decode_rebase_opcodes(bytes.fromhex("11 21 00 51"), SEGS, "t", 0) == [(1, 0, P)]
    assert decode_rebase_opcodes(b"", SEGS, "t", 0) == []


def test_wrapping_add_moves_backwards() -> None:
    # ld64 writes a step back inside a segment as ADD_ADDR_ULEB of the difference mod 2**64
    back = bytes.fromhex("f0ffffffffffffffff01")  # 2**64 - 0x10
    stream = bytes.fromhex("11 21 20 51 30") + back + bytes.fromhex("51")
    # 0x20, then 0x28 - 0x10 = 0x18
    assert decode_rebase_opcodes(stream, SEGS, "t", 0) == [(1, 0x20, P), (1, 0x18, P)]


def _error(stream: bytes, **kwargs: int) -> MachOFormatError:
    with pytest.raises(MachOFormatError) as info:
        decode_rebase_opcodes(stream, SEGS, "lib.dylib", 0x8000, **kwargs)
    return info.value


def test_decoder_errors() -> None:
    e = _error(bytes.fromhex("11 21 00 51 90"))
    assert e.offset == 0x8004 and "unknown rebase opcode 0x90" in e.message
    e = _error(bytes.fromhex("11 25 00"))
    assert e.offset == 0x8001 and "segment index 5" in e.message
    e = _error(bytes.fromhex("11 21 fc 1f 51"))  # offset 0xffc: an 8-byte pointer sticks out
    assert e.offset == 0x8004 and "outside segment 1" in e.message
    assert "before SET_SEGMENT" in _error(bytes.fromhex("11 51")).message
    assert "unknown type 0" in _error(bytes.fromhex("21 00 51")).message
    assert "unknown type 4" in _error(bytes.fromhex("14 21 00 51")).message
    e = _error(bytes.fromhex("11 21 00 60 80"))  # truncated ULEB count
    assert e.offset == 0x8004
    _error(bytes.fromhex("11 21 00 80 02"))  # SKIPPING without its skip


def test_forged_counts_fail_fast() -> None:
    huge = bytes.fromhex("ffffffffffffffff7f")  # 2**63 - 1
    with time_limit(2):
        # a count that runs past the segment (0x1000 pointers in 0x1000 bytes)
        assert "outside segment" in _error(bytes.fromhex("11 21 00 60 8020")).message
        # a count so large the offsets wrap past 2**64: over the budget, checked before looping
        assert "more than 6144" in _error(bytes.fromhex("11 21 00 60") + huge).message
        # a skip of -8 (mod 2**64) rebases the same slot again and again: over the budget too
        minus8 = bytes.fromhex("f8ffffffffffffffff01")
        assert "more than 6144" in _error(bytes.fromhex("11 21 00 80") + huge + minus8).message
        # ... but a few such repeats are legal (ld64 writes them for duplicate locations)
        twice = decode_rebase_opcodes(bytes.fromhex("11 21 10 80 02") + minus8, SEGS, "t", 0)
        assert twice == [(1, 0x10, P), (1, 0x10, P)]
        # many in-range repeats exceed the budget of one entry per 4 bytes of segment
        many = bytes.fromhex("11 21 00 5f 21 00 5f")
        assert "more than" in _error(many, max_entries=20).message
        # without max_entries the budget is the segments' size / 4 = 0x6000 / 4
        loop = bytes.fromhex("11") + bytes.fromhex("21 00 60 80 04") * 100  # 100 x 512 rebases
        assert "more than 6144" in _error(loop).message


# -- encoder: exact bytes ---------------------------------------------------------------------------


def test_encode_empty() -> None:
    assert encode_rebase_opcodes([]) == b""


def test_encode_single_pointer() -> None:
    # SET_TYPE pointer, SET_SEGMENT 1 offset 0x10, DO_REBASE_IMM_TIMES 1, DONE, 3 bytes of padding
    assert encode_rebase_opcodes([(1, 0x10, P)]) == bytes.fromhex("11 21 10 51 00 000000")


def test_encode_adjacent_pointers() -> None:
    # three adjacent: one DO_REBASE_IMM_TIMES 3
    assert encode_rebase_opcodes([(1, 0x10, P), (1, 0, P), (1, 8, P)]) == bytes.fromhex(
        "11 21 00 53 00000000"
    )
    # twenty: DO_REBASE_ULEB_TIMES 20 (ld64 uses the immediate only below 15)
    assert encode_rebase_opcodes([(1, 8 * k, P) for k in range(20)]) == bytes.fromhex("11 21 00 60 14 000000")
    assert encode_rebase_opcodes([(1, 8 * k, P) for k in range(15)]) == bytes.fromhex("11 21 00 60 0f 000000")
    assert encode_rebase_opcodes([(1, 8 * k, P) for k in range(14)]) == bytes.fromhex("11 21 00 5e 00000000")


def test_encode_gaps() -> None:
    # 0x0 and 0x20: DO_REBASE_ADD_ADDR_ULEB 0x18, then DO 1
    assert encode_rebase_opcodes([(1, 0, P), (1, 0x20, P)]) == bytes.fromhex("11 21 00 70 18 51 0000")
    # 0x0, 0x8 then 0x20: DO 2, ADD_ADDR_IMM_SCALED 2 (0x10 = 2 pointers), DO 1
    assert encode_rebase_opcodes([(1, 0, P), (1, 8, P), (1, 0x20, P)]) == bytes.fromhex(
        "11 21 00 52 42 51 0000"
    )
    # stride 0x18 four times: three equal gaps become DO_REBASE_ULEB_TIMES_SKIPPING_ULEB 3, 0x10
    got = encode_rebase_opcodes([(1, 0x18 * k, P) for k in range(4)])
    assert got == bytes.fromhex("11 21 00 80 03 10 51 00")
    # only two equal gaps stay as two DO_REBASE_ADD_ADDR_ULEB
    got = encode_rebase_opcodes([(1, 0x18 * k, P) for k in range(3)])
    assert got == bytes.fromhex("11 21 00 70 10 70 10 51")


def test_encode_aligned_stream_has_no_done() -> None:
    # 11 21 00 51 | 22 80 01 51 is exactly 8 bytes: ld64 adds no DONE then
    assert encode_rebase_opcodes([(1, 0, P), (2, 0x80, P)]) == bytes.fromhex("11 21 00 51 22 8001 51")


def test_encode_type_change_steps_back_with_a_wrapped_add() -> None:
    # sorted by type first: pointer at 0x10, then abs32 at 0x8 of the same segment: after the
    # first rebase the offset is 0x18, so ADD_ADDR_ULEB (0x8 - 0x18) mod 2**64
    got = encode_rebase_opcodes([(1, 0x8, A32), (1, 0x10, P)])
    assert got == bytes.fromhex("11 21 10 51 12 30 f0ffffffffffffffff01 51") + bytes(7)
    assert decode_rebase_opcodes(got, SEGS, "t", 0) == [(1, 0x10, P), (1, 0x8, A32)]


def test_encoder_rejects_bad_entries() -> None:
    for bad in [(16, 0, P), (-1, 0, P), (1, -8, P), (1, 0, 0), (1, 0, 4)]:
        with pytest.raises(ValueError):
            encode_rebase_opcodes([bad])


# -- properties -------------------------------------------------------------------------------------

_BIG_SEGS = [(k << 40, 1 << 40) for k in range(16)]


@st.composite
def rebases(draw: st.DrawFn, pointer_size: int = 8) -> list[tuple[int, int, int]]:
    # clustered offsets, so that runs, equal gaps and duplicates all occur
    base = draw(st.integers(0, 1 << 20))
    offset = st.one_of(
        st.integers(0, 64).map(lambda k: base + k * pointer_size),
        st.integers(0, 4000),
        st.integers(0, (1 << 40) - 8),
    )
    return draw(st.lists(st.tuples(st.integers(0, 15), offset, st.sampled_from([P, A32, R32])), max_size=120))


@settings(max_examples=400)
@given(rebases())
def test_round_trip(entries: list[tuple[int, int, int]]) -> None:
    raw = encode_rebase_opcodes(entries)
    assert len(raw) % 8 == 0
    assert (raw == b"") == (not entries)
    assert decode_rebase_opcodes(raw, _BIG_SEGS, "t", 0) == sorted(entries, key=lambda e: (e[2], e[0], e[1]))


@settings(max_examples=200)
@given(rebases(pointer_size=4))
def test_round_trip_32_bit(entries: list[tuple[int, int, int]]) -> None:
    raw = encode_rebase_opcodes(entries, pointer_size=4)
    assert len(raw) % 4 == 0
    got = decode_rebase_opcodes(raw, _BIG_SEGS, "t", 0, pointer_size=4)
    assert got == sorted(entries, key=lambda e: (e[2], e[0], e[1]))


@settings(max_examples=1000)
@given(st.binary(max_size=120), st.sampled_from([4, 8]))
def test_random_bytes_only_raise_format_errors(raw: bytes, pointer_size: int) -> None:
    with time_limit(5):
        try:
            got = decode_rebase_opcodes(raw, SEGS, "fuzz", 0, pointer_size)
        except MachOFormatError as exc:
            assert exc.offset is not None and 0 <= exc.offset <= len(raw)
            return
    for seg, off, _ in got:
        assert off + 4 <= SEGS[seg][1]


# -- read_rebases -----------------------------------------------------------------------------------


def test_read_rebases_values() -> None:
    data = bytearray(0x40)
    struct.pack_into("<Q", data, 0x10, 0xAB00_0000_0000_2468)  # pointer with a high byte
    struct.pack_into("<I", data, 0x20, 0x1234)  # 32-bit absolute
    stream = bytes.fromhex("11 21 10 51 12 21 20 51 00")
    image = build_dyld_info_image(rebase=stream, data=bytes(data))
    rec = read_rebases(image)
    assert rec["address"].tolist() == [0x1010, 0x1020]
    assert rec["target"].tolist() == [0x2468, 0x1234]
    assert rec["high8"].tolist() == [0xAB, 0]
    assert rec["segment"].tolist() == [1, 1]
    assert rec["kind"].tolist() == [FixupKind.REBASE] * 2
    assert rec["flags"].tolist() == [0, FIXUP_FLAG_32BIT]
    assert rec["bind"].tolist() == [-1, -1]
    assert image.fixups.counts()["rebase"] == 2


def test_read_rebases_errors() -> None:
    # __DATA is 0x2000 bytes of VM but only 0x1000 in the file: a rebase at 0x1800 has no value
    image = build_dyld_info_image(rebase=bytes.fromhex("11 21 80 30 51"))
    with pytest.raises(MachOFormatError, match="no file content") as info:
        read_rebases(image)
    assert info.value.offset == 0x2000
    with pytest.raises(MachOFormatError, match="PCREL32"):
        read_rebases(build_dyld_info_image(rebase=bytes.fromhex("13 21 00 51")))
    # Budget from the file size: one entry per 4 bytes of file (here 0x2000 + the stream), even
    # though the segments (0x4000 bytes of VM) would allow 4096. Each run of 512 pointers
    # (60 8004) covers the file part of __DATA exactly, so only the count is wrong.
    run = bytes.fromhex("21 00 60 8004")
    assert len(read_rebases(build_dyld_info_image(rebase=b"\x11" + run * 4))) == 2048
    with pytest.raises(MachOFormatError, match="more than 205"):
        read_rebases(build_dyld_info_image(rebase=b"\x11" + run * 5))
    assert len(read_rebases(build_dyld_info_image())) == 0


# -- oracles ----------------------------------------------------------------------------------------

_LINE = re.compile(r"^(\S+)\s+(\S*)\s+0x([0-9A-F]+)\s+(.+)$")
_TYPE_NAMES = {P: "pointer", A32: "text abs32", R32: "text rel32"}


def _objdump_rebases(path: Path) -> list[tuple[str, str, int, str]]:
    out = subprocess.run(
        [tool(LLVM_OBJDUMP), "--macho", "--rebase", str(path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    start = out.index("Rebase table:") + 2  # then the column header
    rows = []
    for line in out[start:]:
        m = _LINE.match(line)
        assert m, line
        rows.append((m.group(1), m.group(2), int(m.group(3), 16), m.group(4)))
    return rows


def _raw_stream(image: MachOFile) -> bytes:
    di = image.dyld_info_command
    assert di is not None
    return bytes(image.linkedit[di.rebase_off : di.rebase_off + di.rebase_size])


def _check(path: Path) -> int:
    image = open_macho(path)
    segments = [(s.vmaddr, s.vmsize) for s in image.segments]
    raw = _raw_stream(image)
    ours = decode_rebase_opcodes(raw, segments, str(path), 0)
    rows = []
    for seg, off, rtype in ours:
        address = image.segments[seg].vmaddr + off
        sect = image.section_for_address(address)
        rows.append((image.segments[seg].name, sect.sectname if sect else "", address, _TYPE_NAMES[rtype]))
    assert rows == _objdump_rebases(path), path
    # Apple's linker as the encoder's oracle: re-encoding gives back its exact bytes
    assert encode_rebase_opcodes(ours) == raw, path
    # read_rebases: the same locations, and targets equal to the pointers in the file
    records = read_rebases(image)
    assert records["address"].tolist() == [r[2] for r in rows]
    for rec in records[:: max(1, len(records) // 50)]:
        (value,) = struct.unpack("<Q", bytes(image.read_at_address(int(rec["address"]), 8)))
        assert int(rec["target"]) == value & ((1 << 56) - 1) and int(rec["high8"]) == value >> 56
    return len(ours)


def test_fixup_dyldinfo_against_objdump() -> None:
    assert _check(shared_path("data", "macho", "fixup-dyldinfo.dylib")) == 3


def test_wheel_corpus_against_objdump() -> None:
    from wheel_corpus import macho_paths

    assert sum(_check(p) for p in macho_paths()) > 5000


@settings(max_examples=300)
@given(st.data())
def test_mutated_real_streams_only_raise_format_errors(data: st.DataObject) -> None:
    image = open_macho(shared_path("data", "macho", "fixup-dyldinfo.dylib"))
    raw = bytearray(_raw_stream(image))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    segments = [(s.vmaddr, s.vmsize) for s in image.segments]
    with time_limit(5), contextlib.suppress(MachOFormatError):
        decode_rebase_opcodes(bytes(raw), segments, "fuzz", 0)


def test_fuzzed_files_only_raise_format_errors() -> None:
    for path in sorted(shared_path("data", "fuzzed").iterdir()):
        try:
            image = open_macho(path)
        except MachOFormatError:
            continue
        with time_limit(10), contextlib.suppress(MachOFormatError):
            out = read_rebases(image)
            assert isinstance(out, np.ndarray)
