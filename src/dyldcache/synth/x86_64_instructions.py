"""What single x86_64 instructions and runs of unreached bytes are, for the control-flow
descent of ``x86_64_flow``: padding, C strings, dead code that may be left alone, instructions
compiled code does not contain, and the few instruction shapes the descent follows (path ends,
register copies, jumps through a register, RIP-relative ``lea``)."""

from __future__ import annotations

from iced_x86 import Code, Decoder, FlowControl, Instruction, Mnemonic, OpKind, Register, RegisterExt

#: the most bytes of unreached instructions accepted between reached code (``is_dead_code``)
MAX_DEAD_CODE = 64
_PADDING = frozenset({Mnemonic.NOP, Mnemonic.INT3})
#: the bytes of C strings: printable ASCII, tab, line breaks, NUL
_TEXT = bytes([0, 9, 10, 13, *range(0x20, 0x7F)])
_TERMINATORS = frozenset(
    {FlowControl.UNCONDITIONAL_BRANCH, FlowControl.INDIRECT_BRANCH, FlowControl.RETURN, FlowControl.EXCEPTION}
)
_UNLIKELY = frozenset(
    {Mnemonic.INT, Mnemonic.INTO, Mnemonic.XLATB, Mnemonic.IRET, Mnemonic.IRETD, Mnemonic.IRETQ}
)
_MOFFS = frozenset(
    {
        Code.MOV_AL_MOFFS8, Code.MOV_AX_MOFFS16, Code.MOV_EAX_MOFFS32, Code.MOV_RAX_MOFFS64,
        Code.MOV_MOFFS8_AL, Code.MOV_MOFFS16_AX, Code.MOV_MOFFS32_EAX, Code.MOV_MOFFS64_RAX,
    }
)  # fmt: skip
_OLD_SEGMENTS = frozenset({Register.ES, Register.CS, Register.SS, Register.DS})
#: 32-bit base registers: an address-size prefix, which 64-bit code has no use for
_GPR32 = frozenset(r for name, r in vars(Register).items() if name.isupper() and RegisterExt.is_gpr32(r))
#: Code -> unlike compiled code, whatever the operands (filled as codes turn up)
_UNLIKELY_CODES: dict[int, bool] = {}


def ends_path(insn: Instruction) -> bool:
    """Control never falls through ``insn`` to the next instruction."""
    return insn.flow_control in _TERMINATORS or insn.mnemonic == Mnemonic.INT3


def jumps_through(insn: Instruction, reg: int) -> bool:
    return (
        insn.flow_control == FlowControl.INDIRECT_BRANCH
        and insn.op0_kind == OpKind.REGISTER
        and RegisterExt.full_register(insn.op0_register) == reg
    )


def copied_register(insn: Instruction) -> int | None:
    """The source of ``mov %r64, %r64``, else None."""
    if (
        insn.mnemonic == Mnemonic.MOV
        and insn.op0_kind == OpKind.REGISTER
        and insn.op1_kind == OpKind.REGISTER
        and RegisterExt.is_gpr64(insn.op0_register)
        and RegisterExt.is_gpr64(insn.op1_register)
    ):
        return int(insn.op1_register)
    return None


def implausible(insn: Instruction, kind: int) -> bool:
    """An instruction compilers and assembly libraries do not emit in user code: most bytes
    that are not code decode to one of these soon."""
    unlikely = _UNLIKELY_CODES.get(kind)
    if unlikely is None:
        unlikely = _UNLIKELY_CODES[kind] = (
            insn.is_privileged
            or insn.is_jmp_far
            or insn.is_jmp_far_indirect
            or insn.is_call_far
            or insn.is_call_far_indirect
            or insn.mnemonic in _UNLIKELY
            or kind in _MOFFS
        )
    return unlikely or insn.segment_prefix in _OLD_SEGMENTS or insn.memory_base in _GPR32


def rip_lea(insn: Instruction) -> bool:
    return insn.mnemonic == Mnemonic.LEA and insn.memory_base == Register.RIP


def padding(raw: bytes) -> int:
    """How many bytes at the start of ``raw`` are padding: NOPs or ``int3`` (the compiler's
    alignment), zero bytes (the linker's)."""
    pos = 0
    decoder = Decoder(64, raw)
    insn = Instruction()
    while pos < len(raw):
        decoder.position = pos
        decoder.decode_out(insn)
        if insn.mnemonic in _PADDING:
            pos += insn.len
        elif raw[pos] == 0:
            pos += 1
        else:
            break
    return pos


def is_padding(raw: bytes) -> bool:
    return padding(raw) == len(raw)


def is_text(raw: bytes) -> bool:
    """NUL-terminated printable ASCII, then padding (OpenSSL's assembly puts its credits,
    ``.asciz "... CRYPTOGAMS by <appro@openssl.org>"``, and option strings in the code). Any
    four such bytes read as a 32-bit offset are at least 0x20202020 away: no reference into
    an image."""
    end = len(raw) - len(raw.lstrip(_TEXT))
    end = raw.rfind(0, 0, end) + 1
    return end > 0 and is_padding(raw[end:])


def is_dead_code(raw: bytes) -> bool:
    """Instructions nothing reaches, then padding. Hand-written assembly leaves such code
    (OpenSSL: ``ud2`` then ``xor %eax,%eax; cmp $0,%rdi; je ...; ud2``, and ``ret`` after
    jumps). Accepted when they are few, decode one after the other, refer to nothing by a
    RIP-relative operand or a 32-bit branch, and the last does not fall through: whatever such
    bytes are, moving segments changes nothing in them, and nothing runs off their end."""
    for insn in Decoder(64, raw[:MAX_DEAD_CODE]):
        if insn.code == Code.INVALID or insn.is_ip_rel_memory_operand:
            return False
        if insn.op0_kind == OpKind.NEAR_BRANCH64 and insn.len >= 5:
            return False
        if ends_path(insn) and is_padding(raw[insn.next_ip :]):
            return True
    return False


def left_alone(raw: bytes) -> bool:
    """Unreached bytes that may stay as they are: padding, then nothing, text or dead code."""
    rest = raw[padding(raw) :]
    return not rest or is_text(rest) or is_dead_code(rest)
