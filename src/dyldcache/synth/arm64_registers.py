"""Which general-purpose registers an A64 instruction reads and writes.

``gpr_effect(word)`` answers for one 32-bit instruction with two bit masks over x0..x30 (bit n
is register n; register 31 is SP or XZR, which are never tracked). It is conservative in one
direction only, which is what a sound register walk needs:

- ``writes`` is exact or smaller: a register is listed only when the instruction certainly
  overwrites all 64 bits of it (a W-register write zeroes the upper half, so it counts);
- ``reads`` is exact or larger: any encoding this module does not decode field by field lists
  every register its four register fields (bits 0-4, 5-9, 10-14, 16-20) name, and writes
  nothing. A64 encodes every general register operand in one of those four fields; the few
  instructions with implicit registers (BL/BLR write x30; PACIA1716 and friends use x16/x17;
  PACIASP and friends use x30; SVC reads the syscall registers) are listed explicitly.

Branches are decoded too (their register operands), but the walker in ``arm64_code`` handles
their control flow. Encodings follow the Arm Architecture Reference Manual (DDI 0487), section
C4.1 "A64 instruction set encoding".
"""

from __future__ import annotations

from functools import lru_cache

#: registers x0..x30 as a mask (bit 31 = SP/XZR is never tracked)
ALL = 0x7FFFFFFF


def _bit(reg: int) -> int:
    return 0 if reg == 31 else 1 << reg


def _fields(w: int) -> int:
    """Every register the four register fields of ``w`` name (the conservative read set)."""
    return _bit(w & 31) | _bit((w >> 5) & 31) | _bit((w >> 10) & 31) | _bit((w >> 16) & 31)


def _unknown(w: int) -> tuple[int, int]:
    return _fields(w), 0


# hint-space instructions with implicit registers (HINT #CRm:op2)
_HINT_1716 = {0b0001000, 0b0001010, 0b0001100, 0b0001110}  # PACIA1716 PACIB1716 AUTIA1716 AUTIB1716
_HINT_X30 = {0b0000111} | set(range(0b0011000, 0b0100000))  # XPACLRI, PACIAZ..AUTIBSP


@lru_cache(maxsize=1 << 16)
def gpr_effect(w: int) -> tuple[int, int]:
    """(reads, writes) register masks of instruction word ``w`` (see the module docstring)."""
    rd = w & 31
    rn = (w >> 5) & 31
    rm = (w >> 16) & 31
    ra = (w >> 10) & 31
    op0 = (w >> 25) & 0xF

    if op0 in (0b1000, 0b1001):  # data processing, immediate
        op1 = (w >> 23) & 7
        if op1 in (0, 1):  # ADR, ADRP
            return 0, _bit(rd)
        if op1 == 2:  # ADD/SUB (immediate); Rn may be SP, Rd is SP unless flags are set
            return _bit(rn), _bit(rd)
        if op1 == 4:  # logical (immediate)
            return _bit(rn), _bit(rd)
        if op1 == 5:  # move wide
            opc = (w >> 29) & 3
            if opc == 1:
                return _unknown(w)
            if opc == 3:  # MOVK keeps the other bits
                return _bit(rd), _bit(rd)
            return 0, _bit(rd)
        if op1 == 6:  # bitfield: BFM keeps bits of Rd
            opc = (w >> 29) & 3
            if opc == 3:
                return _unknown(w)
            return _bit(rn) | (_bit(rd) if opc == 1 else 0), _bit(rd)
        if op1 == 7:  # EXTR
            return _bit(rn) | _bit(rm), _bit(rd)
        return _unknown(w)

    if op0 in (0b1010, 0b1011):  # branches, exception generation, system
        if (w & 0x7C000000) == 0x14000000:  # B, BL
            return 0, (1 << 30) if w >> 31 else 0
        if (w & 0xFF000010) == 0x54000000:  # B.cond
            return 0, 0
        if (w & 0x7E000000) in (0x34000000, 0x36000000):  # CBZ/CBNZ, TBZ/TBNZ
            return _bit(rd), 0
        if (w & 0xFE000000) == 0xD6000000:  # branch to register
            opc = (w >> 21) & 0xF
            reads = _bit(rn)
            if opc in (8, 9):  # BRAA/BLRAA: Rm (bits 0-4) is the modifier
                reads |= _bit(rd)
            if opc in (1, 9):  # BLR*
                return reads, 1 << 30
            if opc == 2 and (w >> 11) & 1:  # RETAA/RETAB use SP and x30
                return 1 << 30, 0
            return reads, 0
        if (w & 0xFFE0001F) == 0xD4000001:  # SVC: the Darwin syscall number in x16, arguments
            return 0x1FF | (1 << 16), 0
        if (w & 0xFF000000) == 0xD4000000:  # other exception generation (BRK, HLT, HVC...)
            return 0, 0
        if (w & 0xFFC00000) == 0xD5000000:  # system
            l_bit = (w >> 21) & 1
            sys_op0 = (w >> 19) & 3
            if sys_op0 >= 2:  # MRS / MSR (register)
                return (0, _bit(rd)) if l_bit else (_bit(rd), 0)
            if sys_op0 == 1:  # SYSL / SYS
                return (0, _bit(rd)) if l_bit else (_bit(rd), 0)
            crn = (w >> 12) & 0xF
            if l_bit == 0 and crn == 2 and rd == 31:  # hints
                hint = (w >> 5) & 0x7F
                if hint in _HINT_1716:
                    return (1 << 16) | (1 << 17), 0
                if hint in _HINT_X30:
                    return 1 << 30, 0
                return 0, 0
            if l_bit == 0 and crn in (3, 4) and rd == 31:  # barriers, PSTATE
                return 0, 0
            return _unknown(w)
        return _unknown(w)

    if op0 & 0b0101 == 0b0100:  # loads and stores
        return _load_store(w)

    if op0 & 0b0111 == 0b0101:  # data processing, register
        op1 = (w >> 28) & 1
        op2 = (w >> 21) & 0xF
        if op1 == 0:
            if op2 & 0b1000 == 0:  # logical (shifted register)
                return _bit(rn) | _bit(rm), _bit(rd)
            if op2 & 0b1001 == 0b1000:  # add/sub (shifted register)
                return _bit(rn) | _bit(rm), _bit(rd)
            # add/sub (extended register): Rn may be SP, Rd is SP unless flags are set
            return _bit(rn) | _bit(rm), _bit(rd)
        if op2 == 0b0000:
            if (w >> 10) & 0x3F == 0:  # ADC/SBC
                return _bit(rn) | _bit(rm), _bit(rd)
            return _unknown(w)
        if op2 == 0b0010:  # conditional compare: register form reads Rm
            return _bit(rn) | (0 if (w >> 11) & 1 else _bit(rm)), 0
        if op2 == 0b0100:  # conditional select
            return _bit(rn) | _bit(rm), _bit(rd)
        if op2 & 0b1000:  # data processing, 3 source
            return _bit(rn) | _bit(rm) | _bit(ra), _bit(rd)
        if op2 == 0b0110:
            if (w >> 30) & 1 == 0:  # data processing, 2 source (PACGA included)
                return _bit(rn) | _bit(rm), _bit(rd)
            if rm == 0:  # data processing, 1 source: RBIT REV CLZ CLS...
                return _bit(rn), _bit(rd)
            return _unknown(w)  # PAC*/AUT*/XPAC*: read-modify-write of Rd
        return _unknown(w)

    if op0 & 0b0111 == 0b0111:  # scalar floating point and Advanced SIMD
        if (w & 0x5F20FC00) == 0x1E200000:  # conversion between FP and integer
            opcode = (w >> 16) & 7
            if opcode in (2, 3, 7):  # SCVTF, UCVTF, FMOV to FP: read a general register
                return _bit(rn), 0
            return 0, _bit(rd)  # FCVT*, FMOV to general
        if (w & 0x5F200000) == 0x1E000000:  # conversion between FP and fixed point
            opcode = (w >> 16) & 7
            if opcode in (2, 3):
                return _bit(rn), 0
            if opcode in (0, 1):
                return 0, _bit(rd)
            return _unknown(w)
        if (w & 0x9FE08400) == 0x0E000400:  # Advanced SIMD copy
            if (w >> 29) & 1:  # INS (element)
                return 0, 0
            imm4 = (w >> 11) & 0xF
            if imm4 in (1, 3):  # DUP (general), INS (general)
                return _bit(rn), 0
            if imm4 in (5, 7):  # SMOV, UMOV
                return 0, _bit(rd)
            if imm4 == 0:  # DUP (element)
                return 0, 0
            return _unknown(w)
        # every other class of this group works on FP/SIMD registers only
        return 0, 0

    return _unknown(w)  # SVE, SME, reserved


def _load_store(w: int) -> tuple[int, int]:
    rt = w & 31
    rn = (w >> 5) & 31
    rt2 = (w >> 10) & 31
    rm = (w >> 16) & 31
    simd = (w >> 26) & 1

    if (w & 0xBE000000) == 0x0C000000:  # Advanced SIMD load/store multiple or single structures
        post = (w >> 23) & 1
        reads = _bit(rn) | (_bit(rm) if post and rm != 31 else 0)
        return reads, 0  # post-index writeback of Rn is not claimed (conservative)

    if (w & 0x3B000000) == 0x18000000:  # load register (literal)
        opc = w >> 30
        if simd or opc == 3:  # SIMD load or PRFM
            return 0, 0
        return 0, _bit(rt)

    if (w & 0x3A000000) == 0x28000000:  # load/store pair (all addressing forms)
        load = (w >> 22) & 1
        mode = (w >> 23) & 3
        reads = _bit(rn)
        if mode == 0 and not simd and (w >> 30) == 1 and not load:  # STGP
            return _fields(w), 0
        if simd:
            return reads, 0
        if load:
            if rt == rt2 or (mode in (1, 3) and rn in (rt, rt2)):
                return _unknown(w)
            return reads, _bit(rt) | _bit(rt2)
        return reads | _bit(rt) | _bit(rt2), 0

    if (w & 0x3B000000) in (0x38000000, 0x39000000):  # load/store register
        unsigned_imm = (w >> 24) & 1
        if not unsigned_imm:
            if (w >> 21) & 1:
                if (w >> 10) & 3 != 0b10:  # atomics, LDRAA/LDRAB
                    return _unknown(w)
                extra = _bit(rm)  # register offset
                writeback = False
            else:
                extra = 0
                writeback = ((w >> 10) & 3) in (1, 3)  # post-index, pre-index
        else:
            extra = 0
            writeback = False
        size = w >> 30
        opc = (w >> 22) & 3
        reads = _bit(rn) | extra
        if simd:
            return reads, 0
        if opc == 0:  # store
            return reads | _bit(rt), 0
        if size == 3 and opc == 2:  # PRFM / PRFUM
            return reads, 0
        if size >= 2 and opc == 3:  # unallocated
            return _unknown(w)
        if writeback and rt == rn:
            return _unknown(w)
        return reads, _bit(rt)

    # load/store exclusive, ordered, compare-and-swap, tags...: Rs/Rt/Rt2 roles vary
    return _unknown(w)
