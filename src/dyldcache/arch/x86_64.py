"""x86_64 code facts the linker writes: the stub and stub helper templates and rel32 fields,
and the linker's relocation appliers for x86_64."""

from __future__ import annotations

import struct

from ..macho import constants as C
from .relocation import RelocKind, RelocRule, Via
from .stubs import HelperTarget, StubCode

#: ud2: the body of a stand-in function that nobody should call (dyldcache link -stub_library)
TRAP = b"\x0f\x0b"

#: __stubs entry (6 bytes): jmp *slot(%rip); the rel32 at +2 is relative to the stub's end
STUB_SIZE = 6
STUB_DISP_OFFSET = 2


def stub_bytes(stub_addr: int, slot_addr: int) -> bytes:
    disp = slot_addr - (stub_addr + STUB_SIZE)
    return b"\xff\x25" + struct.pack("<i", disp)


#: __stub_helper header (16 bytes), jumped to by every entry:
#:   lea __dyld_private(%rip), %r11; push %r11; jmp *dyld_stub_binder@GOT(%rip); nop
STUB_HELPER_HEADER_SIZE = 16
#: where the two rel32 displacements of the header sit (each relative to its instruction's end)
HELPER_PRIVATE_DISP = 3
HELPER_BINDER_DISP = 11
#: __stub_helper entry (10 bytes): push $lazy_bind_offset; jmp header
STUB_HELPER_ENTRY_SIZE = 10


def stub_helper_header(addr: int, dyld_private: int, binder_slot: int) -> bytes:
    return (
        b"\x4c\x8d\x1d"
        + rel32(dyld_private - (addr + 7), addr)
        + b"\x41\x53\xff\x25"
        + rel32(binder_slot - (addr + 15), addr)
        + b"\x90"
    )


def stub_helper_entry(addr: int, header: int, lazy_bind_offset: int) -> bytes:
    return b"\x68" + struct.pack("<I", lazy_bind_offset) + b"\xe9" + rel32(header - (addr + 10), addr)


def rel32(value: int, where: int) -> bytes:
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"rel32 at {where:#x} out of range: {value:#x}")
    return struct.pack("<i", value)


# --- the linker's view: relocation appliers and stub code ----------------------------------------


def _write_rel32(buf: bytearray, fo: int, pc: int, target: int, bias: int) -> None:
    """A displacement from the end of the instruction (``bias`` bytes past the field's start)."""
    buf[fo : fo + 4] = rel32(target - (pc + bias), pc)


def _rule(via: Via, form: str = "") -> RelocRule:
    return RelocRule(via, _write_rel32, C.DYLD_CACHE_ADJ_V2_DELTA_32, split_within_data=True, form=form)


#: every instruction relocation an x86_64 object can carry
RELOCATIONS: dict[RelocKind, RelocRule] = {
    RelocKind.X86_PCREL: _rule(Via.UNBOUND_TARGET, "RIP-relative"),
    RelocKind.X86_BRANCH: _rule(Via.CALL),
    RelocKind.X86_GOT_LOAD: _rule(Via.GOT),
    RelocKind.X86_GOT: _rule(Via.GOT),
}

STUBS = StubCode(
    alignment=2,
    stub=lambda addr, slot, auth: stub_bytes(addr, slot),
    stub_fields=((C.DYLD_CACHE_ADJ_V2_DELTA_32, STUB_DISP_OFFSET),),
    helper_header_size=STUB_HELPER_HEADER_SIZE,
    helper_header=stub_helper_header,
    helper_header_fields=(
        (C.DYLD_CACHE_ADJ_V2_DELTA_32, HELPER_PRIVATE_DISP, HelperTarget.DYLD_PRIVATE),
        (C.DYLD_CACHE_ADJ_V2_DELTA_32, HELPER_BINDER_DISP, HelperTarget.BINDER_SLOT),
    ),
    helper_entry_size=STUB_HELPER_ENTRY_SIZE,
    helper_entry=stub_helper_entry,
)
