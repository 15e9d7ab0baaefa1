"""x86_64 code references that cross segments: RIP-relative displacements and rel32 branches.

Each code section is decoded with capstone, function by function (from each LC_FUNCTION_STARTS
address to the next, the section start counting as one) and around the LC_DATA_IN_CODE ranges.
Instructions are decoded without operand details, which is several times faster: a RIP-relative
operand shows as ``rip`` in the operand text, and the offset of its 32-bit displacement is found
in the instruction's bytes (only an immediate can follow it), or by decoding that one
instruction again with details. Every RIP-relative operand and every rel32 CALL/JMP/Jcc whose
target lies in another segment gets a DELTA_32 entry at its 32-bit field: the builder adds to it
how much the target's segment moved relative to the code's.

Jump tables sit in __text on x86_64. Linkers record them as data in code, but not every dylib
has that information; a table is then recognized by LLVM's dispatch sequence (``lea T(%rip),
%rX; movslq (%rX,%rY,4), %rZ; add %rX, %rZ; jmp *%rZ``) and its length by the range check before
it (``cmp $n, %rY`` with ``ja``/``jae``); decoding skips it, and every entry must then land on an
instruction of the function. The same sequence with T outside the code is a relative lookup
table (``relative_tables`` checks those).

A byte sequence capstone cannot decode inside a function makes the image ineligible (a guess at
its length could hide a reference), except a run of zero bytes that ends the region (padding).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import SplitSegSynthesisError
from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .code_sections import CodeRegion, code_regions
from .image_map import ImageMap

_I64 = np.int64
_RIP = re.compile(r"\[rip(?: ([+-]) (0x[0-9a-f]+|\d+))?\]")
#: ``movsxd r, dword ptr [base + index*4]``: an entry load of a 32-bit relative table
_TABLE_LOAD = re.compile(r"^(\w+), dword ptr \[(\w+) \+ (\w+)\*4\]$")
#: how many instructions before an indirect jump its dispatch sequence may start
_DISPATCH_WINDOW = 12
#: rel32 branches: E8 call, E9 jmp, 0F 8x jcc
_BRANCH_MNEMONICS = frozenset(
    {"call", "jmp"}
    | {
        f"j{c}"
        for c in ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
    }
)
_Insn = tuple[int, int, str, str]  # address, size, mnemonic, operands


@lru_cache(maxsize=1)
def _decoders() -> tuple[object, object]:
    try:
        import capstone
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise SplitSegSynthesisError("", None, None, f"capstone is required for x86_64: {exc}") from None
    lite = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    full = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    full.detail = True
    return lite, full


def _register(name: str) -> str:
    """The 64-bit register a register name is part of (``eax`` -> ``rax``, ``r8d`` -> ``r8``)."""
    name = name.strip()
    if name.startswith("r") and name[1:2].isdigit():
        return name.rstrip("dwb")
    if len(name) == 3 and name[0] in "re" and name[1:] in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp"):
        return "r" + name[1:]
    return name


def _pieces(region: CodeRegion) -> list[tuple[int, int]]:
    """(start, end) VM ranges to decode: functions minus data in code."""
    sect = region.section
    end = sect.addr + sect.size
    bounds = [int(b) for b in region.starts] + [end]
    cuts = sorted(region.data_in_code)
    out = []
    for a, b in itertools.pairwise(bounds):
        pos = a
        for d0, d1 in cuts:
            if d1 <= pos or d0 >= b:
                continue
            if d0 > pos:
                out.append((pos, d0))
            pos = max(pos, d1)
        if pos < b:
            out.append((pos, b))
    return out


def _dispatch(insns: list[_Insn]) -> tuple[int, str, int] | None:
    """(table address T, index register, position of the LEA) of an LLVM jump-table dispatch
    ending with ``insns[-1]`` (``jmp reg``), or None."""
    jump_reg = _register(insns[-1][3])
    added = loaded = None
    for k in range(len(insns) - 2, max(-1, len(insns) - 1 - _DISPATCH_WINDOW), -1):
        _, _, mnemonic, op_str = insns[k]
        if added is None:
            if mnemonic == "add":
                regs = [_register(r) for r in op_str.split(",")]
                if len(regs) == 2 and regs[0] == jump_reg:
                    added = regs[1]
            continue
        if loaded is None:
            m = _TABLE_LOAD.match(op_str) if mnemonic == "movsxd" else None
            if m is not None and _register(m.group(1)) == jump_reg and _register(m.group(2)) == added:
                loaded = _register(m.group(3))
            continue
        if mnemonic == "lea" and _register(op_str.split(",", 1)[0]) == added and (m := _RIP.search(op_str)):
            address, size = insns[k][0], insns[k][1]
            disp = int(m.group(2), 0) if m.group(2) else 0
            return address + size + (-disp if m.group(1) == "-" else disp), loaded, k
    return None


#: a stack slot operand, which unoptimized code moves the index through
_STACK_SLOT = re.compile(r"^\w+ ptr (\[r[bs]p(?: [+-] 0x[0-9a-f]+)?\])$")
#: instructions that write no operand
_NO_WRITE = frozenset({"test", "cmp", "push", "nop", "bt"})


def _location(operand: str) -> str | None:
    """A register (64-bit name) or a stack slot (``[rbp - 0x98]``); None for anything else."""
    operand = operand.strip()
    if (m := _STACK_SLOT.match(operand)) is not None:
        return m.group(1)
    if "ptr" in operand or "[" in operand or operand[:1].isdigit() or operand.startswith("-"):
        return None
    return _register(operand)


def _range_check(insns: list[_Insn], before: int, index: str) -> int | None:
    """Entry count from the range check before ``insns[before]``: ``cmp`` or ``sub`` of the
    index with n, then ``ja`` (n + 1 entries) or ``jae`` (n).

    Registers and stack slots that hold the same value are followed forward through copies
    (unoptimized code spills the index and reloads it); a write ends a location's equality."""
    classes: dict[str, int] = {}
    bounds: dict[int, int] = {}
    fresh = iter(range(1 << 30))
    compared: tuple[int, int] | None = None
    for k in range(max(0, before - 2 * _DISPATCH_WINDOW), before):
        _, _, mnemonic, op_str = insns[k]
        ops = [o.strip() for o in op_str.split(",")] if op_str else []
        dest = _location(ops[0]) if ops else None
        if mnemonic in ("cmp", "sub") and len(ops) == 2 and dest is not None:
            try:
                n = int(ops[1], 0)
            except ValueError:
                n = -1
            compared = (classes.setdefault(dest, next(fresh)), n) if n >= 0 else None
            if mnemonic == "sub":
                classes[dest] = next(fresh)
            continue
        if mnemonic in ("ja", "jae"):
            if compared is not None:
                bounds[compared[0]] = compared[1] + 1 if mnemonic == "ja" else compared[1]
            compared = None
            continue
        if mnemonic.startswith("j"):
            continue
        if mnemonic in ("call", "ret"):
            classes.clear()
            bounds.clear()
            continue
        if mnemonic == "mov" and len(ops) == 2 and dest is not None:
            source = _location(ops[1])
            classes[dest] = classes.setdefault(source, next(fresh)) if source is not None else next(fresh)
            continue
        if dest is not None and mnemonic not in _NO_WRITE:
            classes[dest] = next(fresh)
    if index not in classes:
        return None
    return bounds.get(classes[index])


@dataclass(slots=True)
class _Piece:
    """What decoding one function piece found."""

    insns: list[_Insn] = field(default_factory=list)
    #: inline jump tables: (start, entry count)
    tables: list[tuple[int, int]] = field(default_factory=list)


def _decode(lite: object, content: bytes, base: int, start: int, end: int, imap: ImageMap) -> _Piece:
    """Decode [start, end) of the section at ``base``, skipping inline jump tables."""
    piece = _Piece()
    insns = piece.insns
    pending: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        if pending and pending[0][0] == pos:
            table, count = pending.pop(0)
            pos = table + 4 * count
            continue
        limit = pending[0][0] if pending else end
        for insn in lite.disasm_lite(content[pos - base : limit - base], pos):  # type: ignore[attr-defined]
            insns.append(insn)
            pos = insn[0] + insn[1]
            if insn[2] != "jmp" or insn[3].startswith(("0x", "qword")):
                continue
            found = _dispatch(insns)
            if found is None:
                continue
            table, index, at = found
            if not pos <= table < end:
                continue  # a table outside the code: not ours to skip
            bound = _range_check(insns, at, index)
            if bound is None or bound <= 0 or table + 4 * bound > end:
                raise imap.error(table, "jump table without data-in-code information or range check")
            pending.append((table, bound))
            pending.sort()
            piece.tables.append((table, bound))
            if table < limit:
                break
        else:
            if pos < limit:
                if any(content[pos - base : limit - base]):
                    raise imap.error(pos, "capstone cannot decode this instruction")
                pos = limit
        if pending and pos > pending[0][0]:
            raise imap.error(pending[0][0], "an instruction runs into a jump table")
    return piece


def scan_x86_64(image: MachOFile, imap: ImageMap) -> tuple[np.ndarray, np.ndarray, int]:
    """(DELTA_32 entries, relative tables the code uses, instructions decoded)."""
    lite, full = _decoders()
    from_addrs: list[int] = []
    to_addrs: list[int] = []
    relative_tables: list[int] = []
    count = 0
    for region in code_regions(image, imap):
        sect = region.section
        content = region.content
        for start, end in _pieces(region):
            piece = _decode(lite, content, sect.addr, start, end, imap)
            insns = piece.insns
            count += len(insns)
            starts = None
            for k, (address, size, mnemonic, op_str) in enumerate(insns):
                if "rip" in op_str:
                    m = _RIP.search(op_str)
                    if m is None:
                        raise imap.error(
                            address, f"cannot read the RIP-relative operand of '{mnemonic} {op_str}'"
                        )
                    disp = int(m.group(2), 0) if m.group(2) else 0
                    disp = -disp if m.group(1) == "-" else disp
                    from_addrs.append(
                        address + _disp_offset(full, content, sect.addr, address, size, disp, imap)
                    )
                    to_addrs.append(address + size + disp)
                elif size >= 5 and mnemonic in _BRANCH_MNEMONICS and op_str.startswith("0x"):
                    from_addrs.append(address + size - 4)
                    to_addrs.append(int(op_str, 16))
                elif mnemonic == "add" and k >= 2:
                    # a relative lookup table: the dispatch sequence, ending in use, not a jump
                    window = insns[max(0, k - _DISPATCH_WINDOW) : k + 1]
                    found = _dispatch([*window, (0, 0, "jmp", op_str.split(",", 1)[0])])
                    if found is not None and not start <= found[0] < end:
                        relative_tables.append(found[0])
            for table, n in piece.tables:
                if starts is None:
                    starts = {a for a, _, _, _ in insns}
                entries = np.frombuffer(content, dtype="<i4", count=n, offset=table - sect.addr)
                bad = [int(table + e) for e in entries.tolist() if table + e not in starts]
                if bad:
                    raise imap.error(table, f"jump table entry reaches {bad[0]:#x}, not an instruction")
    tables = np.unique(np.array(relative_tables, dtype=_I64))
    if not from_addrs:
        return np.zeros(0, dtype=SPLIT_SEG_DTYPE), tables, count
    entries = imap.entries(
        C.DYLD_CACHE_ADJ_V2_DELTA_32,
        np.array(from_addrs, dtype=_I64),
        np.array(to_addrs, dtype=_I64),
        what="RIP-relative reference",
    )
    return entries, tables, count


def _disp_offset(
    full: object, content: bytes, base: int, address: int, size: int, disp: int, imap: ImageMap
) -> int:
    """Offset of the 32-bit displacement inside the instruction at ``address``.

    Only an immediate (0, 1, 2 or 4 bytes) can follow it, so when exactly one of those four
    places holds the displacement's value, that is where it is; otherwise capstone is asked
    again, with operand details.
    """
    raw = content[address - base : address - base + size]
    want = (disp & 0xFFFFFFFF).to_bytes(4, "little")
    places = [p for p in (size - 4, size - 5, size - 6, size - 8) if p > 0 and raw[p : p + 4] == want]
    if len(places) == 1:
        return places[0]
    insn = next(full.disasm(raw, address, 1), None)  # type: ignore[attr-defined]
    offset = getattr(insn, "disp_offset", 0) if insn is not None else 0
    if not offset or offset + 4 > size:
        raise imap.error(address, "cannot locate the displacement of a RIP-relative operand")
    return int(offset)
