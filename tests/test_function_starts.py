"""LC_FUNCTION_STARTS: hand-assembled bytes, round trips, llvm-objdump and ld64 as oracles."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import LLVM_OBJDUMP, shared_path, tool
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.errors import MachOFormatError
from dyldcache.macho import constants as C
from dyldcache.macho.file import open_macho
from dyldcache.macho.function_starts import read_function_starts, write_function_starts

# -- hand-assembled bytes ---------------------------------------------------------------------------


def test_exact_bytes() -> None:
    # base 0x1000; functions at 0x1010, 0x1020, 0x1200: deltas 0x10, 0x10, 0x1e0.
    # 0x1e0 = 0b11_1100000 -> ULEB e0 03. Then the 00 terminator and 3 bytes of padding to 8.
    raw = write_function_starts([0x1200, 0x1010, 0x1020, 0x1010], 0x1000)
    assert raw == bytes.fromhex("10 10 e003 00 000000")
    got = read_function_starts(raw, 0x1000, "t", 0)
    assert got.dtype == np.uint64
    assert got.tolist() == [0x1010, 0x1020, 0x1200]


def test_empty() -> None:
    # just the terminator, padded to 8 (what ld64 writes for an image without functions)
    assert write_function_starts([], 0) == bytes(8)
    assert read_function_starts(b"", 0, "t", 0).size == 0
    assert read_function_starts(bytes(8), 0, "t", 0).size == 0


def test_termination_rules() -> None:
    # the end of the data ends the list too
    assert read_function_starts(b"\x04\x08", 0x100, "t", 0).tolist() == [0x104, 0x10C]
    # anything after the terminator is ignored, even bytes that are not padding
    assert read_function_starts(b"\x04\x00\x85\xff", 0x100, "t", 0).tolist() == [0x104]
    # a non-canonical zero (80 00) is a zero delta as well
    assert read_function_starts(b"\x04\x80\x00\x08", 0x100, "t", 0).tolist() == [0x104]
    # a 00 byte that ends a multi-byte ULEB is not a terminator: 81 00 is 1
    assert read_function_starts(b"\x81\x00\x02\x00", 0, "t", 0).tolist() == [1, 3]


def test_errors_name_the_offset() -> None:
    with pytest.raises(MachOFormatError) as info:
        read_function_starts(b"\x10\x20\x80", 0, "lib.dylib", 0x4000)
    assert info.value.offset == 0x4002 and info.value.path == "lib.dylib"
    with pytest.raises(MachOFormatError, match="too long"):
        read_function_starts(b"\x10" + b"\x80" * 10 + b"\x01", 0, "t", 0)
    with pytest.raises(MachOFormatError, match="64 bits"):
        read_function_starts(b"\x80" * 9 + b"\x02", 0, "t", 0)
    # two deltas of 2**63 pass the top of the address space
    big = b"\x80" * 9 + b"\x01"
    with pytest.raises(MachOFormatError, match="overflows"):
        read_function_starts(big + big, 0, "t", 0)
    with pytest.raises(MachOFormatError, match="overflows"):
        read_function_starts(b"\x20", 2**64 - 0x10, "t", 0)


def test_writer_rejects_an_address_at_or_below_the_header() -> None:
    with pytest.raises(ValueError):
        write_function_starts([0x1000], 0x1000)
    with pytest.raises(ValueError):
        write_function_starts([0x800, 0x2000], 0x1000)


# -- properties -------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    st.integers(0, 2**40),
    st.lists(st.one_of(st.integers(1, 300), st.integers(1, 2**40)), max_size=200),
)
def test_round_trip(base: int, offsets: list[int]) -> None:
    addresses = [base + o for o in offsets]
    raw = write_function_starts(addresses, base)
    assert len(raw) % 8 == 0
    # canonical ULEBs of non-zero deltas never end in 00, so the trailing zeros are the
    # terminator plus less than 8 bytes of padding
    assert 1 <= len(raw) - len(raw.rstrip(b"\0")) <= 8
    assert read_function_starts(raw, base, "t", 0).tolist() == sorted(set(addresses))


@given(st.lists(st.integers(1, 2**20), min_size=1, max_size=50))
def test_round_trip_from_numpy(offsets: list[int]) -> None:
    arr = np.array(offsets, dtype=np.uint64) + np.uint64(0x1_0000_0000)
    raw = write_function_starts(arr, 0x1_0000_0000)
    assert np.array_equal(read_function_starts(raw, 0x1_0000_0000, "t", 0), np.unique(arr))


@settings(max_examples=500)
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_random_bytes_only_raise_format_errors(raw: bytes, base: int) -> None:
    try:
        got = read_function_starts(raw, base, "fuzz", 0)
    except MachOFormatError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(raw)
        return
    assert got.dtype == np.uint64
    assert np.all(got[1:] > got[:-1])
    assert got.size == 0 or int(got[0]) > base


# -- oracles ----------------------------------------------------------------------------------------


def _objdump_starts(path: Path) -> list[int]:
    out = subprocess.run(
        [tool(LLVM_OBJDUMP), "--macho", "--function-starts", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # a header line "<path>:", then one 16-digit hex address per line
    return [int(line, 16) for line in out.splitlines()[1:] if line.strip()]


def _check(path: Path) -> int:
    image = open_macho(path)
    ours = image.function_starts
    # llvm adds the __TEXT vmaddr to its deltas; for these images that is the mach header address
    assert ours.tolist() == _objdump_starts(path), path
    # ld64 as oracle for the encoder: re-encoding gives back its exact bytes (padding included)
    raw = image.linkedit_data(C.LC_FUNCTION_STARTS)
    assert raw is not None
    assert write_function_starts(ours, image.base_address) == bytes(raw), path
    return len(ours)


@pytest.mark.parametrize(
    "name",
    ["libexports.dylib", "fixup-dyldinfo.dylib", "fixup-chains-arm64.dylib", "fixup-chains-arm64e.dylib"],
)
def test_shared_dylibs_against_objdump(name: str) -> None:
    assert _check(shared_path("data", "macho", name)) > 0


def test_wheel_corpus_against_objdump() -> None:
    from wheel_corpus import macho_paths

    assert sum(_check(p) for p in macho_paths()) > 10000


def test_fuzzed_files_only_raise_format_errors() -> None:
    for path in sorted(shared_path("data", "fuzzed").iterdir()):
        try:
            image = open_macho(path)
        except MachOFormatError:
            continue
        with contextlib.suppress(MachOFormatError):
            image.function_starts  # noqa: B018 (the property does the work)
