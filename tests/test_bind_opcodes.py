"""Bind, lazy-bind and weak-bind opcodes: hand-assembled streams, round trips, llvm-objdump and
Apple's linkers as oracles, malformed input."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import pytest
from conftest import LLVM_OBJDUMP, shared_path, time_limit, tool
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rebase_opcodes import build_dyld_info_image

from dyldcache.errors import MachOFormatError
from dyldcache.macho import constants as C
from dyldcache.macho.bind_opcodes import (
    BindEntry,
    decode_bind_opcodes,
    decode_weak_bind_opcodes,
    encode_bind_opcodes,
    encode_lazy_bind_opcodes,
    encode_weak_bind_opcodes,
    read_binds,
    read_weak_binds,
)
from dyldcache.macho.file import MachOFile, open_macho
from dyldcache.macho.fixups import FIXUP_FLAG_32BIT, FIXUP_FLAG_LAZY, FixupKind, Import, WeakBind

P, A32, R32 = C.BIND_TYPE_POINTER, C.BIND_TYPE_TEXT_ABSOLUTE32, C.BIND_TYPE_TEXT_PCREL32
WEAK_IMPORT = C.BIND_SYMBOL_FLAGS_WEAK_IMPORT
NON_WEAK = C.BIND_SYMBOL_FLAGS_NON_WEAK_DEFINITION
SEGS = [(0, 0x4000), (0x4000, 0x1000), (0x5000, 0x1000)]


def _decode(stream: bytes, **kwargs: bool) -> list[BindEntry]:
    return decode_bind_opcodes(stream, SEGS, "t", 0, **kwargs)


# -- hand-assembled streams -------------------------------------------------------------------------


def test_decode_every_opcode() -> None:
    stream = bytes.fromhex(
        "11"  # SET_DYLIB_ORDINAL_IMM 1
        "40 5f6100"  # SET_SYMBOL_TRAILING_FLAGS_IMM 0 "_a"
        "51"  # SET_TYPE_IMM pointer
        "71 00"  # SET_SEGMENT_AND_OFFSET_ULEB segment 1, offset 0
        "90"  # DO_BIND: 0 -> offset 8
        "b1"  # DO_BIND_ADD_ADDR_IMM_SCALED 1: 8 -> 8 + 8 + 1*8 = 0x18
        "a0 08"  # DO_BIND_ADD_ADDR_ULEB 8: 0x18 -> 0x18 + 8 + 8 = 0x28
        "c0 02 10"  # DO_BIND_ULEB_TIMES_SKIPPING_ULEB 2, skip 0x10: 0x28, 0x40 -> 0x58
        "80 08"  # ADD_ADDR_ULEB 8 -> 0x60
        "60 78"  # SET_ADDEND_SLEB 0x78: sign bit 0x40 set, so 0x78 - 0x80 = -8
        "3f"  # SET_DYLIB_SPECIAL_IMM 0xf: -1, the main executable
        "41 5f6200"  # SET_SYMBOL_TRAILING_FLAGS_IMM 1 (weak import) "_b"
        "90"  # DO_BIND at 0x60
        "20 9003"  # SET_DYLIB_ORDINAL_ULEB 0x10 | 3 << 7 = 400
        "52"  # SET_TYPE_IMM text absolute32
        "60 8001"  # SET_ADDEND_SLEB 0 | 1 << 7 = 128
        "72 04"  # SET_SEGMENT_AND_OFFSET_ULEB segment 2, offset 4
        "90"  # DO_BIND
        "00"  # DONE
        "90"  # never read
    )
    a = [BindEntry(1, off, P, 1, "_a") for off in (0, 8, 0x18, 0x28, 0x40)]
    assert _decode(stream) == [
        *a,
        BindEntry(1, 0x60, P, -1, "_b", WEAK_IMPORT, -8),
        BindEntry(2, 4, A32, 400, "_b", WEAK_IMPORT, 128),
    ]
    assert _decode(stream)[-2].is_weak_import


@pytest.mark.parametrize(("byte", "ordinal"), [(0x30, 0), (0x3F, -1), (0x3E, -2), (0x3D, -3)])
def test_special_ordinals_are_sign_extended(byte: int, ordinal: int) -> None:
    stream = bytes([byte]) + bytes.fromhex("40 5f6100 51 71 00 90")
    assert _decode(stream) == [BindEntry(1, 0, P, ordinal, "_a")]


def test_unknown_special_ordinal_is_rejected() -> None:
    with pytest.raises(MachOFormatError, match="special dylib ordinal -4"):
        _decode(bytes.fromhex("3c"))


# two ld64-style lazy records: segment/offset, ordinal, symbol, DO_BIND, DONE
LAZY = bytes.fromhex("72 10 11 40 5f6100 90 0072 18 12 40 5f6200 90 00")


def test_lazy_stream_continues_after_done() -> None:
    assert _decode(LAZY, lazy=True) == [BindEntry(2, 0x10, P, 1, "_a"), BindEntry(2, 0x18, P, 2, "_b")]
    # a regular bind stream ends at its first DONE
    assert _decode(LAZY) == [BindEntry(2, 0x10, P, 1, "_a")]


def test_threaded_is_rejected_clearly() -> None:
    with pytest.raises(MachOFormatError, match="THREADED") as info:
        decode_bind_opcodes(bytes.fromhex("11 40 5f6100 d0 00"), SEGS, "lib.dylib", 0x100)
    assert info.value.offset == 0x105 and info.value.path == "lib.dylib"


def _error(stream: bytes, **kwargs: int) -> MachOFormatError:
    with pytest.raises(MachOFormatError) as info:
        decode_bind_opcodes(stream, SEGS, "lib.dylib", 0x8000, **kwargs)
    return info.value


def test_decoder_errors() -> None:
    e = _error(bytes.fromhex("11 40 5f6100 71 00 e0"))
    assert e.offset == 0x8007 and "unknown bind opcode 0xe0" in e.message
    assert "segment index 3" in _error(bytes.fromhex("73 00")).message
    e = _error(bytes.fromhex("11 40 5f6100 71 fc1f 90"))  # 0xffc + 8 > 0x1000
    assert e.offset == 0x8008 and "outside segment 1" in e.message
    assert "SET_SYMBOL" in _error(bytes.fromhex("11 71 00 90")).message
    assert "ordinal" in _error(bytes.fromhex("40 5f6100 71 00 90")).message
    assert "unknown type 7" in _error(bytes.fromhex("11 40 5f6100 57 71 00 90")).message
    _error(bytes.fromhex("11 40 5f61"))  # name without NUL
    _error(bytes.fromhex("11 40 5f6100 60 ff"))  # truncated SLEB
    assert "64 bits" in _error(bytes.fromhex("11 40 5f6100 60" + "80" * 9 + "01")).message  # 2**63
    _error(bytes.fromhex("11 40 5f6100 71 00 c0 02"))  # SKIPPING without its skip


def test_forged_counts_fail_fast() -> None:
    huge = bytes.fromhex("ffffffffffffffff7f")
    minus8 = bytes.fromhex("f8ffffffffffffffff01")
    head = bytes.fromhex("11 40 5f6100 71 00 c0")
    with time_limit(2):
        assert "outside segment" in _error(head + bytes.fromhex("8020 00")).message  # 0x1000 x 8 bytes
        assert "more than 6144" in _error(head + huge + bytes([0])).message  # wraps past 2**64
        assert "more than 6144" in _error(head + huge + minus8).message  # the same slot forever
        # a few repeats of one slot are legal: ld64 writes them for duplicate binds
        twice = _decode(bytes.fromhex("11 40 5f6100 71 10 c0 02") + minus8)
        assert twice == [BindEntry(1, 0x10, P, 1, "_a")] * 2
        # 100 runs of 512 binds, each inside the segment: over the budget of segment size / 4
        runs = bytes.fromhex("11 40 5f6100") + bytes.fromhex("71 00 c0 8004 00") * 100
        assert "more than 6144" in _error(runs).message
        assert "more than 100" in _error(runs, max_entries=100).message


def test_weak_bind_stream_with_a_strong_marker() -> None:
    stream = bytes.fromhex(
        "48 5f7300"  # SET_SYMBOL_TRAILING_FLAGS_IMM 8 (non-weak definition) "_s": never bound
        "40 5f7700"  # "_w"
        "51 71 10 90"  # pointer, segment 1 offset 0x10, DO_BIND
        "00"
    )
    expected = [WeakBind("_s", None, 0, True), WeakBind("_w", 0x4010, 0, False)]
    assert decode_weak_bind_opcodes(stream, SEGS, "t", 0) == expected
    # the encoder writes it the same way, then 3 bytes of padding
    assert encode_weak_bind_opcodes(expected, SEGS) == stream + bytes(3)


def test_weak_bind_marker_at_the_end_and_flagged_binds() -> None:
    # a flagged symbol that is bound is an ordinary entry, not a marker; the marker of "_z" is
    # closed by the end of the data
    stream = bytes.fromhex("48 5f7700 51 71 10 90 48 5f7a00")
    got = decode_weak_bind_opcodes(stream, SEGS, "t", 0)
    assert got == [WeakBind("_w", 0x4010, 0, True), WeakBind("_z", None, 0, True)]


# -- encoders: exact bytes --------------------------------------------------------------------------

# SET_DYLIB_ORDINAL_IMM 1, SET_SYMBOL 0 "_a", SET_TYPE pointer, SET_SEGMENT 1 offset 0
_HEAD_A = "11 40 5f6100 51 71 00"


def test_encode_empty() -> None:
    assert encode_bind_opcodes([]) == b""
    assert encode_lazy_bind_opcodes([]) == (b"", [])
    assert encode_weak_bind_opcodes([], SEGS) == b""


def test_encode_single() -> None:
    # 11, 40 "_a" 00, 51, 71 10, DO_BIND 90, DONE 00 = 10 bytes, then 6 bytes of padding
    assert encode_bind_opcodes([BindEntry(1, 0x10, P, 1, "_a")]) == bytes.fromhex(
        "11 40 5f6100 51 71 10 90 00"
    ) + bytes(6)


@pytest.mark.parametrize(
    ("ordinal", "encoded"),
    [(0, "30"), (-1, "3f"), (-2, "3e"), (-3, "3d"), (15, "1f"), (16, "20 10"), (300, "20 ac02")],
)
def test_encode_ordinals(ordinal: int, encoded: str) -> None:
    raw = encode_bind_opcodes([BindEntry(1, 0, P, ordinal, "_a")])
    assert raw.startswith(bytes.fromhex(encoded + "40 5f6100"))


def test_encode_runs() -> None:
    # 0, 0x10, 0x20: DO_BIND then ADD 8 twice becomes DO_BIND_ULEB_TIMES_SKIPPING_ULEB 2, 8
    raw = encode_bind_opcodes([BindEntry(1, off, P, 1, "_a") for off in (0x20, 0, 0x10)])
    assert raw == bytes.fromhex(_HEAD_A + "c0 02 08 90 00") + bytes(3)
    # 0 and 0x18: DO_BIND_ADD_ADDR_IMM_SCALED 2 (a gap of two pointers)
    raw = encode_bind_opcodes([BindEntry(1, off, P, 1, "_a") for off in (0, 0x18)])
    assert raw == bytes.fromhex(_HEAD_A + "b2 90 00") + bytes(5)
    # 0 and 0x80: the gap 0x78 is 15 pointers, past ld64's immediate limit of 14
    raw = encode_bind_opcodes([BindEntry(1, off, P, 1, "_a") for off in (0, 0x80)])
    assert raw == bytes.fromhex(_HEAD_A + "a0 78 90 00") + bytes(4)


def test_encode_addends_and_sort_order() -> None:
    entries = [
        BindEntry(1, 8, P, 1, "_a"),
        BindEntry(1, 0, P, 1, "_a", addend=8),
        BindEntry(1, 0x10, P, -2, "_b", WEAK_IMPORT),
    ]
    # ordinal -2 sorts first; then _a at 0 with addend 8, _a at 8 with addend 0 again
    assert encode_bind_opcodes(entries) == bytes.fromhex(
        "3e 41 5f6200 51 71 10 90"  # flat lookup, weak import "_b", pointer, seg 1 + 0x10, bind
        # ordinal 1, "_a"; the offset is 0x18 and must go back to 0 in the same segment: like
        # ld64, ADD_ADDR_ULEB (0 - 0x18) mod 2**64
        "11 40 5f6100 80 e8ffffffffffffffff01"
        "60 08 90"  # addend 8, bind
        "60 00 90"  # addend 0 (the offset is already 8), bind
        "00"  # DONE: 32 bytes, no padding needed
    )


def test_encode_lazy_records() -> None:
    raw, offsets = encode_lazy_bind_opcodes([BindEntry(2, 0x10, P, 1, "_a"), BindEntry(2, 0x18, P, 2, "_b")])
    assert raw == LAZY + bytes(6)
    assert offsets == [0, 9]
    raw, _ = encode_lazy_bind_opcodes([BindEntry(1, 0, P, 20, "_c"), BindEntry(1, 8, P, -1, "_d")])
    # ordinal 20 needs SET_DYLIB_ORDINAL_ULEB (20 14), -1 is SET_DYLIB_SPECIAL_IMM (3f); 19 + 5 bytes
    assert raw == bytes.fromhex("71 00 20 14 40 5f6300 90 0071 08 3f 40 5f6400 90 00") + bytes(5)


def test_encoders_reject_bad_entries() -> None:
    for bad in [
        BindEntry(16, 0, P, 1, "_a"),
        BindEntry(1, -1, P, 1, "_a"),
        BindEntry(1, 0, 0, 1, "_a"),
        BindEntry(1, 0, P, -4, "_a"),
        BindEntry(1, 0, P, 1, "_a", flags=16),
        BindEntry(1, 0, P, 1, "_a", addend=1 << 63),
        BindEntry(1, 0, P, 1, "a\0b"),
    ]:
        with pytest.raises(ValueError):
            encode_bind_opcodes([bad])
    with pytest.raises(ValueError, match="addend"):
        encode_lazy_bind_opcodes([BindEntry(1, 0, P, 1, "_a", addend=4)])
    with pytest.raises(ValueError, match="pointer"):
        encode_lazy_bind_opcodes([BindEntry(1, 0, A32, 1, "_a")])
    with pytest.raises(ValueError, match="no segment"):
        encode_weak_bind_opcodes([WeakBind("_a", 0x9000)], SEGS)
    with pytest.raises(ValueError, match="marker"):
        encode_weak_bind_opcodes([WeakBind("_a", None)], SEGS)


# -- properties -------------------------------------------------------------------------------------

_BIG_SEGS = [(k << 40, 1 << 40) for k in range(16)]
_names = st.one_of(
    st.sampled_from(["_a", "_b", "_ab", "__ZN3fooEv", "é"]),
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=16),
)
_addends = st.one_of(st.just(0), st.integers(-256, 256), st.integers(-(1 << 63), (1 << 63) - 1))


def _offsets(pointer_size: int = 8) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 40).map(lambda k: 0x1000 + k * pointer_size),
        st.integers(0, 4000),
        st.integers(0, (1 << 40) - 8),
    )


_binds = st.builds(
    BindEntry,
    segment=st.integers(0, 15),
    offset=_offsets(),
    type=st.sampled_from([P, A32, R32]),
    ordinal=st.one_of(st.integers(-3, 20), st.integers(21, 1 << 20)),
    name=_names,
    flags=st.sampled_from([0, WEAK_IMPORT, NON_WEAK, 15]),
    addend=_addends,
)


def _bind_order(e: BindEntry) -> tuple[int, bytes, int, int, int, int]:
    return (e.ordinal, e.name.encode(), e.flags, e.type, e.segment, e.offset)


@settings(max_examples=400)
@given(st.lists(_binds, max_size=80))
def test_round_trip(entries: list[BindEntry]) -> None:
    raw = encode_bind_opcodes(entries)
    assert len(raw) % 8 == 0 and (raw == b"") == (not entries)
    assert decode_bind_opcodes(raw, _BIG_SEGS, "t", 0) == sorted(entries, key=_bind_order)


@settings(max_examples=200)
@given(st.lists(_binds, max_size=40))
def test_round_trip_32_bit(entries: list[BindEntry]) -> None:
    raw = encode_bind_opcodes(entries, pointer_size=4)
    assert len(raw) % 4 == 0
    assert decode_bind_opcodes(raw, _BIG_SEGS, "t", 0, pointer_size=4) == sorted(entries, key=_bind_order)


_lazy_binds = st.builds(
    BindEntry,
    segment=st.integers(0, 15),
    offset=_offsets(),
    type=st.just(P),
    ordinal=st.integers(-3, 1 << 16),
    name=_names,
    flags=st.sampled_from([0, WEAK_IMPORT]),
)


@settings(max_examples=300)
@given(st.lists(_lazy_binds, max_size=40))
def test_lazy_round_trip(entries: list[BindEntry]) -> None:
    raw, offsets = encode_lazy_bind_opcodes(entries)
    assert len(raw) % 8 == 0 and len(offsets) == len(entries)
    assert decode_bind_opcodes(raw, _BIG_SEGS, "t", 0, lazy=True) == entries
    # every record stands alone: dyld starts at the offset the stub helper pushed
    for offset, entry in zip(offsets, entries, strict=True):
        assert decode_bind_opcodes(raw[offset:], _BIG_SEGS, "t", 0) == [entry]


@st.composite
def weak_binds(draw: st.DrawFn) -> list[WeakBind]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        name = draw(_names)
        if draw(st.integers(0, 4)) == 0:
            out.append(WeakBind(name, None, 0, True))
        else:
            seg = draw(st.integers(0, 15))
            address = (seg << 40) + draw(_offsets())
            out.append(WeakBind(name, address, draw(_addends), draw(st.booleans())))
    return out


@settings(max_examples=400)
@given(weak_binds())
def test_weak_round_trip(entries: list[WeakBind]) -> None:
    raw = encode_weak_bind_opcodes(entries, _BIG_SEGS)
    assert len(raw) % 8 == 0
    expected = sorted(entries, key=lambda w: (w.name.encode(), w.address is not None, w.address or 0))
    assert decode_weak_bind_opcodes(raw, _BIG_SEGS, "t", 0) == expected


@settings(max_examples=1000)
@given(st.binary(max_size=120), st.sampled_from([4, 8]))
def test_random_bytes_only_raise_format_errors(raw: bytes, pointer_size: int) -> None:
    with time_limit(5):
        for lazy in (False, True):
            try:
                got = decode_bind_opcodes(raw, SEGS, "fuzz", 0, lazy=lazy, pointer_size=pointer_size)
            except MachOFormatError as exc:
                assert exc.offset is not None and 0 <= exc.offset <= len(raw)
                continue
            assert all(e.offset + 4 <= SEGS[e.segment][1] for e in got)
        with contextlib.suppress(MachOFormatError):
            decode_weak_bind_opcodes(raw, SEGS, "fuzz", 0, pointer_size=pointer_size)


@settings(max_examples=300)
@given(st.data())
def test_mutated_streams_only_raise_format_errors(data: st.DataObject) -> None:
    weak = bytes.fromhex("48 5f7300 40 5f7700 51 71 10 90 00")
    base = data.draw(st.sampled_from([LAZY, weak, _fixup_dyldinfo_streams()[0]]))
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with time_limit(5), contextlib.suppress(MachOFormatError):
        decode_bind_opcodes(bytes(raw), SEGS, "fuzz", 0, lazy=data.draw(st.booleans()))
    with time_limit(5), contextlib.suppress(MachOFormatError):
        decode_weak_bind_opcodes(bytes(raw), SEGS, "fuzz", 0)


# -- read_binds / read_weak_binds -------------------------------------------------------------------


def test_read_binds_records_and_imports() -> None:
    bind = bytes.fromhex(
        "11 40 5f6100 51 71 00 90"  # _a from ordinal 1 at 0x1000
        "41 5f6100 90"  # _a again, now weak-imported: a different import, at 0x1008
        "40 5f6100 52 60 10 90"  # _a, 32-bit, addend 16, at 0x1010
        "00"
    )
    lazy = bytes.fromhex("71 20 11 40 5f6100 90 0071 28 12 40 5f6200 90 00")
    weak = bytes.fromhex("48 5f7300 40 5f7700 51 71 30 90 00")
    image = build_dyld_info_image(bind=bind, lazy_bind=lazy, weak_bind=weak)
    records, imports = read_binds(image)
    assert imports == [Import("_a", 1, False), Import("_a", 1, True), Import("_b", 2, False)]
    assert records["address"].tolist() == [0x1000, 0x1008, 0x1010, 0x1020, 0x1028]
    assert records["bind"].tolist() == [0, 1, 0, 0, 2]
    assert records["addend"].tolist() == [0, 0, 16, 0, 0]
    assert records["segment"].tolist() == [1] * 5
    assert records["kind"].tolist() == [FixupKind.BIND] * 5
    assert records["flags"].tolist() == [0, 0, FIXUP_FLAG_32BIT, FIXUP_FLAG_LAZY, FIXUP_FLAG_LAZY]
    assert read_weak_binds(image) == [WeakBind("_s", None, 0, True), WeakBind("_w", 0x1030, 0, False)]
    fixups = image.fixups
    assert fixups.source == "opcodes" and fixups.counts()["bind"] == 5
    assert fixups.weak_binds == read_weak_binds(image)


def test_read_binds_errors() -> None:
    with pytest.raises(MachOFormatError, match="PCREL32"):
        read_binds(build_dyld_info_image(bind=bytes.fromhex("11 40 5f6100 53 71 00 90 00")))
    image = build_dyld_info_image(lazy_bind=bytes.fromhex("71 00 11 40 5f6100 d0"))
    with pytest.raises(MachOFormatError, match="lazy bind opcodes: BIND_OPCODE_THREADED") as info:
        read_binds(image)
    assert image.dyld_info_command is not None
    assert info.value.offset == image.dyld_info_command.lazy_bind_off + 7
    assert read_binds(build_dyld_info_image())[0].size == 0
    assert read_weak_binds(build_dyld_info_image()) == []


# -- oracles ----------------------------------------------------------------------------------------

_TYPE_NAMES = {P: "pointer", A32: "text abs32", R32: "text rel32"}
_SPECIAL = {0: "this-image", -1: "main-executable", -2: "flat-namespace", -3: "weak"}
_HEAD = r"^(\S+)\s+(\S*)\s+0x([0-9A-F]+)\s+"
_BIND = re.compile(
    _HEAD + r"(pointer|text abs32|text rel32)\s+(-?\d+)\s+(<<[^>]*>>|\S+)\s+(.+?)( \(weak_import\))?$"
)
_LAZY = re.compile(_HEAD + r"(<<[^>]*>>|\S+)\s+(.+)$")
_WEAK = re.compile(_HEAD + r"(pointer|text abs32|text rel32)\s+(-?\d+)\s+(.+)$")
_STRONG = re.compile(r"^\s+strong\s+(.+)$")


def _objdump_tables(path: Path) -> dict[str, list[str]]:
    out = subprocess.run(
        [tool(LLVM_OBJDUMP), "--macho", "--bind", "--lazy-bind", "--weak-bind", str(path)],
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8", "surrogateescape")
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines()[1:]:
        if line in ("Bind table:", "Lazy bind table:", "Weak bind table:"):
            current = tables.setdefault(line, [])
        elif line.startswith("segment  section") or not line:
            continue
        else:
            assert current is not None, line
            current.append(line)
    return tables


def _where(image: MachOFile, seg: int, offset: int) -> tuple[str, str, int]:
    address = image.segments[seg].vmaddr + offset
    sect = image.section_for_address(address)
    return image.segments[seg].name, sect.sectname if sect else "", address


def _check_dylib(image: MachOFile, ordinal: int, llvm_name: str) -> None:
    if ordinal <= 0:
        assert llvm_name == _SPECIAL[ordinal]
    else:
        # llvm prints the dylib's short name: "libSystem" for /usr/lib/libSystem.B.dylib
        assert Path(image.dylibs[ordinal - 1].path).name.startswith(llvm_name), (ordinal, llvm_name)


def _streams(image: MachOFile) -> tuple[bytes, bytes, bytes]:
    di = image.dyld_info_command
    assert di is not None

    def blob(off: int, size: int) -> bytes:
        return bytes(image.linkedit[off : off + size])

    return (
        blob(di.bind_off, di.bind_size),
        blob(di.lazy_bind_off, di.lazy_bind_size),
        blob(di.weak_bind_off, di.weak_bind_size),
    )


def _fixup_dyldinfo_streams() -> tuple[bytes, bytes, bytes]:
    return _streams(open_macho(shared_path("data", "macho", "fixup-dyldinfo.dylib")))


def _check(path: Path) -> tuple[int, int, int]:
    image = open_macho(path)
    segments = [(s.vmaddr, s.vmsize) for s in image.segments]
    bind, lazy, weak = _streams(image)
    tables = _objdump_tables(path)

    ours = decode_bind_opcodes(bind, segments, str(path), 0)
    rows = tables.get("Bind table:", [])
    assert len(rows) == len(ours), path
    for e, line in zip(ours, rows, strict=True):
        m = _BIND.match(line)
        assert m, line
        seg, sect, addr, btype, addend, lib, name, weak_import = m.groups()
        assert (seg, sect, int(addr, 16)) == _where(image, e.segment, e.offset), line
        assert (btype, int(addend), name, bool(weak_import)) == (
            _TYPE_NAMES[e.type], e.addend, e.name, e.is_weak_import
        ), line  # fmt: skip
        _check_dylib(image, e.ordinal, lib)

    ours_lazy = decode_bind_opcodes(lazy, segments, str(path), 0, lazy=True)
    rows = tables.get("Lazy bind table:", [])
    assert len(rows) == len(ours_lazy), path
    for e, line in zip(ours_lazy, rows, strict=True):
        m = _LAZY.match(line)
        assert m, line
        seg, sect, addr, lib, name = m.groups()
        assert (seg, sect, int(addr, 16), name) == (*_where(image, e.segment, e.offset), e.name), line
        _check_dylib(image, e.ordinal, lib)

    ours_weak = decode_weak_bind_opcodes(weak, segments, str(path), 0)
    rows = tables.get("Weak bind table:", [])
    assert len(rows) == len(ours_weak), path
    for w, line in zip(ours_weak, rows, strict=True):
        strong = _STRONG.match(line)
        if w.address is None:
            assert strong and strong.group(1) == w.name, line
            continue
        m = _WEAK.match(line)
        assert m and not strong, line
        seg, sect, addr, btype, addend, name = m.groups()
        seg_index = next(s.index for s in image.segments if s.vmaddr <= w.address < s.vmend)
        expected = (
            *_where(image, seg_index, w.address - image.segments[seg_index].vmaddr),
            "pointer",
            w.addend,
            w.name,
        )
        assert (seg, sect, int(addr, 16), btype, int(addend), name) == expected, line

    # Apple's linker as the encoders' oracle: re-encoding gives back its exact bytes
    assert encode_bind_opcodes(ours) == bind, path
    assert encode_lazy_bind_opcodes(ours_lazy)[0] == lazy, path
    assert encode_weak_bind_opcodes(ours_weak, segments) == weak, path

    # read_binds: the same locations, one import per (name, ordinal, weak import)
    records, imports = read_binds(image)
    assert len(records) == len(ours) + len(ours_lazy)
    expected_addresses = [_where(image, e.segment, e.offset)[2] for e in ours + ours_lazy]
    assert records["address"].tolist() == expected_addresses
    assert [imports[i].name for i in records["bind"]] == [e.name for e in ours + ours_lazy]
    assert len(set(imports)) == len(imports)
    assert read_weak_binds(image) == ours_weak
    return len(ours), len(ours_lazy), len(ours_weak)


def test_fixup_dyldinfo_against_objdump() -> None:
    assert _check(shared_path("data", "macho", "fixup-dyldinfo.dylib")) == (4, 0, 0)


def test_wheel_corpus_against_objdump() -> None:
    from wheel_corpus import macho_paths

    counts = [_check(p) for p in macho_paths()]
    binds, lazy, weak = (sum(c) for c in zip(*counts, strict=True))
    assert binds > 500 and lazy > 1000 and weak > 50


def test_fuzzed_files_only_raise_format_errors() -> None:
    for path in sorted(shared_path("data", "fuzzed").iterdir()):
        try:
            image = open_macho(path)
        except MachOFormatError:
            continue
        with time_limit(10), contextlib.suppress(MachOFormatError):
            read_binds(image)
        with time_limit(10), contextlib.suppress(MachOFormatError):
            read_weak_binds(image)
