"""The per-arch code the linker writes (dyldcache.arch: relocation appliers and stub code),
read back by an independent disassembler (capstone).

Each applier patches a template instruction so that it reaches a target; capstone decodes the
result and says what it reaches. The ranges and alignments an applier must refuse come from the
instruction encodings (Arm ARM: B/BL imm26 is +-128 MiB in words, ADRP +-4 GiB in pages, LDR/STR
unsigned offsets are scaled by the access size; x86_64 rel32 is a signed 32-bit displacement from
the end of the instruction). The split seg fields of the stub code must name the instructions
that hold each reference: capstone says which instruction sits at each offset.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from conftest import python_module

from dyldcache.arch import ARM64, ARM64E, X86_64
from dyldcache.arch.relocation import RelocKind, Via
from dyldcache.arch.stubs import HelperTarget
from dyldcache.macho import constants as C

BL = 0x94000000  # bl #0
ADRP_X0 = 0x90000000  # adrp x0, #0
ADD_X0 = 0x91000000  # add x0, x0, #0
LDR_X1 = 0xF9400001  # ldr x1, [x0]
LDR_W1 = 0xB9400001  # ldr w1, [x0]
LDR_Q0 = 0x3DC00000  # ldr q0, [x0]


def _arm64() -> Any:
    python_module("capstone")
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md.detail = True
    return md


def _x86_64() -> Any:
    python_module("capstone")
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _apply_arm64(kind: RelocKind, template: int, pc: int, target: int) -> Any:
    buf = bytearray(struct.pack("<I", template))
    ARM64.relocations[kind].write(buf, 0, pc, target, 0)
    (insn,) = _arm64().disasm(bytes(buf), pc)
    return insn


def _imm(insn: Any, index: int = -1) -> int:
    return int(insn.operands[index].imm)


@pytest.mark.parametrize("delta", [0, 4, -4, 0x1234560, -(1 << 27), (1 << 27) - 4])
def test_branch26_reaches_its_target(delta: int) -> None:
    pc = 0x10000000
    insn = _apply_arm64(RelocKind.BRANCH26, BL, pc, pc + delta)
    assert insn.mnemonic == "bl"
    assert _imm(insn) == pc + delta


@pytest.mark.parametrize("delta", [1 << 27, -(1 << 27) - 4, 2])
def test_branch26_refuses_what_it_cannot_reach(delta: int) -> None:
    with pytest.raises(ValueError):
        _apply_arm64(RelocKind.BRANCH26, BL, 0x10000000, 0x10000000 + delta)


@pytest.mark.parametrize("kind", [RelocKind.PAGE21, RelocKind.GOT_PAGE21])
@pytest.mark.parametrize("target", [0x10000000, 0x10000FFF, 0x7FFF1234, 0x123, 0x10FFFF000])
def test_page21_reaches_the_target_page(kind: RelocKind, target: int) -> None:
    pc = 0x10000004
    insn = _apply_arm64(kind, ADRP_X0, pc, target)
    assert insn.mnemonic == "adrp"
    assert _imm(insn) == target & ~0xFFF


def test_page21_refuses_pages_beyond_4_gib() -> None:
    with pytest.raises(ValueError):
        _apply_arm64(RelocKind.PAGE21, ADRP_X0, 0, 1 << 32)


@pytest.mark.parametrize("kind", [RelocKind.PAGEOFF12, RelocKind.GOT_PAGEOFF12])
@pytest.mark.parametrize(
    ("template", "mnemonic", "target"),
    [
        (ADD_X0, "add", 0x12345ABC),
        (LDR_X1, "ldr", 0x12345AB8),
        (LDR_W1, "ldr", 0x12345ABC),
        (LDR_Q0, "ldr", 0x12345AB0),
    ],
)
def test_pageoff12_holds_the_low_12_bits(kind: RelocKind, template: int, mnemonic: str, target: int) -> None:
    insn = _apply_arm64(kind, template, 0x4000, target)
    assert insn.mnemonic == mnemonic
    if mnemonic == "add":
        assert _imm(insn) == target & 0xFFF
    else:
        assert insn.operands[-1].mem.disp == target & 0xFFF


@pytest.mark.parametrize(("template", "target"), [(LDR_X1, 0x1004), (LDR_W1, 0x1002), (LDR_Q0, 0x1008)])
def test_pageoff12_refuses_an_offset_the_access_size_cannot_scale(template: int, target: int) -> None:
    with pytest.raises(ValueError):
        _apply_arm64(RelocKind.PAGEOFF12, template, 0x4000, target)


def test_pointer_to_got_is_a_signed_delta_from_the_field() -> None:
    buf = bytearray(8)
    ARM64.relocations[RelocKind.POINTER_TO_GOT].write(buf, 4, 0x5000, 0x4000, 0)
    assert struct.unpack_from("<i", buf, 4)[0] == -0x1000
    assert buf[:4] == bytes(4)


@pytest.mark.parametrize(
    ("kind", "code", "field_at", "bias"),
    [
        # call rel32: the field ends the instruction
        (RelocKind.X86_BRANCH, b"\xe8" + bytes(4), 1, 4),
        # lea rax, [rip + disp32]
        (RelocKind.X86_PCREL, b"\x48\x8d\x05" + bytes(4), 3, 4),
        # mov byte ptr [rip + disp32], imm8: one byte follows the field (X86_64_RELOC_SIGNED_1)
        (RelocKind.X86_PCREL, b"\xc6\x05" + bytes(4) + b"\x7f", 2, 5),
        # mov rax, qword ptr [rip + disp32] (a GOT load)
        (RelocKind.X86_GOT_LOAD, b"\x48\x8b\x05" + bytes(4), 3, 4),
    ],
)
@pytest.mark.parametrize("delta", [0x10, -0x100, 0x7FFF0000, -0x7FFF0000])
def test_x86_64_rel32_reaches_its_target(
    kind: RelocKind, code: bytes, field_at: int, bias: int, delta: int
) -> None:
    start = 0x100000000
    target = start + delta
    buf = bytearray(code)
    X86_64.relocations[kind].write(buf, field_at, start + field_at, target, bias)
    (insn,) = _x86_64().disasm(bytes(buf), start)
    assert insn.size == len(code)
    if insn.mnemonic == "call":
        assert _imm(insn, 0) == target
    else:
        mem = next(op.mem for op in insn.operands if op.type == 3)  # X86_OP_MEM
        assert start + insn.size + mem.disp == target
        assert insn.disp_offset == field_at


def test_x86_64_rel32_refuses_more_than_2_gib() -> None:
    with pytest.raises(ValueError):
        X86_64.relocations[RelocKind.X86_BRANCH].write(bytearray(5), 1, 0x1001, 0x1005 + (1 << 31), 4)


def test_every_instruction_relocation_says_what_it_needs() -> None:
    """Calls may go through stubs, GOT forms through GOT slots; direct forms refuse imports."""
    arm64_gots = {RelocKind.GOT_PAGE21, RelocKind.GOT_PAGEOFF12, RelocKind.POINTER_TO_GOT}
    for arch, calls, gots, direct in (
        (ARM64, {RelocKind.BRANCH26}, arm64_gots, {RelocKind.PAGE21, RelocKind.PAGEOFF12}),
        (X86_64, {RelocKind.X86_BRANCH}, {RelocKind.X86_GOT_LOAD, RelocKind.X86_GOT}, {RelocKind.X86_PCREL}),
    ):
        rules = arch.relocations
        assert set(rules) == calls | gots | direct
        assert {k for k, r in rules.items() if r.via is Via.CALL} == calls
        assert {k for k, r in rules.items() if r.goes_through_got} == gots
        assert all(rules[k].form for k in direct)
    assert ARM64E.relocations is ARM64.relocations


# -- stubs and stub helpers ------------------------------------------------------------------

_SPLIT_INSTRUCTIONS = {
    C.DYLD_CACHE_ADJ_V2_ARM64_ADRP: {"adrp"},
    C.DYLD_CACHE_ADJ_V2_ARM64_OFF12: {"add", "ldr"},
}


def _arm64_reach(insns: list[Any]) -> int:
    """The address an adrp + add/ldr pair forms."""
    adrp, low = insns
    assert adrp.mnemonic == "adrp"
    return _imm(adrp) + (_imm(low) if low.mnemonic == "add" else low.operands[-1].mem.disp)


@pytest.mark.parametrize(
    ("arch", "auth", "mnemonics"),
    [
        (ARM64, False, ["adrp", "ldr", "br"]),  # adrp x16; ldr x16, [x16, #off]; br x16
        (ARM64E, True, ["adrp", "add", "ldr"]),  # adrp x17; add x17; ldr x16, [x17]; braa (no capstone 4)
    ],
)
def test_arm64_stub_jumps_through_its_slot(arch: Any, auth: bool, mnemonics: list[str]) -> None:
    addr, slot = 0x8000, 0x1C010
    raw = arch.stubs.stub(addr, slot, auth)
    assert len(raw) == arch.stub_size
    insns = list(_arm64().disasm(raw, addr))[:3]
    assert [i.mnemonic for i in insns] == mnemonics
    assert _arm64_reach(insns[:2]) == slot
    for kind, at in arch.stubs.stub_fields:
        assert insns[at // 4].mnemonic in _SPLIT_INSTRUCTIONS[kind]


def test_arm64_stub_helper() -> None:
    code = ARM64.stubs
    addr, private, binder = 0x8000, 0x20008, 0x1C000
    header = code.helper_header(addr, private, binder)
    assert len(header) == code.helper_header_size
    insns = list(_arm64().disasm(header, addr))
    assert [i.mnemonic for i in insns] == ["adrp", "add", "stp", "adrp", "ldr", "br"]
    assert _arm64_reach(insns[0:2]) == private
    assert _arm64_reach(insns[3:5]) == binder
    wanted = {HelperTarget.DYLD_PRIVATE: private, HelperTarget.BINDER_SLOT: binder}
    for kind, at, target in code.helper_header_fields:
        assert insns[at // 4].mnemonic in _SPLIT_INSTRUCTIONS[kind]
        first = at // 4 if kind == C.DYLD_CACHE_ADJ_V2_ARM64_ADRP else at // 4 - 1
        pair = insns[first : first + 2]
        assert _arm64_reach(pair) == wanted[target]
    entry_at = addr + code.helper_header_size
    entry = code.helper_entry(entry_at, addr, 0x1234)
    assert len(entry) == code.helper_entry_size
    ldr, b = list(_arm64().disasm(entry[:8], entry_at))
    assert ldr.mnemonic == "ldr" and _imm(ldr) == entry_at + 8  # the literal after the branch
    assert b.mnemonic == "b" and _imm(b) == addr
    assert struct.unpack_from("<I", entry, 8)[0] == 0x1234


def _x86_reach(insn: Any) -> int:
    mem = next(op.mem for op in insn.operands if op.type == 3)
    return int(insn.address + insn.size + mem.disp)


def test_x86_64_stub_jumps_through_its_slot() -> None:
    addr, slot = 0x4000, 0x1C010
    raw = X86_64.stubs.stub(addr, slot, False)
    (insn,) = _x86_64().disasm(raw, addr)
    assert insn.mnemonic == "jmp" and insn.size == X86_64.stub_size
    assert _x86_reach(insn) == slot
    assert X86_64.stubs.stub_fields == ((C.DYLD_CACHE_ADJ_V2_DELTA_32, insn.disp_offset),)


def test_x86_64_stub_helper() -> None:
    code = X86_64.stubs
    addr, private, binder = 0x4000, 0x20008, 0x1C000
    header = code.helper_header(addr, private, binder)
    assert len(header) == code.helper_header_size
    insns = list(_x86_64().disasm(header, addr))
    assert [i.mnemonic for i in insns] == ["lea", "push", "jmp", "nop"]
    assert _x86_reach(insns[0]) == private and insns[0].op_str.startswith("r11")
    assert _x86_reach(insns[2]) == binder
    wanted = {HelperTarget.DYLD_PRIVATE: insns[0], HelperTarget.BINDER_SLOT: insns[2]}
    for kind, at, target in code.helper_header_fields:
        assert kind == C.DYLD_CACHE_ADJ_V2_DELTA_32
        assert at == wanted[target].address - addr + wanted[target].disp_offset
    entry_at = addr + code.helper_header_size
    entry = code.helper_entry(entry_at, addr, 0x1234)
    assert len(entry) == code.helper_entry_size
    push, jmp = list(_x86_64().disasm(entry, entry_at))
    assert push.mnemonic == "push" and _imm(push, 0) == 0x1234
    assert jmp.mnemonic == "jmp" and _imm(jmp, 0) == addr


def test_traps_trap() -> None:
    """The body of a stand-in function: brk on arm64, ud2 on x86_64."""
    assert [i.mnemonic for i in _arm64().disasm(ARM64.trap, 0)] == ["brk"]
    assert ARM64E.trap == ARM64.trap
    assert [i.mnemonic for i in _x86_64().disasm(X86_64.trap, 0)] == ["ud2"]
