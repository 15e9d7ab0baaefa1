"""x86_64 tables of 32-bit offsets relative to their own address, found from the code that reads
them: jump tables and relative lookup tables.

Clang and GCC compile a dense ``switch`` on x86_64 Darwin into a table whose entries are
``case label - table`` and this dispatch (the registers vary; the range check may come before
the ``lea`` or after it, and unoptimized code moves the index through a stack slot)::

    lea     T(%rip), %B             ; the table
    cmp     $n-1, %I                ; or sub $n-1, %I; then ja (or cmp $n, %I; jae)
    ja      default
    movslq  (%B,%I,4), %E           ; an entry
    add     %B, %E                  ; T + entry (or: add %E, %B and jump through %B)
    jmp     *%E

GMP's hand-written assembly uses the same sequence with a signed check (``jge``/``jg``: the
index is never negative there). Clang also turns a switch that returns addresses of constants
into a *relative lookup table* in __TEXT,__const: the same load and add, with the sum used as a
data address instead of a jump target (``relative_tables`` guards those).

The entry count comes only from a range check, never from the table's bytes. It is found by
following values forward through the straight-line code before the load (``before``): each
register and stack slot holds a value class, copies share it, any other write makes a new one,
and a compare with an immediate followed by an unsigned or signed upper-bound branch bounds
the class. The table's address comes from the last ``lea`` of the base register in that code.
Neither is trusted on its own: ``x86_64_flow`` refuses the image unless every entry lands on an
instruction, the table overlaps no instruction, and nothing but padding is left unexplained.
"""

from __future__ import annotations

from dataclasses import dataclass

from iced_x86 import (
    FlowControl,
    Instruction,
    InstructionInfoFactory,
    MemorySizeExt,
    Mnemonic,
    OpAccess,
    OpKind,
    Register,
    RegisterExt,
)

#: the widest table a range check may describe (a check against a larger constant is no bound)
MAX_ENTRIES = 1 << 16
#: the largest displacement of a table load (GMP's ``movslq 0x24(%r8,%rsi,4)``)
MAX_DISPLACEMENT = 0x100

_IMMEDIATES = frozenset(
    {
        OpKind.IMMEDIATE8,
        OpKind.IMMEDIATE16,
        OpKind.IMMEDIATE32,
        OpKind.IMMEDIATE8TO16,
        OpKind.IMMEDIATE8TO32,
        OpKind.IMMEDIATE8TO64,
        OpKind.IMMEDIATE32TO64,
    }
)
_WRITES = frozenset({OpAccess.WRITE, OpAccess.COND_WRITE, OpAccess.READ_WRITE, OpAccess.READ_COND_WRITE})
#: upper-bound branches after ``cmp x, k``: entries = k + this (ja: x <= k; jae: x < k)
_BOUND_BRANCHES = {Mnemonic.JA: 1, Mnemonic.JAE: 0, Mnemonic.JG: 1, Mnemonic.JGE: 0}
#: the same when the path to the load takes the branch (``cmp x, k; jbe load``: x <= k)
_TAKEN_BOUNDS = {Mnemonic.JBE: 1, Mnemonic.JB: 0, Mnemonic.JLE: 1, Mnemonic.JL: 0}
_SIGNED = frozenset({Mnemonic.JG, Mnemonic.JGE, Mnemonic.JLE, Mnemonic.JL})
_CMOVS = frozenset(m for name, m in vars(Mnemonic).items() if name.startswith("CMOV"))
_STACK_BASES = frozenset({Register.RBP, Register.RSP})
_CALLS = frozenset({FlowControl.CALL, FlowControl.INDIRECT_CALL})
#: registers a call may change (System V AMD64 ABI)
CALLER_SAVED = frozenset(
    int(r)
    for r in (
        Register.RAX, Register.RCX, Register.RDX, Register.RSI, Register.RDI,
        Register.R8, Register.R9, Register.R10, Register.R11,
    )
)  # fmt: skip

_info = InstructionInfoFactory()

#: a register (its full 64-bit number) or a stack slot (base register, displacement)
Location = int | tuple[int, int]


@dataclass(frozen=True, slots=True)
class TableUse:
    """A load of a 32-bit entry from a table relative to itself, and what the code knows of it."""

    #: address of the table (``lea T(%rip)``), None if no ``lea`` of the base register precedes
    table: int | None
    #: address of the ``movslq`` that reads an entry
    load: int
    #: entry count from the range check, None if none was found
    count: int | None
    #: address of the range check's compare, None with count
    check: int | None
    #: the check is signed (``jg``/``jge``: hand-written code whose index is never negative)
    signed: bool = False
    #: without a range check: the most entries the index can reach, from how it was computed
    #: (an ``and``, a shift, a byte load); the table may be shorter
    cap: int | None = None


def is_table_load(insn: Instruction) -> bool:
    """``movslq d(%B,%I,4), %E``: a 32-bit entry of a table at B, index I; the displacement d
    is 0, or (GMP's assembly, with an index that counts up to -1) a small positive number."""
    return (
        insn.mnemonic == Mnemonic.MOVSXD
        and insn.op1_kind == OpKind.MEMORY
        and insn.memory_index_scale == 4
        and 0 <= insn.memory_displacement <= MAX_DISPLACEMENT
        and insn.memory_displacement % 4 == 0
        and insn.memory_base not in (Register.NONE, Register.RIP)
        and insn.memory_index != Register.NONE
    )


def sum_register(load: Instruction, after: list[Instruction]) -> int | None:
    """The register that holds ``table + entry`` after the ``add %B, %E`` (or ``add %E, %B``,
    or ``lea (%B,%E), %R``, which keeps the flags) that follows ``load`` in ``after`` (the
    instructions after it, in order), None if no such instruction comes first."""
    base = RegisterExt.full_register(load.memory_base)
    entry = RegisterExt.full_register(load.op0_register)
    both = {base, entry}
    for insn in after:
        if (
            insn.op_count == 2
            and insn.op0_kind == OpKind.REGISTER
            and RegisterExt.is_gpr64(insn.op0_register)
        ):
            if (
                insn.mnemonic == Mnemonic.ADD
                and insn.op1_kind == OpKind.REGISTER
                and {insn.op0_register, RegisterExt.full_register(insn.op1_register)} == both
            ):
                return int(insn.op0_register)
            if (
                insn.mnemonic == Mnemonic.LEA
                and insn.memory_index_scale == 1
                and insn.memory_displacement == 0
                and {insn.memory_base, insn.memory_index} == both
            ):
                return int(insn.op0_register)
        if written_registers(insn) & both:
            return None
    return None


def table_use(before: list[Instruction], load: Instruction, taken: frozenset[int] = frozenset()) -> TableUse:
    """What ``before`` (the code leading to ``load`` on one path, in order; the path takes the
    conditional branches at ``taken`` and falls through the others) says of the table ``load``
    reads: its address and its entry count."""
    base = RegisterExt.full_register(load.memory_base)
    index = RegisterExt.full_register(load.memory_index)
    table: int | None = None
    for insn in reversed(before):
        if base in written_registers(insn):
            if insn.mnemonic == Mnemonic.LEA and insn.memory_base == Register.RIP:
                table = int(insn.memory_displacement)
            break
    if load.memory_displacement:
        # the entries before base + d, read with indexes up to -1: d / 4 of them at most
        return TableUse(table, int(load.ip), None, None, cap=load.memory_displacement // 4)
    largest, at, signed, checked = _range_check(before, index, taken)
    if largest is None or not checked:
        return TableUse(table, int(load.ip), None, None, cap=None if largest is None else largest + 1)
    return TableUse(table, int(load.ip), largest + 1, at, signed)


def written_registers(insn: Instruction) -> set[int]:
    """Full registers ``insn`` writes, explicitly or not (a call's clobbers are not listed)."""
    return {
        int(RegisterExt.full_register(u.register))
        for u in _info.info(insn).used_registers()
        if u.access in _WRITES
    }


def _location(insn: Instruction, operand: int) -> Location | None:
    """The register or stack slot operand ``operand`` of ``insn`` names, None for others."""
    kind = insn.op_kind(operand)
    if kind == OpKind.REGISTER:
        return int(RegisterExt.full_register(insn.op_register(operand)))
    if kind == OpKind.MEMORY and insn.memory_base in _STACK_BASES and insn.memory_index == Register.NONE:
        return (int(insn.memory_base), int(insn.memory_displacement))
    return None


def _range_check(
    before: list[Instruction], index: int, taken: frozenset[int]
) -> tuple[int | None, int | None, bool, bool]:
    """(largest value, address of what bounds it, whether that is a signed compare, whether it
    is a compare) of ``index`` at the end of ``before``.

    Each value class gets the largest value it can hold where the code shows one: after a
    compare with an immediate and an upper-bound branch, a zero-extending load or move of a
    byte or a word, an ``and`` with an immediate, a logical right shift of a bounded value or
    of a whole 32- or 64-bit register, the sum of a bounded value and a non-negative constant
    (``lea``), a conditional move between bounded values."""
    classes: dict[Location, int] = {}
    #: class -> (largest value, address of the instruction that bounds it, signed, a compare)
    limits: dict[int, tuple[int, int, bool, bool]] = {}
    fresh = iter(range(1, 1 << 62))
    #: the last flag-setting compare of a location with an immediate: (class, value, address)
    compared: tuple[int, int, int] | None = None

    def class_of(loc: Location) -> int:
        if loc not in classes:
            classes[loc] = next(fresh)
        return classes[loc]

    def bound(loc: Location, largest: int, at: int) -> None:
        """A new class for ``loc`` holding at most ``largest`` (no compare says so)."""
        classes[loc] = next(fresh)
        limits[classes[loc]] = (largest, at, False, False)

    for insn in before:
        mnemonic = insn.mnemonic
        at = int(insn.ip)
        branches = _TAKEN_BOUNDS if at in taken else _BOUND_BRANCHES
        if mnemonic in branches:
            if compared is not None and 0 <= compared[1] < MAX_ENTRIES:
                largest = compared[1] - 1 + branches[mnemonic]
                if largest >= 0:  # the compare nearest the load is the table's own
                    limits[compared[0]] = (largest, compared[2], mnemonic in _SIGNED, True)
            continue
        dest = _location(insn, 0) if insn.op_count else None
        if mnemonic in (Mnemonic.CMP, Mnemonic.SUB) and dest is not None and insn.op1_kind in _IMMEDIATES:
            compared = (class_of(dest), insn.immediate(1), at)
            if mnemonic == Mnemonic.SUB:
                classes[dest] = next(fresh)
            continue
        if insn.rflags_modified:
            compared = None
        if dest is not None and isinstance(dest, int):
            old = limits.get(classes[dest]) if dest in classes else None
            if mnemonic == Mnemonic.AND and insn.op1_kind in _IMMEDIATES and insn.immediate(1) >= 0:
                largest = insn.immediate(1) if old is None else min(old[0], insn.immediate(1))
                bound(dest, largest, at)
                continue
            if mnemonic == Mnemonic.SHR and insn.op1_kind in _IMMEDIATES:
                width = RegisterExt.size(insn.op0_register) * 8
                largest = ((1 << width) - 1 if old is None else old[0]) >> insn.immediate(1)
                bound(dest, largest, at)
                continue
            if (
                mnemonic == Mnemonic.LEA
                and insn.memory_index == Register.NONE
                and insn.memory_base not in (Register.NONE, Register.RIP)
                and insn.memory_displacement < MAX_ENTRIES
            ):
                held = limits.get(classes.get(int(RegisterExt.full_register(insn.memory_base)), 0))
                if held is not None:
                    bound(dest, held[0] + insn.memory_displacement, at)
                    continue
            if mnemonic in _CMOVS and insn.op1_kind == OpKind.REGISTER:
                held = limits.get(classes.get(int(RegisterExt.full_register(insn.op1_register)), 0))
                if held is not None and old is not None:
                    bound(dest, max(held[0], old[0]), at)
                    continue
            if mnemonic == Mnemonic.MOVZX:
                size = (
                    RegisterExt.size(insn.op1_register)
                    if insn.op1_kind == OpKind.REGISTER
                    else MemorySizeExt.size(insn.memory_size)
                )
                source = _location(insn, 1)
                held = limits.get(classes[source]) if source in classes else None
                if held is not None and held[0] < 1 << (8 * size):
                    classes[dest] = classes[source]  # type: ignore[index]
                else:
                    bound(dest, (1 << (8 * size)) - 1, at)
                continue
        if mnemonic == Mnemonic.MOV and dest is not None and insn.op_count == 2:
            source = _location(insn, 1)
            if source is not None:
                classes[dest] = class_of(source)
                continue
        written = written_registers(insn)
        if insn.flow_control in _CALLS:
            written |= CALLER_SAVED
        for reg in written:
            classes[reg] = next(fresh)
        if _writes_memory(insn) or Register.RSP in written:
            # a store through a pointer, or a moved stack pointer: forget the stack slots
            # (a store to a named slot is a copy above, or the slot gets a new class here)
            for loc in [k for k in classes if isinstance(k, tuple)]:
                del classes[loc]
    found = limits.get(classes[index]) if index in classes else None
    if found is None or found[0] >= MAX_ENTRIES:
        return None, None, False, False
    return found


def _writes_memory(insn: Instruction) -> bool:
    return any(m.access in _WRITES for m in _info.info(insn).used_memory())
