"""x86_64 code facts the linker writes: the stub template and rel32 fields."""

from __future__ import annotations

import struct

#: __stubs entry (6 bytes): jmp *slot(%rip); the rel32 at +2 is relative to the stub's end
STUB_SIZE = 6
STUB_DISP_OFFSET = 2


def stub_bytes(stub_addr: int, slot_addr: int) -> bytes:
    disp = slot_addr - (stub_addr + STUB_SIZE)
    return b"\xff\x25" + struct.pack("<i", disp)


def rel32(value: int, where: int) -> bytes:
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"rel32 at {where:#x} out of range: {value:#x}")
    return struct.pack("<i", value)
