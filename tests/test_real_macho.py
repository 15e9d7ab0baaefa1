"""Our Mach-O reader on every Mach-O under shared/data/real (issue 7): a macOS 10.14 /usr/lib (fat
i386 + x86_64 (+ x86_64h), ld64-409, opcode fixups, split seg v1), an iOS 14.4 root (arm64, split seg
v2) and dylibs without split seg (arm64, arm64e, x86_64, armv7). Every slice of every fat file.

- Every 64-bit slice that llvm-objdump-22 lists without complaint reads the same in our reader,
  entry for entry (tests/objdump_agreement.py): the mach header and load commands, the exports
  trie, rebases, binds, lazy and weak binds, chained fixups, and the indirect symbols, data in code
  and function starts those load commands point at.
- llvm-objdump cannot print split seg info: our entries must equal the stream decoded by hand
  (tests/oracles.py), and each entry must hold what its kind says where it points. v2 (arm64): the
  section indexes name real sections and the offsets lie inside them; an ADRP / ADD-LDR-STR imm12 /
  B-BL imm26 decoded from the instruction word reaches the entry's target; a 64-bit pointer is a
  rebase llvm lists (or a bind to a symbol the image exports there) and holds the target; a 32/64-bit
  delta or image offset equals target minus location (or image start), but for two ld64 habits
  explained where they are checked (__eh_frame CIE pointers, the __unwind_info index sentinel).
  v1 (x86_64): a 32-bit displacement in code is the disp32 of a
  RIP-relative operand (capstone) whose target is outside __TEXT; one in __eh_frame /
  __gcc_except_tab (pc-relative) or __unwind_info (image offset) also reaches outside __TEXT; a
  64-bit pointer is a rebase llvm lists.
- Every slice llvm rejects, every 32-bit slice, every file that is not a Mach-O (empty files, text
  stubs) and copies of real files cut short are rejected with a MachOFormatError that names the
  file, the offset and the problem.

The numbers compared, per folder, are printed at the end of the comparison; the test_the_*_catches
tests show that each check fails when one entry is wrong.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import objdump
import pytest
from conftest import python_module, shared_path
from objdump_agreement import check_image
from oracles import (
    LC_SEGMENT_SPLIT_INFO,
    SPLIT_KIND_NAMES,
    SplitEntry,
    decode_split_seg_v1,
    decode_split_seg_v2,
    load_command_payload,
)
from test_macho_robustness import touch_image

from dyldcache.errors import MachOFormatError
from dyldcache.macho.file import MachOFile, open_macho
from dyldcache.macho.fixups import FIXUP_FLAG_LAZY, FixupKind, Fixups

#: folders of shared/data/real that hold no Mach-O files (dyld shared caches: test_cache_reader)
NOT_MACHO_FOLDERS = {"apple-caches"}

#: (cputype, cpusubtype without capability bits) -> the arch name llvm-objdump's --arch takes
CPU_NAMES = {
    (7, 3): "i386",
    (0x01000007, 3): "x86_64",
    (0x01000007, 8): "x86_64h",
    (12, 9): "armv7",
    (12, 11): "armv7s",
    (0x0100000C, 0): "arm64",
    (0x0100000C, 2): "arm64e",
}
FAT_MAGIC, FAT_MAGIC_64 = 0xCAFEBABE, 0xCAFEBABF
MH_MAGIC, MH_MAGIC_64 = 0xFEEDFACE, 0xFEEDFACF


@dataclass(frozen=True)
class Slice:
    """One Mach-O image in a file (the file itself, or a slice of a fat file)."""

    path: Path
    folder: str
    #: llvm's name of the slice's arch
    arch: str
    #: the slice is part of a fat file (pass its arch to select it)
    in_fat: bool
    offset: int
    size: int
    is64: bool

    def bytes(self) -> bytes:
        return _file_bytes(self.path)[self.offset : self.offset + self.size]

    def __str__(self) -> str:
        return f"{self.path} ({self.arch})"


@cache
def _file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _thin(path: Path, folder: str, data: bytes, offset: int, size: int, in_fat: bool) -> Slice:
    magic, cputype, cpusubtype = struct.unpack_from("<III", data, offset)
    arch = CPU_NAMES.get((cputype, cpusubtype & 0x00FFFFFF))
    assert arch is not None, f"{path}: cpu {cputype:#x}/{cpusubtype:#x} is new to this test"
    return Slice(path, folder, arch, in_fat, offset, size, magic == MH_MAGIC_64)


@cache
def inventory() -> tuple[tuple[Slice, ...], tuple[Path, ...]]:
    """Every Mach-O image under shared/data/real (fat files read here, from <mach-o/fat.h>), and
    every other file (no Mach-O magic)."""
    root = shared_path("data", "real")
    slices: list[Slice] = []
    others: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if len(rel.parts) == 1 or rel.parts[0] in NOT_MACHO_FOLDERS:
            continue  # the folder's README, the caches
        folder = rel.parts[0]
        data = _file_bytes(path)
        magic_be = int.from_bytes(data[:4], "big") if len(data) >= 4 else 0
        magic_le = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
        if magic_be in (FAT_MAGIC, FAT_MAGIC_64):
            (count,) = struct.unpack_from(">I", data, 4)
            record = ">IIQQII" if magic_be == FAT_MAGIC_64 else ">IIIII"
            for i in range(count):
                offset, size = struct.unpack_from(record, data, 8 + i * struct.calcsize(record))[2:4]
                slices.append(_thin(path, folder, data, offset, size, True))
        elif magic_le in (MH_MAGIC, MH_MAGIC_64):
            slices.append(_thin(path, folder, data, 0, len(data), False))
        else:
            others.append(path)
    return tuple(slices), tuple(others)


def slices64() -> list[Slice]:
    slices = [s for s in inventory()[0] if s.is64]
    objdump.prefetch([(s.path, objdump.listing_flags(s.arch if s.in_fat else None)) for s in slices])
    return slices


def listing(s: Slice) -> objdump.Listing:
    return objdump.listing(s.path, s.arch if s.in_fat else None)


def open_slice(s: Slice) -> MachOFile:
    image = open_macho(s.path, s.arch if s.in_fat else None)
    assert image.file_offset == s.offset
    return image


# ---------------------------------------------------------------------------------------------
# split seg info, decoded by hand and checked where it points


@dataclass
class Layout:
    """Segments and sections of an image as llvm-objdump lists them, and its bytes."""

    data: bytes
    segments: list[objdump.ObjSegment]
    sections: list[objdump.ObjSection]
    #: addresses llvm-objdump lists as rebases
    rebases: set[int]
    #: address -> export address, of the binds llvm lists to a symbol this image exports
    own_binds: dict[int, int]

    @property
    def base(self) -> int:
        return next(s.vmaddr for s in self.segments if s.fileoff == 0 and s.filesize)

    def file_offsets(self, addresses: np.ndarray, width: int) -> np.ndarray:
        """File offset of each address; every one must have ``width`` bytes of file content."""
        out = np.full(len(addresses), -1, dtype=np.int64)
        for seg in self.segments:
            inside = (addresses >= seg.vmaddr) & (addresses + width <= seg.vmaddr + seg.filesize)
            out[inside] = seg.fileoff + (addresses[inside] - seg.vmaddr)
        bad = np.flatnonzero(out < 0)
        assert not bad.size, f"split seg location {int(addresses[bad[0]]):#x} has no file content"
        return out

    def read(self, addresses: np.ndarray, width: int) -> np.ndarray:
        """The little-endian unsigned ``width``-byte values at ``addresses`` (as uint64)."""
        raw = np.frombuffer(self.data, dtype=np.uint8)
        idx = self.file_offsets(addresses, width)[:, None] + np.arange(width)
        return raw[idx].copy().view(f"<u{width}").ravel().astype(np.uint64)

    def segment_of(self, addresses: np.ndarray) -> np.ndarray:
        """Index (in self.segments) of the segment holding each address, -1 for none."""
        out = np.full(len(addresses), -1, dtype=np.int64)
        for i, seg in enumerate(self.segments):
            out[(addresses >= seg.vmaddr) & (addresses < seg.vmaddr + seg.vmsize)] = i
        return out

    def unwind_sentinel(self) -> int:
        """Address of the last top-level index entry of __unwind_info (<mach-o/compact_unwind_encoding.h>:
        the index offset and count are the header's 6th and 7th u32, entries are 12 bytes), or -1."""
        sect = next((s for s in self.sections if s.sectname == "__unwind_info"), None)
        if sect is None:
            return -1
        index_offset, count = struct.unpack_from("<II", self.data, sect.offset + 20)
        return sect.addr + index_offset + 12 * (count - 1) if count else -1

    def section_of(self, addresses: np.ndarray) -> np.ndarray:
        """1-based index of the section holding each address (0 for none)."""
        out = np.zeros(len(addresses), dtype=np.int64)
        for i, sect in enumerate(self.sections, 1):
            out[(addresses >= sect.addr) & (addresses < sect.addr + sect.size)] = i
        return out


def _signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement ``bits``-bit fields (in the low bits of ``values``) as int64."""
    if bits == 64:
        return values.astype(np.uint64).view(np.int64)
    v = values.astype(np.int64) & ((1 << bits) - 1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def _fail(what: str, bad: np.ndarray, addresses: np.ndarray) -> None:
    where = ", ".join(f"{int(a):#x}" for a in addresses[bad][:5])
    pytest.fail(f"{int(bad.sum())} {what} entries do not hold what they say, at {where}")


def check_split_seg_v2(layout: Layout, entries: list[SplitEntry]) -> Counter[str]:
    """Every v2 entry: real sections, offsets inside them, and per kind what the location holds."""
    counts: Counter[str] = Counter()
    if not entries:
        return counts
    e = np.array(
        [(x.kind, x.from_section, x.to_section, x.from_offset, x.to_offset) for x in entries], dtype=np.int64
    )
    kind, fsec, tsec, foff, toff = e.T
    n = len(layout.sections)
    assert ((fsec >= 0) & (fsec <= n) & (tsec >= 0) & (tsec <= n)).all(), "a section index names no section"
    # section 0 is the mach header and load commands: from the image start to the first section
    starts = np.array([layout.base] + [s.addr for s in layout.sections], dtype=np.int64)
    sizes = np.array(
        [layout.sections[0].addr - layout.base] + [s.size for s in layout.sections], dtype=np.int64
    )
    assert (foff < sizes[fsec]).all(), "a from-offset lies outside its section"
    assert (toff <= sizes[tsec]).all(), "a to-offset lies past the end of its section"
    at = starts[fsec] + foff
    to = starts[tsec] + toff
    for k in sorted(set(kind.tolist())):
        sel = kind == k
        a, t = at[sel], to[sel]
        name = SPLIT_KIND_NAMES.get(k, str(k))
        if k == 2:  # POINTER_64: a rebase whose pointer holds the target
            held = layout.read(a, 8) == t.astype(np.uint64)
            rebased = np.array([int(x) in layout.rebases for x in a], dtype=bool)
            # or a bind to a symbol this image exports at the target (flat-namespace images bind
            # their own symbols; ld64 writes the local address into the pointer meanwhile)
            own = np.array(
                [layout.own_binds.get(int(x)) == int(y) for x, y in zip(a, t, strict=True)], dtype=bool
            )
            counts["v2 POINTER_64 (bind to an own export)"] += int((own & held & ~rebased).sum())
            ok = held & (rebased | own)
        elif k in (3, 4):  # DELTA_32 / DELTA_64: target - location
            width = 4 if k == 3 else 8
            value = _signed(layout.read(a, width), 8 * width)
            ok = value == t - a
            if k == 3:
                # ld64 also lists each FDE's CIE pointer (DWARF, in __eh_frame), with the FDE
                # itself (4 bytes before the field) as the target; the field counts backwards
                # from itself to a CIE (whose id word, 4 bytes in, is 0). dyld adds toSlide -
                # fromSlide: 0 inside one section
                eh_frame = [i for i, s in enumerate(layout.sections, 1) if s.sectname == "__eh_frame"]
                inside = np.isin(fsec[sel], eh_frame) & (tsec[sel] == fsec[sel]) & (t == a - 4)
                cie = np.zeros(len(a), dtype=bool)
                if inside.any():
                    start = starts[fsec[sel]][inside]
                    back = a[inside] - value[inside]
                    within = (back >= start) & (back + 8 <= start + sizes[fsec[sel]][inside])
                    cie[np.flatnonzero(inside)[within]] = layout.read(back[within] + 4, 4) == 0
                counts["v2 DELTA_32 (eh_frame CIE pointer)"] += int((cie & ~ok).sum())
                ok |= cie
        elif k == 12:  # IMAGE_OFF_32: target - image start
            value = layout.read(a, 4).astype(np.int64)
            ok = value == t - layout.base
            # ld64 ends __unwind_info's top-level index with a sentinel holding the end of the last
            # function + 1 (llvm-objdump --unwind-info lists it); its entry's target is that last
            # function's start. dyld rewrites the value only if the target section moves inside
            # __TEXT, which no cache builder does
            sentinel = (a == layout.unwind_sentinel()) & (
                value == sizes[tsec[sel]] + starts[tsec[sel]] + 1 - layout.base
            )
            counts["v2 IMAGE_OFF_32 (unwind index sentinel)"] += int((sentinel & ~ok).sum())
            ok |= sentinel
        elif k == 5:  # ADRP: page(location) + imm21 pages = page(target)
            w = layout.read(a, 4).astype(np.int64)
            imm = _signed(((w >> 5) & 0x7FFFF) << 2 | ((w >> 29) & 3), 21)
            ok = ((w & 0x9F000000) == 0x90000000) & (((a & ~0xFFF) + (imm << 12)) == (t & ~0xFFF))
        elif k == 6:  # OFF12: ADD imm12, or a load/store with a scaled unsigned imm12 = target's page offset
            w = layout.read(a, 4).astype(np.int64)
            imm12 = (w >> 10) & 0xFFF
            is_add = (w & 0xFFC00000) == 0x91000000
            is_ldst = (w & 0x3B000000) == 0x39000000
            # size field, +4 for a 128-bit SIMD&FP access (V set, size 00, opc 1x)
            scale = ((w >> 30) & 3) + np.where(
                ((w >> 26) & 1 == 1) & ((w >> 30) & 3 == 0) & ((w >> 23) & 1 == 1), 4, 0
            )
            ok = (is_add & (imm12 == (t & 0xFFF))) | (is_ldst & ((imm12 << scale) == (t & 0xFFF)))
        elif k == 7:  # BR26: B / BL whose imm26 words reach the target
            w = layout.read(a, 4).astype(np.int64)
            ok = ((w & 0x7C000000) == 0x14000000) & (a + 4 * _signed(w & 0x3FFFFFF, 26) == t)
        else:
            counts[f"v2 {name} (in range)"] += int(sel.sum())
            continue
        if not ok.all():
            _fail(f"v2 {name}", ~ok, a)
        counts[f"v2 {name}"] += int(sel.sum())
    return counts


def _code_sections(layout: Layout) -> set[int]:
    return {
        i
        for i, s in enumerate(layout.sections, 1)
        if "PURE_INSTRUCTIONS" in s.attributes or "SOME_INSTRUCTIONS" in s.attributes
    }


def _rip_relative_targets(layout: Layout, locations: np.ndarray) -> np.ndarray:
    """For each location of a 32-bit field in x86_64 code: the target of the RIP-relative operand
    whose displacement is that field, decoded by capstone (-1 when there is none). The ModRM byte
    just before a RIP-relative disp32 has mod 00 and r/m 101 (no SIB byte can come between); the
    instruction starts at most 15 bytes before its end."""
    import capstone
    from capstone import x86 as X

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    data = layout.data
    offsets = layout.file_offsets(locations, 4)
    out = np.full(len(locations), -1, dtype=np.int64)
    for i, (addr, off) in enumerate(zip(locations.tolist(), offsets.tolist(), strict=True)):
        if data[off - 1] & 0xC7 != 0x05:
            continue
        for back in range(2, 15):  # opcode (1-3 bytes), prefixes, REX/VEX before the ModRM byte
            insn = next(md.disasm(data[off - back : off - back + 15], addr - back, 1), None)
            if insn is None or insn.disp_offset != back:
                continue
            if any(op.type == X.X86_OP_MEM and op.mem.base == X.X86_REG_RIP for op in insn.operands):
                (disp,) = struct.unpack_from("<i", data, off)
                out[i] = insn.address + insn.size + disp
                break
    return out


def check_split_seg_v1(layout: Layout, entries: list[tuple[int, int]]) -> Counter[str]:
    """Every v1 entry (x86_64: a 32-bit value that moves with __DATA, or a 64-bit pointer), checked
    where it points."""
    counts: Counter[str] = Counter()
    if not entries:
        return counts
    kind = np.array([k for k, _ in entries], dtype=np.int64)
    at = layout.base + np.array([o for _, o in entries], dtype=np.int64)
    text = layout.segment_of(np.array([layout.base]))[0]
    assert (layout.segment_of(at) == text).all(), "a v1 location lies outside __TEXT"
    assert set(kind.tolist()) <= {1, 2}, f"v1 kinds {set(kind.tolist())} in an x86_64 image"
    if (kind == 2).any():
        a = at[kind == 2]
        ok = np.array([int(x) in layout.rebases for x in a])
        if not ok.all():
            _fail("v1 64-bit pointer", ~ok, a)
        counts["v1 64-bit pointer (rebase)"] += len(a)
    a = at[kind == 1]
    section = layout.section_of(a)
    names = np.array(["-"] + [s.sectname for s in layout.sections], dtype=object)[section]
    code = np.isin(section, sorted(_code_sections(layout)))
    target = np.full(len(a), -1, dtype=np.int64)
    target[code] = _rip_relative_targets(layout, a[code])
    image_off = names == "__unwind_info"  # personality entries: offsets from the mach header
    target[image_off] = layout.base + layout.read(a[image_off], 4).astype(np.int64)
    pcrel = ~code & ~image_off  # DWARF pc-relative pointers (eh_frame personalities, LSDA type tables)
    target[pcrel] = a[pcrel] + _signed(layout.read(a[pcrel], 4), 32)
    seg = layout.segment_of(target)
    ok = (target >= 0) & (seg >= 0) & (seg != text)
    if not ok.all():
        _fail("v1 32-bit", ~ok, a)
    counts["v1 32-bit RIP-relative (capstone)"] += int(code.sum())
    counts["v1 32-bit image offset"] += int(image_off.sum())
    counts["v1 32-bit pc-relative"] += int(pcrel.sum())
    return counts


def check_split_seg(image: MachOFile, s: Slice, ll: objdump.Listing) -> Counter[str]:
    """Our split seg entries equal the hand decoder's, and every entry checks out."""
    data = s.bytes()
    raw = load_command_payload(data, LC_SEGMENT_SPLIT_INFO)
    ours = image.split_seg
    if not raw:
        assert ours is None, s
        return Counter()
    layout = _layout(s)
    assert ours is not None
    if raw[0] == 0x7F:
        v2 = decode_split_seg_v2(raw)
        assert ours.version == 2
        assert [SplitEntry(*(int(x) for x in e)) for e in ours.entries.tolist()] == v2
        counts = check_split_seg_v2(layout, v2)
        counts["split seg entries"] = len(v2)
    else:
        v1 = decode_split_seg_v1(raw)
        assert ours.version == 1
        assert [(int(k), int(o)) for k, o in ours.entries.tolist()] == v1
        counts = check_split_seg_v1(layout, v1)
        counts["split seg entries"] = len(v1)
    return counts


# ---------------------------------------------------------------------------------------------
# the comparison


_REPORTED = (
    "slices",
    "load_commands",
    "exports",
    "rebases",
    "binds",
    "weak_binds",
    "lazy_binds",
    "chained_fixups",
    "split seg entries",
    "indirect_symbols",
    "function_starts",
    "data_in_code",
)


def _report(totals: dict[str, Counter[str]], skipped: dict[str, Counter[str]]) -> str:
    lines = ["reader vs llvm-objdump-22 on shared/data/real:"]
    for folder in sorted(set(totals) | set(skipped)):
        t = totals[folder]
        lines.append(f"  {folder}: " + ", ".join(f"{k} {t[k]}" for k in _REPORTED))
        detail = {k: v for k, v in t.items() if k.startswith("v1 ") or k.startswith("v2 ")}
        if detail:
            lines.append("    split seg checked: " + ", ".join(f"{k} {v}" for k, v in sorted(detail.items())))
        if skipped[folder]:
            lines.append(
                "    not compared: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped[folder].items()))
            )
    return "\n".join(lines)


def test_reader_agrees_with_objdump_on_every_slice(capsys: pytest.CaptureFixture[str]) -> None:
    python_module("capstone")
    slices, others = inventory()
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    skipped: dict[str, Counter[str]] = defaultdict(Counter)
    for s in slices:
        if not s.is64:
            skipped[s.folder][f"32-bit {s.arch} slices"] += 1
    for p in others:
        skipped[p.relative_to(shared_path("data", "real")).parts[0]]["non-Mach-O files"] += 1
    for s in slices64():
        ll = listing(s)
        if ll.problem is not None:
            skipped[s.folder]["slices llvm-objdump rejects"] += 1
            continue
        image = open_slice(s)
        counts = check_image(image, ll)
        counts.update(check_split_seg(image, s, ll))
        totals[s.folder].update(counts)
    with capsys.disabled():
        print("\n" + _report(totals, skipped))
    for folder in ("macos10.14-x86_64-usr-lib", "ios14.4-arm64-procursus", "no-split-seg"):
        t = totals[folder]
        assert t["slices"] and t["load_commands"] and t["exports"] and t["rebases"] and t["binds"], folder
    assert totals["macos10.14-x86_64-usr-lib"]["v1 32-bit RIP-relative (capstone)"]
    assert totals["ios14.4-arm64-procursus"]["v2 ARM64_ADRP"]
    assert sum(t["weak_binds"] for t in totals.values()) and sum(t["lazy_binds"] for t in totals.values())


# ---------------------------------------------------------------------------------------------
# what must be rejected


def assert_rejected(read: object, path: Path, *, why: str = "") -> MachOFormatError:
    """``read()`` raises a MachOFormatError naming ``path``, an offset and the problem."""
    with pytest.raises(MachOFormatError) as info:
        read()  # type: ignore[operator]
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(r": offset 0x[0-9a-f]+: \S", message), f"no offset or no problem in: {message} {why}"
    return info.value


def _read_all(path: Path, arch: str | None) -> None:
    touch_image(open_macho(path, arch))


#: what llvm-objdump says is wrong with a slice of the corpus -> what our reader's message says
#: about the same problem
SAME_PROBLEM = {
    "LC_SEGMENT_64 cmdsize too small": "LC_SEGMENT_64 cmdsize",
    "greater than the segment": "is not inside segment",  # size field of section N ...
    "greater than than the segment's vmaddr plus vmsize": "is not inside segment",  # addr plus size
    "bad bind info (bad opcode value 0xd0": "BIND_OPCODE_THREADED",
}


def test_slices_llvm_rejects_are_rejected() -> None:
    """llvm-objdump reports an error for these slices (rizin-mach0's damaged arm64 slices, and
    arm64e threaded binds, BIND_OPCODE_THREADED, which it does not decode); our reader raises a
    MachOFormatError about the same problem."""
    rejected = [s for s in slices64() if listing(s).problem is not None]
    assert len(rejected) >= 3
    for s in rejected:
        problem = str(listing(s).problem)
        error = assert_rejected(
            lambda s=s: _read_all(s.path, s.arch if s.in_fat else None), s.path, why=problem
        )
        ours = [v for k, v in SAME_PROBLEM.items() if k in problem]
        assert ours, f"{s}: llvm-objdump's problem is new to this test: {problem}"
        assert ours[0] in error.message, f"{s}: llvm-objdump: {problem}; ours: {error}"


def test_a_section_outside_its_segment_is_rejected(tmp_path: Path) -> None:
    """A real dylib whose __text is made to reach past __TEXT (as xpcd_cache.dylib's arm64 slice
    does): dyld's segment validation and llvm-objdump reject it, so does our reader."""
    path = shared_path("data", "real", "macos10.14-x86_64-usr-lib", "usr", "lib", "libcupolicy.dylib")
    data = bytearray(path.read_bytes())
    # the first section record follows the first LC_SEGMENT_64 (__TEXT: vmsize at +32)
    assert data[32:36] == b"\x19\0\0\0" and data[40:46] == b"__TEXT"
    (vmsize,) = struct.unpack_from("<Q", data, 32 + 32)
    section = 32 + 72
    (addr,) = struct.unpack_from("<Q", data, section + 32)
    struct.pack_into("<Q", data, section + 40, vmsize - addr + 1)
    bad = tmp_path / path.name
    bad.write_bytes(bytes(data))
    problem = objdump.listing(bad).problem
    assert problem is not None and "of section 0 in LC_SEGMENT_64 command 0 greater than" in problem
    error = assert_rejected(lambda: open_macho(bad), bad)
    assert (
        error.offset == section
        and "__TEXT,__text" in error.message
        and "is not inside segment __TEXT" in error.message
    )


def test_32bit_slices_are_rejected() -> None:
    slices = [s for s in inventory()[0] if not s.is64]
    assert {s.arch for s in slices} >= {"i386", "armv7"}
    for s in slices:
        view = memoryview(_file_bytes(s.path))[s.offset : s.offset + s.size]
        error = assert_rejected(
            lambda s=s, view=view: MachOFile(view, str(s.path), file_offset=s.offset), s.path
        )
        assert error.offset == s.offset and "32-bit" in error.message, error
        if s.arch == "i386":  # our reader names this arch like Apple does: select the slice by it
            assert_rejected(lambda s=s: open_macho(s.path, "i386"), s.path)


def test_files_that_are_no_macho_are_rejected() -> None:
    others = inventory()[1]
    assert any(p.stat().st_size == 0 for p in others) and any(p.stat().st_size > 0 for p in others)
    for path in others:
        assert objdump.run_raw(path, "--private-headers").stdout.strip().endswith("is not an object file")
        assert_rejected(lambda path=path: open_macho(path), path)


# ---------------------------------------------------------------------------------------------
# real files cut short

#: files cut short below: thin arm64, thin x86_64, fat i386 + x86_64, fat x86_64 + x86_64h + i386
TRUNCATED = (
    "ios14.4-arm64-procursus/procursus/usr/lib/liblz4.1.9.2.dylib",
    "macos10.14-x86_64-usr-lib/usr/lib/libcupolicy.dylib",
    "macos10.14-x86_64-usr-lib/usr/lib/libcupsmime.1.dylib",
    "macos10.14-x86_64-usr-lib/usr/lib/libcompression.dylib",
)


def _cut_points(s: Slice) -> dict[str, int]:
    """Where to cut the file: in the mach header, in the load commands, right after them, and in
    __LINKEDIT (its start, the middle of the exports trie, its last byte); file offsets."""
    data = s.bytes()
    ncmds, sizeofcmds = struct.unpack_from("<II", data, 16)
    points = {
        "mach header": 20,
        "load commands": 32 + sizeofcmds // 2,
        "after the load commands": 32 + sizeofcmds,
    }
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x19 and data[off + 8 : off + 24].rstrip(b"\0") == b"__LINKEDIT":
            fileoff, filesize = struct.unpack_from("<QQ", data, off + 40)
            points["__LINKEDIT start"] = fileoff + 1
            points["__LINKEDIT last byte"] = fileoff + filesize - 1
        elif cmd == 0x80000022:  # LC_DYLD_INFO_ONLY: export_off, export_size
            export_off, export_size = struct.unpack_from("<II", data, off + 40)
            points["exports trie"] = export_off + export_size // 2
        off += size
    assert len(points) == 6, (s, points)
    return {what: s.offset + at for what, at in points.items()}


@pytest.mark.parametrize("name", TRUNCATED)
def test_files_cut_short_are_rejected(name: str, tmp_path: Path) -> None:
    path = shared_path("data", "real", *name.split("/"))
    slices = [s for s in inventory()[0] if s.path == path]
    assert slices, path
    whole = _file_bytes(path)
    for s in (s for s in slices if s.is64):
        for what, at in _cut_points(s).items():
            cut = tmp_path / f"{s.arch}-{what.replace(' ', '-')}-{path.name}"
            cut.write_bytes(whole[:at])
            arch = s.arch if s.in_fat else None
            problem = objdump.listing(cut, arch).problem
            assert problem is not None, f"llvm-objdump lists {cut} (cut in the {what}) without complaint"
            assert_rejected(lambda cut=cut, arch=arch: _read_all(cut, arch), cut, why=f"cut in the {what}")


# ---------------------------------------------------------------------------------------------
# the comparisons can fail


def _first(predicate: Callable[[Slice, objdump.Listing], bool]) -> Slice:
    return next(s for s in slices64() if listing(s).problem is None and predicate(s, listing(s)))


def _changed(s: Slice, **attributes: object) -> MachOFile:
    """The slice as our reader reads it, with some of its decoded tables replaced."""
    image = open_slice(s)
    image.__dict__.update(attributes)  # the LINKEDIT decoders are cached properties
    return image


def _records(image: MachOFile, change: Callable[[np.ndarray], None]) -> Fixups:
    fixups = image.fixups
    records = fixups.records.copy()
    change(records)
    return dataclasses.replace(fixups, records=records)


def _nth(records: np.ndarray, kind: int, lazy: bool, n: int = 0) -> int:
    match = (records["kind"] == kind) & (((records["flags"] & FIXUP_FLAG_LAZY) != 0) == lazy)
    return int(np.flatnonzero(match)[n])


def test_the_comparison_catches_one_wrong_entry() -> None:
    """check_image (objdump_agreement) fails when the reader gets one entry of any table wrong."""
    s = _first(lambda s, ll: bool(objdump.parse_weak_bind_table(ll.tables())) and bool(ll.data_in_code()))
    ll = listing(s)
    image = open_slice(s)
    check_image(image, ll)
    exports = image.exports
    fixups = image.fixups

    def shift(field: str, kind: int, lazy: bool, by: int) -> Callable[[np.ndarray], None]:
        def change(records: np.ndarray) -> None:
            k = _nth(records, kind, lazy)
            if field == "bind":  # another import
                records[field][k] = (int(records[field][k]) + by) % len(fixups.imports)
            else:
                records[field][k] += by

        return change

    wrong: dict[str, dict[str, object]] = {
        "an export missing": {"exports": exports[1:]},
        "an export's address": {
            "exports": [dataclasses.replace(exports[0], address=exports[0].address + 4), *exports[1:]]
        },
        "a rebase's address": {"fixups": _records(image, shift("address", FixupKind.REBASE, False, 8))},
        "a bind's addend": {"fixups": _records(image, shift("addend", FixupKind.BIND, False, 1))},
        "a lazy bind's symbol": {"fixups": _records(image, shift("bind", FixupKind.BIND, True, 1))},
        "a weak bind missing": {"fixups": dataclasses.replace(fixups, weak_binds=fixups.weak_binds[1:])},
        "a dependency's version": {
            "dylibs": [dataclasses.replace(image.dylibs[0], current_version=1), *image.dylibs[1:]]
        },
        "an indirect symbol": {"indirect_symbols": image.indirect_symbols + np.uint32(1)},
        "a function start missing": {"function_starts": image.function_starts[1:]},
        "a data-in-code entry's length": {"data_in_code": _plus_one(image.data_in_code, "length")},
    }
    for what, attributes in wrong.items():
        try:
            check_image(_changed(s, **attributes), ll)
        except AssertionError:
            continue
        pytest.fail(f"the comparison accepts a reader that gets {what} wrong ({s})")


def _plus_one(table: np.ndarray, field: str) -> np.ndarray:
    out = table.copy()
    out[field][0] += 1
    return out


@pytest.mark.parametrize(("kind", "by"), [(1, 1), (1, -4), (2, 0)])
def test_the_split_seg_v1_check_catches_a_wrong_entry(kind: int, by: int) -> None:
    """A v1 entry moved off its RIP-relative displacement fails the capstone check; one that calls
    it a 64-bit pointer fails the rebase check."""
    python_module("capstone")
    s = _first(lambda s, ll: s.arch == "x86_64" and s.path.name == "libcupsmime.1.dylib")
    layout = _layout(s)
    entries = decode_split_seg_v1(load_command_payload(s.bytes(), LC_SEGMENT_SPLIT_INFO) or b"")
    assert check_split_seg_v1(layout, entries)["v1 32-bit RIP-relative (capstone)"]
    entries[0] = (kind, entries[0][1] + by)
    with pytest.raises(pytest.fail.Exception, match="do not hold what they say"):
        check_split_seg_v1(layout, entries)


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        (2, {"to_offset": 8}),  # POINTER_64 to somewhere else
        (3, {"to_offset": 4}),  # DELTA_32
        (5, {"to_offset": 0x1000}),  # ADRP to the next page
        (6, {"to_offset": 8}),  # OFF12
        (7, {"to_offset": 4}),  # BR26
        (7, {"from_offset": 4}),  # BR26 on the next instruction
        (12, {"to_offset": 4}),  # IMAGE_OFF_32
    ],
)
def test_the_split_seg_v2_check_catches_a_wrong_entry(kind: int, change: dict[str, int]) -> None:
    """One v2 entry moved (its target or its location) fails the check of its kind."""
    for s in slices64():
        raw = load_command_payload(s.bytes(), LC_SEGMENT_SPLIT_INFO) if listing(s).problem is None else None
        if not raw or raw[0] != 0x7F:
            continue
        layout = _layout(s)
        entries = decode_split_seg_v2(raw)
        sections = layout.sections
        # an entry that, changed, still lies inside its sections (else the range check fails first)
        k = next(
            (
                i
                for i, e in enumerate(entries)
                if e.kind == kind
                and e.from_section
                and e.to_section
                and e.from_offset + change.get("from_offset", 0) + 8 <= sections[e.from_section - 1].size
                and e.to_offset + change.get("to_offset", 0) <= sections[e.to_section - 1].size
            ),
            None,
        )
        if k is not None:
            break
    else:
        pytest.fail(f"no split seg v2 entry of kind {kind} to change")
    check_split_seg_v2(layout, entries)
    entries[k] = dataclasses.replace(
        entries[k], **{f: getattr(entries[k], f) + by for f, by in change.items()}
    )
    with pytest.raises(pytest.fail.Exception, match="do not hold what they say"):
        check_split_seg_v2(layout, entries)


def _layout(s: Slice) -> Layout:
    ll = listing(s)
    tables = ll.tables()
    exports = {e.name: e.address for e in ll.exports() if e.address is not None}
    ph = ll.private_headers()
    return Layout(
        s.bytes(),
        ph.segments,
        ph.sections,
        {addr for _, _, addr, _ in objdump.parse_rebase_table(tables)},
        {b.address: exports[b.symbol] for b in objdump.parse_bind_table(tables) if b.symbol in exports},
    )
