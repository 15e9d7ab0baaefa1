"""Per-dylib pass: move a dylib's references to its segments' new addresses using its split
seg info v2 (``docs/cache-format.md`` §9), vectorized by kind.

Each entry says "the value at (from section, offset) refers to (to section, offset)". With
every section's old and new address known, code and data are patched in the output buffer
the way dyld-1162's ``adjustReference`` does. Pointer entries are not patched here: they
return the target's slide so that the bind pass can compute every pointer's final value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..byteviews import words_at
from ..errors import BuildError
from ..macho import constants as C
from ..macho.split_seg import SPLIT_SEG_DTYPE, unsupported_v1_entry
from .cache_dylib import CacheDylib
from .types import (
    UNPLACED_FILE,
    CacheFileOffset,
    CacheVMAddr,
    InputVMAddr,
    file_offset_of_vm,
    moved_address,
)

_U64 = np.uint64
_I64 = np.int64
_POINTER_KINDS = (
    C.DYLD_CACHE_ADJ_V2_POINTER_64,
    C.DYLD_CACHE_ADJ_V2_THREADED_POINTER_64,
    C.DYLD_CACHE_ADJ_V2_POINTER_32,
)


@dataclass(slots=True)
class SectionTable:
    """Per split-seg section index (0 = mach header): old address, new address, slide, file offset."""

    old_addr: np.ndarray
    new_addr: np.ndarray
    slide: np.ndarray
    file_offset: np.ndarray


def section_table(dylib: CacheDylib) -> SectionTable:
    text = dylib.text
    old: list[InputVMAddr] = [text.input_vmaddr]
    new: list[CacheVMAddr] = [text.cache_vmaddr]
    files: list[CacheFileOffset] = [text.cache_fileoff]
    for seg in dylib.segments:
        for s in seg.input.sections:
            addr = InputVMAddr(s.addr)
            old.append(addr)
            if seg.chunk is None:
                # sections of __LINKEDIT never appear in split seg info: a reference to one is
                # left as it is, and a location in one is refused (no file offset)
                new.append(CacheVMAddr(addr))
                files.append(UNPLACED_FILE)
                continue
            moved = moved_address(addr, seg.input_vmaddr, seg.cache_vmaddr)
            new.append(moved)
            files.append(file_offset_of_vm(moved, seg.cache_vmaddr, seg.cache_fileoff))
    o = np.array(old, dtype=_I64)
    n = np.array(new, dtype=_I64)
    return SectionTable(o, n, n - o, np.array(files, dtype=_I64))


@dataclass(slots=True)
class PointerSlides:
    """For every pointer-kind split-seg entry: the location (input address) and its target's slide."""

    input_addrs: np.ndarray  # uint64, sorted
    target_slides: np.ndarray  # int64


def _apply_split_seg_v1(dylib: CacheDylib, buf: np.ndarray) -> PointerSlides:
    """v1: every listed value in __TEXT moves by how much the data moved relative to the code.

    v1 can only say that much, which is why a v1 dylib may have no writable segment other
    than __DATA (every data segment must slide by one amount). Its pointers carry no split
    seg entry: the bind pass moves each rebase with the segment that holds its target.
    """
    info = dylib.image.split_seg
    assert info is not None
    e = info.entries
    text = dylib.text
    assert text.chunk is not None
    data = dylib.segments[1] if len(dylib.segments) > 1 and dylib.segments[1].chunk is not None else text
    code_to_data = data.slide - text.slide
    problem = unsupported_v1_entry(e, text.cache_size)
    if problem is not None:
        raise BuildError(f"{dylib.install_name}: {problem}")
    kinds = e["kind"]
    offsets = e["offset"].astype(np.int64)
    pos = text.chunk.file_offset + offsets
    i = np.flatnonzero(kinds == 1)
    if len(i):
        u32 = words_at(buf, "<u4")
        u32[pos[i]] = ((u32[pos[i]].astype(_I64) + code_to_data) & 0xFFFFFFFF).astype(np.uint32)
    i = np.flatnonzero(kinds == 2)
    if len(i):
        u64 = words_at(buf)
        u64[pos[i]] = (u64[pos[i]].astype(_I64) + code_to_data).astype(_U64)
    return PointerSlides(np.zeros(0, dtype=_U64), np.zeros(0, dtype=_I64))


def apply_split_seg(dylib: CacheDylib, buf: np.ndarray) -> PointerSlides:
    """Patch ``buf`` (the bytes of the file holding the dylib's segments) for every entry."""
    info = dylib.image.split_seg
    name = dylib.install_name
    if info is None:
        raise BuildError(f"{name}: no split seg info")
    if info.version == 1:
        return _apply_split_seg_v1(dylib, buf)
    e = info.entries
    assert e.dtype == SPLIT_SEG_DTYPE
    table = section_table(dylib)
    nsect = len(table.old_addr)
    if len(e) and (int(e["from_section"].max()) >= nsect or int(e["to_section"].max()) >= nsect):
        raise BuildError(f"{name}: split seg info refers to a section that does not exist")
    fs = e["from_section"].astype(np.intp)
    ts = e["to_section"].astype(np.intp)
    from_off = e["from_offset"].astype(_I64)
    to_off = e["to_offset"].astype(_I64)
    from_new = table.new_addr[fs] + from_off
    to_new = table.new_addr[ts] + to_off
    adjust = table.slide[ts] - table.slide[fs]
    pos = table.file_offset[fs] + from_off
    kind = e["kind"]
    if np.any(table.file_offset[fs] < 0):
        raise BuildError(f"{name}: split seg info has a location in __LINKEDIT")

    u32 = words_at(buf, "<u4")
    u64 = words_at(buf)

    def where(k: int) -> np.ndarray:
        return np.flatnonzero(kind == k)

    def fail(mask: np.ndarray, idx: np.ndarray, message: str) -> None:
        if np.any(mask):
            i = int(idx[np.flatnonzero(mask)[0]])
            raise BuildError(f"{name}: {message} at split seg location {int(from_new[i]):#x}")

    # DELTA_32: int32 += adjust
    i = where(C.DYLD_CACHE_ADJ_V2_DELTA_32)
    if len(i):
        val = u32[pos[i]].astype(np.int32).astype(_I64) + adjust[i]
        fail((val > 0x7FFFFFFF) | (val < -0x80000000), i, "DELTA_32 out of range")
        u32[pos[i]] = (val & 0xFFFFFFFF).astype(np.uint32)
    # DELTA_64: int64 += adjust
    i = where(C.DYLD_CACHE_ADJ_V2_DELTA_64)
    if len(i):
        u64[pos[i]] = (u64[pos[i]].astype(_I64) + adjust[i]).astype(_U64)
    # IMAGE_OFF_32: new image offset of the target, only where something moved
    i = where(C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32)
    i = i[adjust[i] != 0]
    if len(i):
        value = to_new[i] - table.new_addr[0]
        fail((value < 0) | (value > 0xFFFFFFFF), i, "IMAGE_OFF_32 out of range")
        u32[pos[i]] = value.astype(np.uint32)
    # ARM64_ADRP: page delta from the instruction's new page to the target's new page
    i = where(C.DYLD_CACHE_ADJ_V2_ARM64_ADRP)
    if len(i):
        insn = u32[pos[i]].astype(_I64)
        is_adrp = (insn & 0x9F000000) == 0x90000000
        i, insn = i[is_adrp], insn[is_adrp]
        pages = ((to_new[i] & ~0xFFF) - (from_new[i] & ~0xFFF)) >> 12
        fail((pages > 0xFFFFF) | (pages < -0x100000), i, "ADRP target out of range")
        imm = pages & 0x1FFFFF
        new = (insn & 0x9F00001F) | ((imm & 3) << 29) | ((imm >> 2) << 5)
        u32[pos[i]] = new.astype(np.uint32)
    # ARM64_OFF12: low 12 bits of the target into ADD or LDR/STR (scaled)
    i = where(C.DYLD_CACHE_ADJ_V2_ARM64_OFF12)
    if len(i):
        insn = u32[pos[i]].astype(_I64)
        low = to_new[i] & 0xFFF
        is_ldst = (insn & 0x3B000000) == 0x39000000
        is_add = (insn & 0xFFC00000) == 0x91000000
        is_nop = insn == 0xD503201F
        fail(~(is_ldst | is_add | is_nop), i, "unknown OFF12 instruction")
        fail(is_add & ((insn & 0x00C00000) != 0), i, "ADD with shifted immediate")
        scale = np.where((insn & 0x04800000) == 0x04800000, 4, (insn >> 30) & 3)
        scale = np.where(is_ldst, scale, 0)
        fail(is_ldst & ((low & ((1 << scale) - 1)) != 0), i, "misaligned LDR/STR offset")
        new = (insn & 0xFFC003FF) | ((low >> scale) << 10)
        upd = is_ldst | is_add
        u32[pos[i][upd]] = new[upd].astype(np.uint32)
    # ARM64_BR26: re-aim branches whose target moved relative to them
    i = where(C.DYLD_CACHE_ADJ_V2_ARM64_BR26)
    i = i[adjust[i] != 0]
    if len(i):
        insn = u32[pos[i]].astype(_I64)
        delta = to_new[i] - from_new[i]
        fail((delta >= 0x07FFFFFF) | (delta <= -0x07FFFFFF), i, "BR26 branch out of range")
        u32[pos[i]] = ((insn & 0xFC000000) | ((delta >> 2) & 0x03FFFFFF)).astype(np.uint32)
    other = ~np.isin(
        kind,
        [
            C.DYLD_CACHE_ADJ_V2_DELTA_32,
            C.DYLD_CACHE_ADJ_V2_DELTA_64,
            C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32,
            C.DYLD_CACHE_ADJ_V2_ARM64_ADRP,
            C.DYLD_CACHE_ADJ_V2_ARM64_OFF12,
            C.DYLD_CACHE_ADJ_V2_ARM64_BR26,
            C.DYLD_CACHE_ADJ_V2_ARM_BR24,
            C.DYLD_CACHE_ADJ_V2_THUMB_BR22,
            *_POINTER_KINDS,
        ],
    )
    if np.any(other):
        k = int(kind[np.flatnonzero(other)[0]])
        raise BuildError(f"{name}: split seg kind {C.SPLIT_SEG_KIND_NAMES.get(k, k)} is not supported")
    p = np.flatnonzero(np.isin(kind, _POINTER_KINDS))
    input_from = (table.old_addr[fs[p]] + from_off[p]).astype(_U64)
    order = np.argsort(input_from, kind="stable")
    return PointerSlides(input_from[order], table.slide[ts[p]][order])
