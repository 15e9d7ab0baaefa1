"""LC_FUNCTION_STARTS data: the start address of every function, as ULEB128 deltas.

Format (``<mach-o/loader.h>``, linkedit_data_command): a run of ULEB128 deltas; the first is
from the mach header's VM address, each next one from the previous function start. A zero delta
ends the list (ld64 writes one, then zero-pads the blob to 8 bytes); so does the end of the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import MachOFormatError
from .leb128 import uleb_decode_all, uleb_encode_array

_MAX_LEB_BYTES = 10


def read_function_starts(
    data: bytes | memoryview, base_address: int, path: str, base_offset: int
) -> np.ndarray:
    """Function start VM addresses (uint64, ascending). ``base_offset`` = file offset of ``data[0]``."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.uint64)

    def error(pos: int, message: str) -> MachOFormatError:
        return MachOFormatError(path, base_offset + pos, f"function starts: {message}")

    # A byte below 0x80 ends a ULEB, so the byte after it starts one. The first 0x00 byte that
    # starts a ULEB is the terminator; only what precedes it is decoded (padding or junk after
    # it is not our business, as for dyld).
    zeros = np.flatnonzero(raw == 0)
    if zeros.size:
        starts_uleb = np.ones(zeros.size, dtype=bool)
        inner = zeros > 0
        starts_uleb[inner] = raw[zeros[inner] - 1] < 0x80
        terminators = zeros[starts_uleb]
        stop = int(terminators[0]) if terminators.size else raw.size
    else:
        stop = raw.size
    body = raw[:stop]
    ends = np.flatnonzero(body < 0x80)
    if body.size and (ends.size == 0 or ends[-1] != body.size - 1):
        # an unfinished ULEB at the end of the data, or right before the terminator's 0x00 (then
        # the 0x00 belongs to it and there is no terminator)
        first_open = int(ends[-1]) + 1 if ends.size else 0
        raise error(first_open, "ULEB128 runs past the end of the data")
    if ends.size == 0:
        return np.zeros(0, dtype=np.uint64)
    begins = np.empty_like(ends)
    begins[0] = 0
    begins[1:] = ends[:-1] + 1
    lengths = ends - begins + 1
    too_long = np.flatnonzero(lengths > _MAX_LEB_BYTES)
    if too_long.size:
        raise error(int(begins[too_long[0]]), "ULEB128 is too long")
    last_bits = body[ends].astype(np.uint64)
    # a 10-byte ULEB holds 64 bits only if its last byte is 0 or 1
    overflow = np.flatnonzero((lengths == _MAX_LEB_BYTES) & (last_bits > 1))
    if overflow.size:
        raise error(int(begins[overflow[0]]), "ULEB128 does not fit in 64 bits")
    # the checks above (kept here for their exact error offsets) leave nothing for it to reject
    deltas = uleb_decode_all(body.data)
    # a non-canonical zero (0x80 ... 0x00) is a zero delta too: the list stops there
    zero = np.flatnonzero(deltas == 0)
    if zero.size:
        deltas = deltas[: zero[0]]
        begins = begins[: zero[0]]
    if deltas.size == 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        addresses = np.cumsum(deltas, dtype=np.uint64) + np.uint64(base_address)
    # every delta is non-zero and below 2**64, so a wrap shows as a step that does not go up
    wrapped = np.flatnonzero(addresses[1:] <= addresses[:-1])
    if wrapped.size:
        raise error(int(begins[wrapped[0] + 1]), "function start address overflows 64 bits")
    if int(addresses[0]) <= base_address:
        raise error(0, "function start address overflows 64 bits")
    return addresses


def write_function_starts(addresses: Sequence[int] | np.ndarray, base_address: int) -> bytes:
    """Encode function starts: sorted and unique, ULEB deltas, a 0 terminator, zero-padded to 8.

    ValueError if an address is not above ``base_address`` (a zero first delta would end the list).
    """
    addrs = np.unique(np.asarray(addresses, dtype=np.uint64))
    if addrs.size and int(addrs[0]) <= base_address:
        raise ValueError(
            f"function start {int(addrs[0]):#x} is not above the mach header ({base_address:#x})"
        )
    deltas = np.diff(addrs, prepend=np.uint64(base_address))
    body = uleb_encode_array(deltas).tobytes() + b"\0"
    return body + bytes(-len(body) % 8)
