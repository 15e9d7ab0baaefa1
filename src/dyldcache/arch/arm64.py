"""arm64 instruction fields the linker writes and the cache builder adjusts
(ADRP, ADD/LDR/STR imm12, B/BL), the stub templates ld64 uses, and the linker's relocation
appliers for arm64 and arm64e.

The instruction functions are pure: they take and return 32-bit instruction words.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..macho import constants as C
from .relocation import RelocKind, RelocRule, Via
from .stubs import HelperTarget, StubCode

NOP = 0xD503201F
#: brk #1: the body of a stand-in function that nobody should call (dyldcache link -stub_library)
TRAP = 0xD4200020

#: __stubs entry (12 bytes): adrp x16, got@page; ldr x16, [x16, got@pageoff]; br x16
STUB_TEMPLATE = (
    0x90000010,  # adrp x16, #0
    0xF9400210,  # ldr  x16, [x16, #0]
    0xD61F0200,  # br   x16
)
#: __auth_stubs entry (16 bytes): adrp x17; add x17, x17, #off; ldr x16, [x17]; braa x16, x17
AUTH_STUB_TEMPLATE = (
    0x90000011,  # adrp x17, #0
    0x91000231,  # add  x17, x17, #0
    0xF9400230,  # ldr  x16, [x17]
    0xD71F0A11,  # braa x16, x17
)


class InstructionError(ValueError):
    """An instruction cannot hold the value asked of it."""


def is_adrp(insn: int) -> bool:
    return (insn & 0x9F000000) == 0x90000000


def is_b_or_bl(insn: int) -> bool:
    return (insn & 0x7C000000) == 0x14000000


def is_add_imm(insn: int) -> bool:
    """ADD (immediate), 32 or 64-bit, unshifted or shifted."""
    return (insn & 0x7F000000) == 0x11000000


def is_load_store_imm12(insn: int) -> bool:
    """LDR/STR (unsigned immediate), integer or SIMD&FP."""
    return (insn & 0x3B000000) == 0x39000000


def adrp_page_delta(insn: int) -> int:
    """The signed 4 KiB page count an ADRP adds."""
    imm = ((insn >> 29) & 0x3) | (((insn >> 5) & 0x7FFFF) << 2)
    return imm - (1 << 21) if imm & (1 << 20) else imm


def set_adrp(insn: int, pc: int, target: int) -> int:
    delta = (target >> 12) - (pc >> 12)
    if not -(1 << 20) <= delta < (1 << 20):
        raise InstructionError(f"ADRP at {pc:#x} cannot reach {target:#x}")
    imm = delta & 0x1FFFFF
    return (insn & 0x9F00001F) | ((imm & 0x3) << 29) | ((imm >> 2) << 5)


def load_store_scale(insn: int) -> int:
    """log2 of the access size of an LDR/STR (unsigned immediate)."""
    size = insn >> 30
    if (insn & 0x04800000) == 0x04800000:  # SIMD&FP with opc<1> set: 128-bit Q register
        return 4
    return size


def imm12(insn: int) -> int:
    """The byte offset an ADD-immediate or LDR/STR-unsigned-offset instruction encodes."""
    raw = (insn >> 10) & 0xFFF
    if is_load_store_imm12(insn):
        return raw << load_store_scale(insn)
    if is_add_imm(insn) and (insn >> 22) & 1:
        return raw << 12
    return raw


def set_imm12(insn: int, target: int, where: int = 0) -> int:
    """Put the low 12 bits of ``target`` into an ADD or LDR/STR (scaled) instruction."""
    low = target & 0xFFF
    if is_load_store_imm12(insn):
        scale = load_store_scale(insn)
        if low & ((1 << scale) - 1):
            raise InstructionError(f"LDR/STR at {where:#x}: offset {low:#x} is not {1 << scale}-byte aligned")
        low >>= scale
    elif not is_add_imm(insn):
        raise InstructionError(f"instruction {insn:#010x} at {where:#x} is neither ADD nor LDR/STR")
    return (insn & 0xFFC003FF) | (low << 10)


def branch_delta(insn: int) -> int:
    imm = insn & 0x03FFFFFF
    return (imm - (1 << 26) if imm & (1 << 25) else imm) << 2


def set_branch26(insn: int, pc: int, target: int) -> int:
    delta = target - pc
    if delta & 3 or not -(1 << 27) <= delta < (1 << 27):
        raise InstructionError(f"branch at {pc:#x} cannot reach {target:#x}")
    return (insn & 0xFC000000) | ((delta >> 2) & 0x03FFFFFF)


def stub_words(stub_addr: int, slot_addr: int, auth: bool) -> tuple[int, ...]:
    """The instructions of one stub that jumps through the pointer at ``slot_addr``."""
    if auth:
        a, add, ldr, br = AUTH_STUB_TEMPLATE
        return (set_adrp(a, stub_addr, slot_addr), set_imm12(add, slot_addr), ldr, br)
    a, ldr, br = STUB_TEMPLATE
    return (set_adrp(a, stub_addr, slot_addr), set_imm12(ldr, slot_addr), br)


#: __stub_helper header (24 bytes), branched to by every entry:
#:   adrp x17, __dyld_private@page; add x17, x17, @pageoff; stp x16, x17, [sp, #-16]!;
#:   adrp x16, dyld_stub_binder@GOT page; ldr x16, [x16, @pageoff]; br x16
STUB_HELPER_HEADER = (0x90000011, 0x91000231, 0xA9BF47F0, 0x90000010, 0xF9400210, 0xD61F0200)
#: __stub_helper entry (12 bytes): ldr w16, 1f; b header; 1: .long lazy_bind_offset
STUB_HELPER_ENTRY = (0x18000050, 0x14000000)


def stub_helper_header_words(addr: int, dyld_private: int, binder_slot: int) -> tuple[int, ...]:
    a17, add, stp, a16, ldr, br = STUB_HELPER_HEADER
    return (
        set_adrp(a17, addr, dyld_private),
        set_imm12(add, dyld_private),
        stp,
        set_adrp(a16, addr + 12, binder_slot),
        set_imm12(ldr, binder_slot),
        br,
    )


def stub_helper_entry_words(addr: int, header: int, lazy_bind_offset: int) -> tuple[int, ...]:
    ldr, b = STUB_HELPER_ENTRY
    return (ldr, set_branch26(b, addr + 4, header), lazy_bind_offset & 0xFFFFFFFF)


# --- the linker's view: relocation appliers and stub code ----------------------------------------


def _patch(buf: bytearray, fo: int, change: Callable[[int], int]) -> None:
    (insn,) = struct.unpack_from("<I", buf, fo)
    struct.pack_into("<I", buf, fo, change(insn) & 0xFFFFFFFF)


def _write_branch26(buf: bytearray, fo: int, pc: int, target: int, bias: int) -> None:
    _patch(buf, fo, lambda insn: set_branch26(insn, pc, target))


def _write_adrp(buf: bytearray, fo: int, pc: int, target: int, bias: int) -> None:
    _patch(buf, fo, lambda insn: set_adrp(insn, pc, target))


def _write_pageoff12(buf: bytearray, fo: int, pc: int, target: int, bias: int) -> None:
    _patch(buf, fo, lambda insn: set_imm12(insn, target, pc))


def _write_delta32(buf: bytearray, fo: int, pc: int, target: int, bias: int) -> None:
    struct.pack_into("<i", buf, fo, target - pc)


_DIRECT = "direct ADRP/ADD"

#: every instruction relocation an arm64 object can carry
RELOCATIONS: dict[RelocKind, RelocRule] = {
    RelocKind.BRANCH26: RelocRule(Via.CALL, _write_branch26, C.DYLD_CACHE_ADJ_V2_ARM64_BR26),
    RelocKind.PAGE21: RelocRule(Via.TARGET, _write_adrp, C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, form=_DIRECT),
    RelocKind.PAGEOFF12: RelocRule(
        Via.TARGET, _write_pageoff12, C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, form=_DIRECT
    ),
    RelocKind.GOT_PAGE21: RelocRule(Via.GOT, _write_adrp, C.DYLD_CACHE_ADJ_V2_ARM64_ADRP),
    RelocKind.GOT_PAGEOFF12: RelocRule(Via.GOT, _write_pageoff12, C.DYLD_CACHE_ADJ_V2_ARM64_OFF12),
    RelocKind.POINTER_TO_GOT: RelocRule(Via.POINTER_SLOT, _write_delta32, C.DYLD_CACHE_ADJ_V2_DELTA_32),
}


def _words(words: tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(words)}I", *words)


STUBS = StubCode(
    alignment=4,
    stub=lambda addr, slot, auth: _words(stub_words(addr, slot, auth)),
    # adrp, then the ldr (or, in an auth stub, the add) that completes the slot's address
    stub_fields=((C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, 0), (C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, 4)),
    helper_header_size=4 * len(STUB_HELPER_HEADER),
    helper_header=lambda addr, private, binder: _words(stub_helper_header_words(addr, private, binder)),
    helper_header_fields=(
        (C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, 0, HelperTarget.DYLD_PRIVATE),
        (C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, 4, HelperTarget.DYLD_PRIVATE),
        (C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, 12, HelperTarget.BINDER_SLOT),
        (C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, 16, HelperTarget.BINDER_SLOT),
    ),
    helper_entry_size=4 * (len(STUB_HELPER_ENTRY) + 1),
    helper_entry=lambda addr, header, offset: _words(stub_helper_entry_words(addr, header, offset)),
)
