"""The rebase opcodes of LC_DYLD_INFO(_ONLY): which locations dyld must slide.

Format (``<mach-o/loader.h>``, REBASE_OPCODE_*): a byte stream run by a tiny state machine with
(type, segment index, offset in segment). Each opcode byte is an opcode in the high nibble and an
immediate in the low nibble, possibly followed by ULEB128 operands::

    0x00 DONE
    0x1t SET_TYPE_IMM t                       (1 pointer, 2 text absolute32, 3 text pcrel32)
    0x2s SET_SEGMENT_AND_OFFSET_ULEB s, off
    0x30 ADD_ADDR_ULEB delta                  offset += delta (mod 2**64)
    0x4n ADD_ADDR_IMM_SCALED n                offset += n * pointer size
    0x5n DO_REBASE_IMM_TIMES n                n times: rebase, offset += pointer size
    0x60 DO_REBASE_ULEB_TIMES count           likewise with a ULEB count
    0x70 DO_REBASE_ADD_ADDR_ULEB delta        rebase, offset += delta + pointer size
    0x80 DO_REBASE_ULEB_TIMES_SKIPPING_ULEB count, skip
                                              count times: rebase, offset += skip + pointer size
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from . import constants as C
from .fixups import FIXUP_DTYPE, FIXUP_FLAG_32BIT, FixupKind, empty_fixups
from .image import MachOImage
from .leb128 import Cursor, uleb_encode

_U64 = 1 << 64
#: bytes a location of each type occupies (pointer size for REBASE_TYPE_POINTER)
_TYPE_SIZE = {C.REBASE_TYPE_TEXT_ABSOLUTE32: 4, C.REBASE_TYPE_TEXT_PCREL32: 4}
#: smallest location size: a stream can never have more entries than segment bytes / this
_MIN_SLOT = 4


def default_max_entries(segments: Sequence[tuple[int, int]]) -> int:
    """How many fixups the segments can hold at most: one per 4-byte slot."""
    return sum(max(0, size) for _, size in segments) // _MIN_SLOT


class RunError(ValueError):
    """A run of locations that leaves its segment (``outside`` = the offset) or the budget (None)."""

    def __init__(self, outside: int | None) -> None:
        super().__init__("outside the segment" if outside is not None else "over the budget")
        self.outside = outside


def run_locations(
    offset: int, count: int, stride: int, size: int, seg_size: int, room: int
) -> range | list[int]:
    """Offsets of ``count`` locations from ``offset``, ``stride`` bytes apart modulo 2**64, as
    dyld computes them; RunError if one is outside the segment or there are more than ``room``.

    Checked before anything is generated when the run does not wrap (the usual case, O(1)), so
    a forged count costs nothing; a wrapping run (ld64 writes one for duplicate locations) is
    generated only once the count is known to fit the budget.
    """
    stride %= _U64
    last = offset + (count - 1) * stride
    if last < _U64:
        if last + size > seg_size:
            raise RunError(last)
        if count > room:
            raise RunError(None)
        return range(offset, last + 1, stride) if stride else [offset] * count
    if count > room:
        raise RunError(None)
    out = [(offset + k * stride) % _U64 for k in range(count)]
    bad = next((o for o in out if o + size > seg_size), None)
    if bad is not None:
        raise RunError(bad)
    return out


def decode_rebase_opcodes(
    data: bytes | memoryview,
    segments: Sequence[tuple[int, int]],
    path: str,
    base_offset: int,
    pointer_size: int = 8,
    *,
    max_entries: int | None = None,
) -> list[tuple[int, int, int]]:
    """Run a rebase opcode stream; returns (segment index, offset in segment, type) per location.

    ``segments`` gives (vmaddr, vmsize) per segment index; ``base_offset`` is the file offset of
    ``data[0]`` for error messages. Every location must lie inside its segment, and the stream
    may not produce more than ``max_entries`` locations (default: one per 4 bytes of segment),
    so that a forged repeat count fails fast instead of running for hours. The stream ends at
    DONE or at the end of the data.
    """
    cur = Cursor(data, path, base_offset, "rebase opcodes")
    budget = default_max_entries(segments) if max_entries is None else max_entries
    out: list[tuple[int, int, int]] = []
    rtype = 0
    seg = -1
    seg_size = 0
    offset = 0

    def run(count: int, stride: int, at: int) -> None:
        """``count`` rebases from ``offset``, ``stride`` bytes apart; checked before any is made."""
        nonlocal offset
        if count == 0:
            return
        if seg < 0:
            raise cur.error("rebase before SET_SEGMENT_AND_OFFSET_ULEB", at)
        size = _TYPE_SIZE.get(rtype, pointer_size)
        if rtype not in (C.REBASE_TYPE_POINTER, C.REBASE_TYPE_TEXT_ABSOLUTE32, C.REBASE_TYPE_TEXT_PCREL32):
            raise cur.error(f"rebase of unknown type {rtype}", at)
        try:
            where = run_locations(offset, count, stride, size, seg_size, budget - len(out))
        except RunError as exc:
            if exc.outside is None:
                raise cur.error(f"more than {budget} rebases (repeat count {count})", at) from None
            raise cur.error(
                f"rebase at offset {exc.outside:#x} is outside segment {seg} (size {seg_size:#x})", at
            ) from None
        if count == 1:
            out.append((seg, offset, rtype))
        else:
            out.extend([(seg, o, rtype) for o in where])
        offset = (offset + count * stride) % _U64

    while not cur.at_end():
        at = cur.pos
        byte = cur.u8()
        op = byte & C.REBASE_OPCODE_MASK
        imm = byte & C.REBASE_IMMEDIATE_MASK
        if op == C.REBASE_OPCODE_DONE:
            break
        if op == C.REBASE_OPCODE_SET_TYPE_IMM:
            rtype = imm
        elif op == C.REBASE_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB:
            if imm >= len(segments):
                raise cur.error(f"segment index {imm} out of range ({len(segments)} segments)", at)
            seg, seg_size = imm, segments[imm][1]
            offset = cur.uleb() % _U64
        elif op == C.REBASE_OPCODE_ADD_ADDR_ULEB:
            offset = (offset + cur.uleb()) % _U64
        elif op == C.REBASE_OPCODE_ADD_ADDR_IMM_SCALED:
            offset = (offset + imm * pointer_size) % _U64
        elif op == C.REBASE_OPCODE_DO_REBASE_IMM_TIMES:
            run(imm, pointer_size, at)
        elif op == C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES:
            run(cur.uleb(), pointer_size, at)
        elif op == C.REBASE_OPCODE_DO_REBASE_ADD_ADDR_ULEB:
            delta = cur.uleb()
            run(1, pointer_size, at)
            offset = (offset + delta) % _U64
        elif op == C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES_SKIPPING_ULEB:
            count = cur.uleb()
            skip = cur.uleb()
            run(count, skip + pointer_size, at)
        else:
            raise cur.error(f"unknown rebase opcode {byte:#04x}", at)
    return out


def read_rebases(image: MachOImage) -> np.ndarray:
    """The rebases of an image's LC_DYLD_INFO as FIXUP_DTYPE records (kind REBASE), in stream order.

    ``target``/``high8`` come from the pointer stored at each location in the image's file bytes.
    """
    di = image.dyld_info_command
    if di is None or di.rebase_size == 0:
        return empty_fixups()
    raw = image.linkedit[di.rebase_off : di.rebase_off + di.rebase_size]
    base_offset = di.rebase_off + image.file_offset
    segments = [(s.vmaddr, s.vmsize) for s in image.segments]
    # every location must hold file bytes (we read the pointer there), so the file size bounds
    # how many distinct 4-byte slots a valid stream can name
    budget = min(default_max_entries(segments), len(image.data) // _MIN_SLOT)
    entries = decode_rebase_opcodes(raw, segments, image.path, base_offset, 8, max_entries=budget)
    records = empty_fixups(len(entries))
    if not entries:
        return records
    arr = np.array(entries, dtype=np.uint64).reshape(-1, 3)
    seg = arr[:, 0].astype(np.intp)
    off = arr[:, 1]
    rtype = arr[:, 2]
    if np.any(rtype == C.REBASE_TYPE_TEXT_PCREL32):
        raise image.error(
            di.rebase_off, "rebase opcodes: REBASE_TYPE_TEXT_PCREL32 is not valid in a 64-bit image"
        )
    is32 = rtype == C.REBASE_TYPE_TEXT_ABSOLUTE32
    size = np.where(is32, np.uint64(4), np.uint64(8))
    vmaddr = np.array([s.vmaddr for s in image.segments], dtype=np.uint64)
    fileoff = np.array([s.fileoff for s in image.segments], dtype=np.uint64)
    filesize = np.array([s.filesize for s in image.segments], dtype=np.uint64)
    address = vmaddr[seg] + off
    no_bytes = np.flatnonzero(off + size > filesize[seg])
    if no_bytes.size:
        k = int(no_bytes[0])
        raise image.error(
            di.rebase_off, f"rebase opcodes: rebase at {int(address[k]):#x} has no file content"
        )
    where = fileoff[seg] + off
    past = np.flatnonzero(where + size > np.uint64(len(image.data)))
    if past.size:
        k = int(past[0])
        raise image.error(
            di.rebase_off, f"rebase opcodes: rebase at {int(address[k]):#x} is past the end of the file"
        )
    raw_bytes = np.frombuffer(image.data, dtype=np.uint8)
    values = np.zeros(len(entries), dtype=np.uint64)
    for width, mask in ((8, ~is32), (4, is32)):
        if not mask.any():
            continue
        idx = where[mask].astype(np.intp)[:, None] + np.arange(width, dtype=np.intp)
        values[mask] = raw_bytes[idx].copy().view(f"<u{width}").ravel().astype(np.uint64)
    del raw_bytes
    records["address"] = address
    records["segment"] = seg
    records["kind"] = FixupKind.REBASE
    records["target"] = np.where(is32, values, values & np.uint64(0x00FF_FFFF_FFFF_FFFF))
    records["high8"] = np.where(is32, np.uint64(0), values >> np.uint64(56)).astype(np.uint8)
    records["flags"] = np.where(is32, FIXUP_FLAG_32BIT, 0).astype(np.uint8)
    assert records.dtype == FIXUP_DTYPE
    return records


# -- encoder ----------------------------------------------------------------------------------------

# the encoder's intermediate ops: (opcode, operand1, operand2); ADD/DO_* use the ULEB forms
# until the last pass picks immediate forms
_Op = tuple[int, int, int]


def encode_rebase_opcodes(entries: Iterable[tuple[int, int, int]], pointer_size: int = 8) -> bytes:
    """Encode (segment index, offset in segment, type) rebases the way ld64 does; ``b""`` if none.

    Sorted by (type, segment, offset), then compressed in ld64's passes: runs of adjacent pointers
    become one DO_REBASE_*_TIMES, a rebase followed by a gap becomes DO_REBASE_ADD_ADDR_ULEB,
    three or more equal gaps become DO_REBASE_ULEB_TIMES_SKIPPING_ULEB, and small operands use
    immediate forms. Ends with DONE bytes (0) up to a multiple of ``pointer_size``: as in ld64's
    output, there are none when the opcodes already end on that boundary.
    """
    items = sorted((_check(e) for e in entries), key=lambda e: (e[2], e[0], e[1]))
    if not items:
        return b""
    ptr = pointer_size
    ops: list[_Op] = []
    cur_type = 0
    cur_seg = -1
    cur_off = 0
    for seg, off, rtype in items:
        if rtype != cur_type:
            ops.append((C.REBASE_OPCODE_SET_TYPE_IMM, rtype, 0))
            cur_type = rtype
        if seg != cur_seg:
            ops.append((C.REBASE_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB, seg, off))
            cur_seg = seg
        elif off != cur_off:
            # like ld64, a step back inside the segment (after a type change) is an ADD of the
            # wrapped difference
            ops.append((C.REBASE_OPCODE_ADD_ADDR_ULEB, (off - cur_off) % _U64, 0))
        ops.append((C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES, 1, 0))
        cur_off = (off + ptr) % _U64

    # pass 1: adjacent pointers (DO with nothing in between) become one counted DO
    merged: list[_Op] = []
    for op in ops:
        if op[0] == C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES and merged and merged[-1][0] == op[0]:
            merged[-1] = (op[0], merged[-1][1] + op[1], 0)
        else:
            merged.append(op)
    # pass 2: a single DO followed by an ADD becomes DO_REBASE_ADD_ADDR_ULEB
    paired: list[_Op] = []
    i = 0
    while i < len(merged):
        op = merged[i]
        if (
            op == (C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES, 1, 0)
            and i + 1 < len(merged)
            and merged[i + 1][0] == C.REBASE_OPCODE_ADD_ADDR_ULEB
        ):
            paired.append((C.REBASE_OPCODE_DO_REBASE_ADD_ADDR_ULEB, merged[i + 1][1], 0))
            i += 2
        else:
            paired.append(op)
            i += 1
    # pass 3: three or more DO_REBASE_ADD_ADDR_ULEB with the same gap become one SKIPPING op
    runs: list[_Op] = []
    i = 0
    while i < len(paired):
        op = paired[i]
        j = i
        if op[0] == C.REBASE_OPCODE_DO_REBASE_ADD_ADDR_ULEB:
            while j + 1 < len(paired) and paired[j + 1] == op:
                j += 1
        if j - i + 1 >= 3:
            runs.append((C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES_SKIPPING_ULEB, j - i + 1, op[1]))
        else:
            runs.extend(paired[i : j + 1])
        i = j + 1

    # pass 4: immediate forms where the operand fits (ld64 stops at 14, not 15)
    out = bytearray()
    for opcode, a, b in runs:
        if opcode == C.REBASE_OPCODE_ADD_ADDR_ULEB and a < 15 * ptr and a % ptr == 0:
            out.append(C.REBASE_OPCODE_ADD_ADDR_IMM_SCALED | (a // ptr))
        elif opcode == C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES and a < 15:
            out.append(C.REBASE_OPCODE_DO_REBASE_IMM_TIMES | a)
        elif opcode == C.REBASE_OPCODE_SET_TYPE_IMM:
            out.append(opcode | a)
        elif opcode == C.REBASE_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB:
            out.append(opcode | a)
            out += uleb_encode(b)
        elif opcode == C.REBASE_OPCODE_DO_REBASE_ULEB_TIMES_SKIPPING_ULEB:
            out.append(opcode)
            out += uleb_encode(a)
            out += uleb_encode(b)
        else:
            out.append(opcode)
            out += uleb_encode(a)
    # ld64 ends the stream by padding it with DONE (0) bytes to the pointer size, so a stream
    # whose opcodes already end on that boundary has no DONE at all (dyld stops at the end)
    out += bytes(-len(out) % ptr)
    return bytes(out)


def _check(entry: tuple[int, int, int]) -> tuple[int, int, int]:
    seg, off, rtype = (int(x) for x in entry)
    if not 0 <= seg <= 15:
        raise ValueError(f"rebase segment index {seg} does not fit the 4-bit immediate")
    if not 0 <= off < _U64:
        raise ValueError(f"rebase offset {off:#x} out of range")
    if rtype not in (C.REBASE_TYPE_POINTER, C.REBASE_TYPE_TEXT_ABSOLUTE32, C.REBASE_TYPE_TEXT_PCREL32):
        raise ValueError(f"unknown rebase type {rtype}")
    return seg, off, rtype
