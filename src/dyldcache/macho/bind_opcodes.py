"""The bind, lazy-bind and weak-bind opcodes of LC_DYLD_INFO(_ONLY): which locations get which symbol.

Format (``<mach-o/loader.h>``, BIND_OPCODE_*): a byte stream run by a state machine with
(dylib ordinal, symbol name and flags, type, addend, segment index, offset in segment). Each
opcode byte is an opcode in the high nibble and an immediate in the low nibble::

    0x00 DONE                   ends the stream (lazy-bind: ends one record; the next follows)
    0x1n SET_DYLIB_ORDINAL_IMM n
    0x20 SET_DYLIB_ORDINAL_ULEB ordinal
    0x3n SET_DYLIB_SPECIAL_IMM  n sign-extended from 4 bits: 0 self, -1 main, -2 flat, -3 weak
    0x4f SET_SYMBOL_TRAILING_FLAGS_IMM f, NUL-terminated name (f: BIND_SYMBOL_FLAGS_*)
    0x5t SET_TYPE_IMM t
    0x60 SET_ADDEND_SLEB addend
    0x7s SET_SEGMENT_AND_OFFSET_ULEB s, offset
    0x80 ADD_ADDR_ULEB delta                       offset += delta (mod 2**64)
    0x90 DO_BIND                                   bind, offset += pointer size
    0xA0 DO_BIND_ADD_ADDR_ULEB delta               bind, offset += delta + pointer size
    0xBn DO_BIND_ADD_ADDR_IMM_SCALED n             bind, offset += (n + 1) * pointer size
    0xC0 DO_BIND_ULEB_TIMES_SKIPPING_ULEB count, skip
                                                   count times: bind, offset += skip + pointer size
    0xD0 THREADED                                  arm64e threaded binds (not supported here)

The weak-bind stream has no ordinals: it lists the locations that use a weak definition, by
name, so dyld can coalesce them across images. A symbol set with BIND_SYMBOL_FLAGS_NON_WEAK_DEFINITION
and never bound tells dyld that this image has a strong definition of that name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from . import constants as C
from .fixups import FIXUP_DTYPE, FIXUP_FLAG_32BIT, FIXUP_FLAG_LAZY, FixupKind, Import, WeakBind, empty_fixups
from .image import MachOImage
from .leb128 import Cursor, sleb_encode, uleb_encode
from .rebase_opcodes import RunError, default_max_entries, run_locations

_U64 = 1 << 64
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_BIND_TYPES = (C.BIND_TYPE_POINTER, C.BIND_TYPE_TEXT_ABSOLUTE32, C.BIND_TYPE_TEXT_PCREL32)


@dataclass(frozen=True, slots=True)
class BindEntry:
    """One location bound to a symbol by the bind or lazy-bind opcodes."""

    #: index of the segment holding the location
    segment: int
    #: offset of the location from the segment's vmaddr
    offset: int
    #: BIND_TYPE_*
    type: int
    #: 1-based LC_*_DYLIB index, or 0 self, -1 main executable, -2 flat lookup, -3 weak lookup
    ordinal: int
    name: str
    #: BIND_SYMBOL_FLAGS_*
    flags: int = 0
    addend: int = 0

    @property
    def is_weak_import(self) -> bool:
        return bool(self.flags & C.BIND_SYMBOL_FLAGS_WEAK_IMPORT)


def _decode_name(raw: bytes) -> str:
    # surrogateescape: a name that is not UTF-8 still encodes back to the same bytes
    return raw.decode("utf-8", "surrogateescape")


def _encode_name(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"symbol name {name!r} contains a NUL byte")
    return raw


# -- decoder ----------------------------------------------------------------------------------------

_REGULAR, _LAZY, _WEAK = 0, 1, 2
_STREAM_NAMES = {_REGULAR: "bind opcodes", _LAZY: "lazy bind opcodes", _WEAK: "weak bind opcodes"}

#: decoder output: (segment, offset, type, ordinal, name, flags, addend); segment -1 marks a
#: weak-bind strong-definition marker
_Raw = tuple[int, int, int, int, str, int, int]


def _decode(
    data: bytes | memoryview,
    segments: Sequence[tuple[int, int]],
    path: str,
    base_offset: int,
    mode: int,
    pointer_size: int,
    max_entries: int | None,
) -> list[_Raw]:
    cur = Cursor(data, path, base_offset, _STREAM_NAMES[mode])
    budget = default_max_entries(segments) if max_entries is None else max_entries
    out: list[_Raw] = []
    ordinal: int | None = None
    name: str | None = None
    flags = 0
    # a stream that never says SET_TYPE_IMM means pointers (dyld's lazy binder assumes it too)
    btype = C.BIND_TYPE_POINTER
    addend = 0
    seg = -1
    seg_size = 0
    offset = 0
    # whether the current symbol was bound: a weak-bind symbol with the NON_WEAK_DEFINITION flag
    # that never is, is a strong-definition marker
    bound_since_symbol = False

    def close_symbol() -> None:
        if (
            mode == _WEAK
            and name is not None
            and not bound_since_symbol
            and flags & C.BIND_SYMBOL_FLAGS_NON_WEAK_DEFINITION
        ):
            out.append((-1, 0, 0, 0, name, flags, 0))

    def run(count: int, stride: int, at: int) -> None:
        """``count`` binds from ``offset``, ``stride`` bytes apart; checked before any is made."""
        nonlocal offset, bound_since_symbol
        if count == 0:
            return
        if name is None:
            raise cur.error("bind before SET_SYMBOL_TRAILING_FLAGS_IMM", at)
        if ordinal is None and mode != _WEAK:
            raise cur.error("bind before any dylib ordinal was set", at)
        if seg < 0:
            raise cur.error("bind before SET_SEGMENT_AND_OFFSET_ULEB", at)
        if btype not in _BIND_TYPES:
            raise cur.error(f"bind of unknown type {btype}", at)
        size = pointer_size if btype == C.BIND_TYPE_POINTER else 4
        try:
            where = run_locations(offset, count, stride, size, seg_size, budget - len(out))
        except RunError as exc:
            if exc.outside is None:
                raise cur.error(f"more than {budget} binds (repeat count {count})", at) from None
            raise cur.error(
                f"bind at offset {exc.outside:#x} is outside segment {seg} (size {seg_size:#x})", at
            ) from None
        ord_ = 0 if ordinal is None else ordinal
        if count == 1:
            out.append((seg, offset, btype, ord_, name, flags, addend))
        else:
            out.extend([(seg, o, btype, ord_, name, flags, addend) for o in where])
        offset = (offset + count * stride) % _U64
        bound_since_symbol = True

    while not cur.at_end():
        at = cur.pos
        byte = cur.u8()
        op = byte & C.BIND_OPCODE_MASK
        imm = byte & C.BIND_IMMEDIATE_MASK
        if op == C.BIND_OPCODE_DONE:
            if mode != _LAZY:
                break
            # lazy-bind records are each closed by DONE; the state carries on (as in dyld/llvm)
        elif op == C.BIND_OPCODE_SET_DYLIB_ORDINAL_IMM:
            ordinal = imm
        elif op == C.BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB:
            ordinal = cur.uleb()
        elif op == C.BIND_OPCODE_SET_DYLIB_SPECIAL_IMM:
            # the immediate is a 4-bit two's complement number
            ordinal = imm - 16 if imm else 0
            if ordinal < C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP:
                raise cur.error(f"unknown special dylib ordinal {ordinal}", at)
        elif op == C.BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM:
            close_symbol()
            name = _decode_name(cur.cstring())
            flags = imm
            bound_since_symbol = False
        elif op == C.BIND_OPCODE_SET_TYPE_IMM:
            btype = imm
        elif op == C.BIND_OPCODE_SET_ADDEND_SLEB:
            addend = cur.sleb()
            if not _I64_MIN <= addend <= _I64_MAX:
                raise cur.error(f"addend {addend} does not fit in 64 bits", at)
        elif op == C.BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB:
            if imm >= len(segments):
                raise cur.error(f"segment index {imm} out of range ({len(segments)} segments)", at)
            seg, seg_size = imm, segments[imm][1]
            offset = cur.uleb() % _U64
        elif op == C.BIND_OPCODE_ADD_ADDR_ULEB:
            offset = (offset + cur.uleb()) % _U64
        elif op == C.BIND_OPCODE_DO_BIND:
            run(1, pointer_size, at)
        elif op == C.BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB:
            delta = cur.uleb()
            run(1, pointer_size, at)
            offset = (offset + delta) % _U64
        elif op == C.BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED:
            run(1, pointer_size, at)
            offset = (offset + imm * pointer_size) % _U64
        elif op == C.BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB:
            count = cur.uleb()
            skip = cur.uleb()
            run(count, skip + pointer_size, at)
        elif op == C.BIND_OPCODE_THREADED:
            raise cur.error("BIND_OPCODE_THREADED (arm64e threaded binds) is not supported", at)
        else:
            raise cur.error(f"unknown bind opcode {byte:#04x}", at)
    close_symbol()
    return out


def decode_bind_opcodes(
    data: bytes | memoryview,
    segments: Sequence[tuple[int, int]],
    path: str,
    base_offset: int,
    *,
    lazy: bool = False,
    pointer_size: int = 8,
    max_entries: int | None = None,
) -> list[BindEntry]:
    """Run a bind (or, with ``lazy``, a lazy-bind) opcode stream; one BindEntry per bound location.

    ``segments`` gives (vmaddr, vmsize) per segment index; ``base_offset`` is the file offset of
    ``data[0]``. Locations must lie inside their segment and the stream may produce at most
    ``max_entries`` of them (default: one per 4 bytes of segment), so a forged repeat count fails
    fast. The stream ends at DONE (lazy streams: at the end of the data) or at the end of the data.
    """
    raw = _decode(data, segments, path, base_offset, _LAZY if lazy else _REGULAR, pointer_size, max_entries)
    return [BindEntry(*r) for r in raw]


def decode_weak_bind_opcodes(
    data: bytes | memoryview,
    segments: Sequence[tuple[int, int]],
    path: str,
    base_offset: int,
    *,
    pointer_size: int = 8,
    max_entries: int | None = None,
) -> list[WeakBind]:
    """Run a weak-bind opcode stream; a strong-definition marker comes out with ``address=None``."""
    raw = _decode(data, segments, path, base_offset, _WEAK, pointer_size, max_entries)
    out: list[WeakBind] = []
    for seg, off, _btype, _ordinal, name, flags, addend in raw:
        strong = bool(flags & C.BIND_SYMBOL_FLAGS_NON_WEAK_DEFINITION)
        if seg < 0:
            out.append(WeakBind(name, None, 0, True))
        else:
            out.append(WeakBind(name, (segments[seg][0] + off) % _U64, addend, strong))
    return out


def _image_streams(image: MachOImage) -> tuple[list[tuple[int, int]], int]:
    segments = [(s.vmaddr, s.vmsize) for s in image.segments]
    # bound locations hold pointers that are in the file, so the file size also bounds how
    # many distinct 4-byte slots a valid stream can name
    budget = min(default_max_entries(segments), len(image.data) // 4)
    return segments, budget


def read_binds(image: MachOImage) -> tuple[np.ndarray, list[Import]]:
    """The bind and lazy-bind tables of an image's LC_DYLD_INFO as FIXUP_DTYPE records (kind BIND).

    ``bind`` indexes the returned imports, which are unique by (name, ordinal, weak import);
    lazy-bind records carry FIXUP_FLAG_LAZY. Records are in stream order, binds first.
    """
    di = image.dyld_info_command
    if di is None:
        return empty_fixups(), []
    segments, budget = _image_streams(image)
    vmaddr = [s.vmaddr for s in image.segments]
    imports: list[Import] = []
    index: dict[tuple[str, int, bool], int] = {}
    parts: list[np.ndarray] = []
    for off, size, lazy in ((di.bind_off, di.bind_size, False), (di.lazy_bind_off, di.lazy_bind_size, True)):
        if size == 0:
            continue
        raw = image.linkedit[off : off + size]
        mode = _LAZY if lazy else _REGULAR
        entries = _decode(raw, segments, image.path, off + image.file_offset, mode, 8, budget)
        n = len(entries)
        address = np.zeros(n, dtype=np.uint64)
        addend = np.zeros(n, dtype=np.int64)
        bind = np.zeros(n, dtype=np.int32)
        segment = np.zeros(n, dtype=np.uint16)
        flags = np.full(n, FIXUP_FLAG_LAZY if lazy else 0, dtype=np.uint8)
        for k, (seg, seg_off, btype, ordinal, name, sym_flags, add) in enumerate(entries):
            if btype == C.BIND_TYPE_TEXT_PCREL32:
                raise image.error(
                    off, f"{_STREAM_NAMES[mode]}: BIND_TYPE_TEXT_PCREL32 is not valid in a 64-bit image"
                )
            if btype == C.BIND_TYPE_TEXT_ABSOLUTE32:
                flags[k] |= FIXUP_FLAG_32BIT
            key = (name, ordinal, bool(sym_flags & C.BIND_SYMBOL_FLAGS_WEAK_IMPORT))
            i = index.get(key)
            if i is None:
                i = index[key] = len(imports)
                imports.append(Import(*key))
            address[k] = (vmaddr[seg] + seg_off) % _U64
            addend[k] = add
            bind[k] = i
            segment[k] = seg
        records = empty_fixups(n)
        records["address"] = address
        records["addend"] = addend
        records["bind"] = bind
        records["segment"] = segment
        records["kind"] = FixupKind.BIND
        records["flags"] = flags
        parts.append(records)
    if not parts:
        return empty_fixups(), imports
    records = np.concatenate(parts)
    assert records.dtype == FIXUP_DTYPE
    return records, imports


def read_weak_binds(image: MachOImage) -> list[WeakBind]:
    """The weak-bind table of an image's LC_DYLD_INFO, in stream order."""
    di = image.dyld_info_command
    if di is None or di.weak_bind_size == 0:
        return []
    segments, budget = _image_streams(image)
    raw = image.linkedit[di.weak_bind_off : di.weak_bind_off + di.weak_bind_size]
    return decode_weak_bind_opcodes(
        raw, segments, image.path, di.weak_bind_off + image.file_offset, max_entries=budget
    )


# -- encoders ---------------------------------------------------------------------------------------

# intermediate ops: (opcode, operand1, operand2, symbol name); ordinals, ADDs and DO_BIND_ADDs use
# their ULEB forms until the last pass picks immediate forms
_Op = tuple[int, int, int, bytes]


def _check_location(segment: int, offset: int, what: str) -> None:
    if not 0 <= segment <= 15:
        raise ValueError(f"{what}: segment index {segment} does not fit the 4-bit immediate")
    if not 0 <= offset < _U64:
        raise ValueError(f"{what}: offset {offset:#x} out of range")


def _check_entry(e: BindEntry) -> None:
    what = f"bind of {e.name!r}"
    _check_location(e.segment, e.offset, what)
    if e.type not in _BIND_TYPES:
        raise ValueError(f"{what}: unknown bind type {e.type}")
    if e.ordinal < C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP or e.ordinal >= _U64:
        raise ValueError(f"{what}: bad dylib ordinal {e.ordinal}")
    if not 0 <= e.flags <= 15:
        raise ValueError(f"{what}: flags {e.flags:#x} do not fit the 4-bit immediate")
    if not _I64_MIN <= e.addend <= _I64_MAX:
        raise ValueError(f"{what}: addend {e.addend} does not fit in 64 bits")


def _ordinal_op(ordinal: int) -> _Op:
    if ordinal <= 0:
        return (C.BIND_OPCODE_SET_DYLIB_SPECIAL_IMM, ordinal & C.BIND_IMMEDIATE_MASK, 0, b"")
    return (C.BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB, ordinal, 0, b"")


def _compress_and_emit(ops: list[_Op], pointer_size: int) -> bytes:
    """ld64's passes over the per-location ops, then the bytes (DONE and padding included)."""
    ptr = pointer_size
    # pass 1: DO_BIND directly followed by ADD_ADDR_ULEB becomes DO_BIND_ADD_ADDR_ULEB
    paired: list[_Op] = []
    i = 0
    while i < len(ops):
        op = ops[i]
        if (
            op[0] == C.BIND_OPCODE_DO_BIND
            and i + 1 < len(ops)
            and ops[i + 1][0] == C.BIND_OPCODE_ADD_ADDR_ULEB
        ):
            paired.append((C.BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB, ops[i + 1][1], 0, b""))
            i += 2
        else:
            paired.append(op)
            i += 1
    # pass 2: two or more DO_BIND_ADD_ADDR_ULEB with the same gap become one SKIPPING op
    runs: list[_Op] = []
    i = 0
    while i < len(paired):
        op = paired[i]
        j = i
        if op[0] == C.BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB:
            while j + 1 < len(paired) and paired[j + 1] == op:
                j += 1
        if j > i:
            runs.append((C.BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB, j - i + 1, op[1], b""))
        else:
            runs.append(op)
        i = j + 1
    # pass 3: immediate forms where the operand fits (ld64 stops scaled gaps at 14 pointers)
    out = bytearray()
    for opcode, a, b, name in runs:
        if opcode == C.BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB and a < 15 * ptr and a % ptr == 0:
            out.append(C.BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED | (a // ptr))
        elif opcode == C.BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB and a <= 15:
            out.append(C.BIND_OPCODE_SET_DYLIB_ORDINAL_IMM | a)
        elif opcode in (C.BIND_OPCODE_SET_DYLIB_SPECIAL_IMM, C.BIND_OPCODE_SET_TYPE_IMM):
            out.append(opcode | a)
        elif opcode == C.BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM:
            out.append(opcode | a)
            out += name + b"\0"
        elif opcode == C.BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB:
            out.append(opcode | a)
            out += uleb_encode(b)
        elif opcode == C.BIND_OPCODE_SET_ADDEND_SLEB:
            out.append(opcode)
            out += sleb_encode(a)
        elif opcode == C.BIND_OPCODE_DO_BIND:
            out.append(opcode)
        elif opcode == C.BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB:
            out.append(opcode)
            out += uleb_encode(a)
            out += uleb_encode(b)
        else:  # SET_DYLIB_ORDINAL_ULEB, ADD_ADDR_ULEB, DO_BIND_ADD_ADDR_ULEB
            out.append(opcode)
            out += uleb_encode(a)
    out.append(C.BIND_OPCODE_DONE)
    out += bytes(-len(out) % ptr)
    return bytes(out)


class _Position:
    """The encoder's idea of the decoder's (segment, offset), and the op that moves it."""

    __slots__ = ("offset", "segment")

    def __init__(self) -> None:
        self.segment = -1
        self.offset = 0

    def move(self, segment: int, offset: int, ops: list[_Op]) -> None:
        if segment != self.segment:
            ops.append((C.BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB, segment, offset, b""))
            self.segment = segment
        elif offset != self.offset:
            # like ld64, a step back inside the segment is an ADD of the wrapped difference
            ops.append((C.BIND_OPCODE_ADD_ADDR_ULEB, (offset - self.offset) % _U64, 0, b""))
        self.offset = offset


def encode_bind_opcodes(entries: Iterable[BindEntry], pointer_size: int = 8) -> bytes:
    """Encode binds the way ld64 does; ``b""`` if there are none.

    Sorted by (ordinal, name, flags, type, segment, offset); each state change is emitted only
    when it changes; then DO_BIND + gap becomes DO_BIND_ADD_ADDR_ULEB (or IMM_SCALED), and runs
    with equal gaps become DO_BIND_ULEB_TIMES_SKIPPING_ULEB. Ends with DONE, zero-padded to
    ``pointer_size``.
    """
    items = list(entries)
    for e in items:
        _check_entry(e)
    if not items:
        return b""
    keyed = sorted(
        (((e.ordinal, _encode_name(e.name), e.flags, e.type, e.segment, e.offset), e) for e in items),
        key=lambda pair: pair[0],
    )
    ops: list[_Op] = []
    ordinal: int | None = None
    symbol: tuple[bytes, int] | None = None
    btype = 0
    addend = 0
    pos = _Position()
    for (_, name, _, _, _, _), e in keyed:
        if e.ordinal != ordinal:
            ops.append(_ordinal_op(e.ordinal))
            ordinal = e.ordinal
        if (name, e.flags) != symbol:
            ops.append((C.BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM, e.flags, 0, name))
            symbol = (name, e.flags)
        if e.type != btype:
            ops.append((C.BIND_OPCODE_SET_TYPE_IMM, e.type, 0, b""))
            btype = e.type
        pos.move(e.segment, e.offset, ops)
        if e.addend != addend:
            ops.append((C.BIND_OPCODE_SET_ADDEND_SLEB, e.addend, 0, b""))
            addend = e.addend
        ops.append((C.BIND_OPCODE_DO_BIND, 0, 0, b""))
        pos.offset = (pos.offset + pointer_size) % _U64
    return _compress_and_emit(ops, pointer_size)


def encode_lazy_bind_opcodes(entries: Iterable[BindEntry], pointer_size: int = 8) -> tuple[bytes, list[int]]:
    """One self-contained record per entry, in the given order, each ending in DONE.

    Returns the stream (zero-padded to ``pointer_size``) and the offset of each record, which
    the entry's stub helper pushes. dyld's lazy binder knows no addends and only pointer binds,
    so those are ValueErrors.
    """
    out = bytearray()
    offsets: list[int] = []
    for e in entries:
        _check_entry(e)
        if e.addend:
            raise ValueError(f"lazy bind of {e.name!r} cannot have an addend")
        if e.type != C.BIND_TYPE_POINTER:
            raise ValueError(f"lazy bind of {e.name!r} must be a pointer bind")
        offsets.append(len(out))
        out.append(C.BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB | e.segment)
        out += uleb_encode(e.offset)
        if e.ordinal <= 0:
            out.append(C.BIND_OPCODE_SET_DYLIB_SPECIAL_IMM | (e.ordinal & C.BIND_IMMEDIATE_MASK))
        elif e.ordinal <= 15:
            out.append(C.BIND_OPCODE_SET_DYLIB_ORDINAL_IMM | e.ordinal)
        else:
            out.append(C.BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB)
            out += uleb_encode(e.ordinal)
        out.append(C.BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM | e.flags)
        out += _encode_name(e.name) + b"\0"
        out.append(C.BIND_OPCODE_DO_BIND)
        out.append(C.BIND_OPCODE_DONE)
    if out:
        out += bytes(-len(out) % pointer_size)
    return bytes(out), offsets


def encode_weak_bind_opcodes(
    entries: Iterable[WeakBind], segments: Sequence[tuple[int, int]], pointer_size: int = 8
) -> bytes:
    """Encode the weak-bind table the way ld64 does; ``b""`` if there are no entries.

    ``segments`` gives (vmaddr, vmsize) per segment index, to turn addresses into segment
    offsets. Sorted by name, strong-definition markers (``address=None``) before the locations
    of the same name, locations by address. Pointer binds only.
    """
    items = list(entries)
    if not items:
        return b""
    keyed = sorted(
        (((_encode_name(w.name), w.address is not None, w.address or 0), w) for w in items),
        key=lambda pair: pair[0],
    )
    ops: list[_Op] = []
    symbol: tuple[bytes, int] | None = None
    after_marker = False
    btype = 0
    addend = 0
    pos = _Position()
    for (name, _, _), w in keyed:
        flags = C.BIND_SYMBOL_FLAGS_NON_WEAK_DEFINITION if w.non_weak_definition else 0
        if w.address is None:
            if not w.non_weak_definition:
                raise ValueError(
                    f"weak bind of {w.name!r} has no address but is not a strong-definition marker"
                )
            ops.append((C.BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM, flags, 0, name))
            symbol = (name, flags)
            after_marker = True
            continue
        if not _I64_MIN <= w.addend <= _I64_MAX:
            raise ValueError(f"weak bind of {w.name!r}: addend {w.addend} does not fit in 64 bits")
        segment, offset = _segment_offset(w.address, segments, pointer_size, w.name)
        # a marker's symbol must not be reused by a bind, or the marker would stop being one
        if (name, flags) != symbol or after_marker:
            ops.append((C.BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM, flags, 0, name))
            symbol = (name, flags)
            after_marker = False
        if btype != C.BIND_TYPE_POINTER:
            ops.append((C.BIND_OPCODE_SET_TYPE_IMM, C.BIND_TYPE_POINTER, 0, b""))
            btype = C.BIND_TYPE_POINTER
        pos.move(segment, offset, ops)
        if w.addend != addend:
            ops.append((C.BIND_OPCODE_SET_ADDEND_SLEB, w.addend, 0, b""))
            addend = w.addend
        ops.append((C.BIND_OPCODE_DO_BIND, 0, 0, b""))
        pos.offset = (pos.offset + pointer_size) % _U64
    return _compress_and_emit(ops, pointer_size)


def _segment_offset(
    address: int, segments: Sequence[tuple[int, int]], size: int, name: str
) -> tuple[int, int]:
    for k, (vmaddr, vmsize) in enumerate(segments):
        if vmaddr <= address and address + size <= vmaddr + vmsize:
            _check_location(k, address - vmaddr, f"weak bind of {name!r}")
            return k, address - vmaddr
    raise ValueError(f"weak bind of {name!r}: address {address:#x} is in no segment")
