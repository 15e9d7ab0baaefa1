"""x86_64 code references that cross segments: RIP-relative displacements and rel32 branches.

The instructions are those ``x86_64_flow`` finds by following the control flow (decoded with
iced-x86, which reads every x86_64 extension up to AVX-512 and AMX). A RIP-relative operand and
a branch with a 32-bit displacement are the only ways x86_64 code encodes an address relative
to itself; every one whose target lies in another segment gets a DELTA_32 entry at its 32-bit
field, whose offset in the instruction the decoder reports. The builder adds to that field how
much the target's segment moved relative to the code's.

Jump tables in the code need no entry: their offsets are relative to the table, and both ends
lie in the code's segment (``x86_64_flow`` refuses a table entry that reaches another one).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from iced_x86 import Decoder, Instruction, OpKind

from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .image_map import ImageMap
from .x86_64_flow import CodeMap, explore

_I64 = np.int64


def _signed(address: int) -> int:
    """The decoder's 64-bit address arithmetic wraps: an operand before address 0 (only in
    corrupt code) comes back near 2**64; as a signed value it stays outside the image."""
    return address - (1 << 64) if address >= 1 << 63 else address


def _references(code: CodeMap, imap: ImageMap) -> tuple[list[int], list[int]]:
    """(field address, target) of every RIP-relative operand and rel32 branch of ``code``."""
    base = code.section.addr
    decoder = Decoder(64, code.content, ip=base)
    insn = Instruction()
    fields: list[int] = []
    targets: list[int] = []
    for off in np.flatnonzero(code.refs).tolist():
        decoder.position = off
        decoder.ip = base + off
        decoder.decode_out(insn)
        offsets = decoder.get_constant_offsets(insn)
        if insn.is_ip_rel_memory_operand:
            if offsets.displacement_size != 4:
                raise imap.error(base + off, "a RIP-relative operand without a 32-bit displacement")
            fields.append(base + off + offsets.displacement_offset)
            targets.append(_signed(insn.ip_rel_memory_address))
        elif insn.op0_kind == OpKind.NEAR_BRANCH64 and offsets.immediate_size == 4:
            fields.append(base + off + offsets.immediate_offset)
            targets.append(_signed(insn.near_branch_target))
    return fields, targets


def scan_x86_64(
    image: MachOFile, imap: ImageMap, entries: Iterable[int]
) -> tuple[np.ndarray, list[tuple[int, int | None]], int]:
    """(DELTA_32 entries, relative tables the code uses as (start, entry count or None),
    instructions decoded); ``entries`` are code addresses known besides LC_FUNCTION_STARTS
    (unwind information, landing pads)."""
    explored = explore(image, imap, entries)
    fields: list[int] = []
    targets: list[int] = []
    for code in explored.maps:
        f, t = _references(code, imap)
        fields += f
        targets += t
    tables = explored.relative_tables
    if not fields:
        return np.zeros(0, dtype=SPLIT_SEG_DTYPE), tables, explored.instructions
    out = imap.entries(
        C.DYLD_CACHE_ADJ_V2_DELTA_32,
        np.array(fields, dtype=_I64),
        np.array(targets, dtype=_I64),
        what="RIP-relative reference",
    )
    return out, tables, explored.instructions
