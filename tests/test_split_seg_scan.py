"""Split seg info v2 of the linked examples (LC_SEGMENT_SPLIT_INFO, linker-notes §6) against an
independent scan of each dylib: its code decoded with capstone 4.0.2, its pointers as llvm-objdump
(or LIEF, for arm64e) lists the fixups.

Every reference the cache builder must adjust when it moves segments apart needs an entry:
arm64 ADRP + the ADD/LDR/STR consuming its register (ARM64_ADRP / ARM64_OFF12), BL/B into another
section (ARM64_BR26), x86_64 RIP-relative displacements and rel32 branches into another section
(DELTA_32), and every in-image pointer (POINTER_64, THREADED_POINTER_64 on arm64e), each with the
target the code or pointer actually reaches. Conversely every code entry must sit on such an
instruction. The entries are decoded by hand (tests/oracles.py) and must also equal our reader's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import objdump
import pytest
from conftest import python_module
from linked_examples import CONFIGS, NAMES, linked
from oracles import SPLIT_KIND_NAMES, SplitEntry, lief_chained_fixups, split_seg_entries

from dyldcache.macho.file import open_macho

POINTER_64, DELTA_32, ARM64_ADRP, ARM64_OFF12, ARM64_BR26, THREADED_POINTER_64 = 2, 3, 5, 6, 7, 13
CODE_KINDS = {ARM64_ADRP, ARM64_OFF12, ARM64_BR26}
#: registers a call may clobber (AAPCS64: x0-x18 and the link register)
CALL_CLOBBERED = {f"x{i}" for i in range(19)} | {"x30"}


@dataclass(frozen=True)
class Ref:
    """A location the builder must adjust: what kind of entry it needs and what it reaches."""

    kind: int
    at: int
    target: int
    #: False for an ADRP with no consumer in sight: only its page is known
    exact: bool
    what: str


@dataclass
class Image:
    """One dylib as the independent readers see it."""

    path: Path
    arch: str
    data: bytes
    sections: list[objdump.ObjSection]
    segments: list[objdump.ObjSegment]
    function_starts: set[int]
    #: code facts by location: (class, target) where class is adrp/off12/br26/rel32
    facts: dict[int, tuple[str, int]] = field(default_factory=dict)
    #: code words the scan could not decode
    unknown: list[int] = field(default_factory=list)

    def section_index(self, addr: int) -> int | None:
        """1-based index of the section holding ``addr`` (0 for the mach header and load commands)."""
        for i, s in enumerate(self.sections, 1):
            if s.addr <= addr < s.addr + s.size:
                return i
        if 0 <= addr < self.sections[0].addr:
            return 0
        return None

    def segment(self, addr: int) -> str | None:
        for seg in self.segments:
            if seg.vmaddr <= addr < seg.vmaddr + seg.vmsize:
                return seg.name
        return None

    def section_name(self, index: int | None) -> str:
        if index is None:
            return "?"
        return "mach header" if index == 0 else self.sections[index - 1].sectname

    def address(self, section: int, offset: int) -> int:
        return (self.sections[section - 1].addr if section else 0) + offset

    def reaches(self, section: int, target: int) -> bool:
        """Can an entry whose to-section is ``section`` denote ``target``? (A pointer one past a
        section's end belongs to that section as much as to the next one.)"""
        if section == 0:
            return 0 <= target < self.sections[0].addr
        if not 1 <= section <= len(self.sections):
            return False
        s = self.sections[section - 1]
        return s.addr <= target <= s.addr + s.size


def _image(path: Path, arch: str) -> Image:
    ph = objdump.private_headers(path)
    return Image(path, arch, path.read_bytes(), ph.sections, ph.segments, set(objdump.function_starts(path)))


def _code_sections(image: Image) -> list[objdump.ObjSection]:
    return [
        s
        for s in image.sections
        if "PURE_INSTRUCTIONS" in s.attributes or "SOME_INSTRUCTIONS" in s.attributes
    ]


# ---------------------------------------------------------------------------------------------
# the code scan


def _scan_arm64(image: Image) -> list[Ref]:
    import capstone
    from capstone import arm64 as A

    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md.detail = True
    md.skipdata = True
    refs: list[Ref] = []

    def xreg(reg: int) -> str:
        name = md.reg_name(reg) or ""
        return "x" + name[1:] if name.startswith("w") and name[1:].isdigit() else name

    calls = {A.ARM64_INS_BL, A.ARM64_INS_BLR}
    for name in ("BLRAA", "BLRAAZ", "BLRAB", "BLRABZ"):
        calls.add(getattr(A, f"ARM64_INS_{name}", -1))

    for sect in _code_sections(image):
        code = image.data[sect.offset : sect.offset + sect.size]
        here = image.section_index(sect.addr)
        #: register -> (page, address of the ADRP, consumers seen)
        pages: dict[str, list[int]] = {}

        def close(reg: str, pages: dict[str, list[int]] = pages) -> None:
            page, at, used = pages.pop(reg)
            if not used and image.segment(page) != image.segment(at):
                refs.append(Ref(ARM64_ADRP, at, page, False, f"adrp at {at:#x} (no consumer found)"))

        for insn in md.disasm(code, sect.addr):
            if insn.id == 0:
                # capstone 4 predates ARMv8.3 pointer authentication: decode those by hand
                (word,) = struct.unpack("<I", insn.bytes)
                if word & 0xFEFFF800 == 0xD63F0800:  # blraa/blraaz/blrab/blrabz: a call
                    for reg in [r for r in pages if r in CALL_CLOBBERED]:
                        close(reg)
                elif word & 0xFEFFF800 == 0xD61F0800 or word in (0xD65F0BFF, 0xD65F0FFF):
                    pass  # braa/braaz/brab/brabz, retaa/retab: branches, no register written
                elif word & 0xFFFF8000 == 0xDAC10000 or word & 0xFF200400 == 0xF8200400:
                    # pac*/aut*/xpac* (data processing, 1 source) or ldraa/ldrab: they write Rd
                    if f"x{word & 31}" in pages:
                        close(f"x{word & 31}")
                else:
                    image.unknown.append(insn.address)
                    for reg in list(pages):
                        close(reg)
                continue
            if insn.address in image.function_starts:
                for reg in list(pages):
                    close(reg)
            (word,) = struct.unpack("<I", insn.bytes)
            ops = insn.operands
            if insn.id == A.ARM64_INS_ADRP:
                reg = xreg(ops[0].reg)
                if reg in pages:
                    close(reg)
                page = ops[1].imm
                pages[reg] = [page, insn.address, 0]
                image.facts[insn.address] = ("adrp", page)
                continue
            consumed = None
            if word & 0xFF800000 == 0x91000000 and xreg(ops[1].reg) in pages:  # add xd, xn, #imm12
                consumed = (xreg(ops[1].reg), ops[2].imm)
            elif word & 0x3B000000 == 0x39000000:  # load/store, unsigned 12-bit offset
                mem = next(o for o in ops if o.type == A.ARM64_OP_MEM)
                if xreg(mem.mem.base) in pages:
                    consumed = (xreg(mem.mem.base), mem.mem.disp)
            if consumed is not None:
                reg, offset = consumed
                entry = pages[reg]
                page, at = entry[0], entry[1]
                entry[2] += 1
                target = page + offset
                image.facts[insn.address] = ("off12", target)
                to = image.section_index(target)
                if to != image.section_index(at):
                    refs.append(Ref(ARM64_ADRP, at, target, True, f"adrp at {at:#x} for {insn.address:#x}"))
                if to != image.section_index(insn.address):
                    refs.append(
                        Ref(ARM64_OFF12, insn.address, target, True, f"{insn.mnemonic} {insn.op_str}")
                    )
            if word & 0x7C000000 == 0x14000000:  # b / bl with imm26 (not b.cond)
                assert insn.id in (A.ARM64_INS_BL, A.ARM64_INS_B) and ops[0].type == A.ARM64_OP_IMM
                target = ops[0].imm
                image.facts[insn.address] = ("br26", target)
                if image.section_index(target) != here:
                    refs.append(Ref(ARM64_BR26, insn.address, target, True, f"{insn.mnemonic} {target:#x}"))
            _, written = insn.regs_access()
            for r in written:
                reg = xreg(r)
                if reg in pages:
                    close(reg)
            if insn.id in calls:
                for reg in [r for r in pages if r in CALL_CLOBBERED]:
                    close(reg)
        for reg in list(pages):
            close(reg)
    return refs


def _scan_x86_64(image: Image) -> list[Ref]:
    import capstone
    from capstone import x86 as X

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    md.skipdata = True
    refs: list[Ref] = []
    for sect in _code_sections(image):
        code = image.data[sect.offset : sect.offset + sect.size]
        here = image.section_index(sect.addr)
        for insn in md.disasm(code, sect.addr):
            if insn.id == 0:
                image.unknown.append(insn.address)
                continue
            end = insn.address + insn.size
            for op in insn.operands:
                if op.type == X.X86_OP_MEM and op.mem.base == X.X86_REG_RIP:
                    at, target = insn.address + insn.disp_offset, end + op.mem.disp
                elif (
                    op.type == X.X86_OP_IMM
                    and insn.imm_size == 4
                    and (capstone.CS_GRP_JUMP in insn.groups or capstone.CS_GRP_CALL in insn.groups)
                ):
                    at, target = insn.address + insn.imm_offset, op.imm
                else:
                    continue
                # the 32-bit field is the displacement: it plus the end of the instruction is the target
                (disp,) = struct.unpack_from("<i", image.data, sect.offset + at - sect.addr)
                assert end + disp == target, (hex(insn.address), insn.mnemonic, insn.op_str)
                image.facts[at] = ("rel32", target)
                if image.section_index(target) != here:
                    refs.append(
                        Ref(DELTA_32, at, target, True, f"{insn.mnemonic} {insn.op_str} at {insn.address:#x}")
                    )
    return refs


# ---------------------------------------------------------------------------------------------
# pointers


def _pointer_refs(image: Image, fixups: str) -> list[Ref]:
    """Every in-image pointer: rebases, and binds that resolve to this image's own weak definitions."""
    path = image.path
    kind = THREADED_POINTER_64 if image.arch == "arm64e" else POINTER_64
    own = {e.name: e.address for e in objdump.exports_trie(path) if e.address is not None}
    found: list[tuple[int, int, str]] = []
    if fixups == "opcodes":
        for _, _, addr, _ in objdump.rebase_table(path):
            off = next(
                s.fileoff + addr - s.vmaddr
                for s in image.segments
                if s.vmaddr <= addr < s.vmaddr + s.filesize
            )
            found.append((addr, struct.unpack_from("<Q", image.data, off)[0], "rebase"))
    elif image.arch == "arm64e":
        for f in lief_chained_fixups(path):
            if f.target is not None:
                found.append((f.address, f.target, "rebase"))
            elif f.ordinal == -3 and f.symbol in own:
                assert f.addend is not None
                found.append((f.address, own[f.symbol] + f.addend, f"weak bind {f.symbol}"))
    else:
        for row in objdump.dyld_info(path):
            if row.kind == "rebase":
                assert row.target is not None
                found.append((row.address, row.target, "rebase"))
            elif row.dylib == "weak" and row.symbol in own:
                assert row.addend is not None
                found.append((row.address, own[row.symbol] + row.addend, f"weak bind {row.symbol}"))
    return [Ref(kind, at, target, True, f"{what} at {at:#x}") for at, target, what in found]


# ---------------------------------------------------------------------------------------------
# the checker


def expected_refs(image: Image, fixups: str) -> list[Ref]:
    scan = _scan_x86_64 if image.arch == "x86_64" else _scan_arm64
    return scan(image) + _pointer_refs(image, fixups)


def check(image: Image, entries: list[SplitEntry], refs: list[Ref]) -> list[str]:
    """Problems found: required references without a matching entry, and code or pointer entries
    that match nothing in the code or the fixups."""
    problems = []
    located: dict[
        tuple[int, int], list[tuple[int, int]]
    ] = {}  # (kind, from address) -> [(to section, target)]
    for e in entries:
        if not 0 <= e.from_section <= len(image.sections) or not 0 <= e.to_section <= len(image.sections):
            problems.append(f"entry {e} names a section that does not exist")
            continue
        at = image.address(e.from_section, e.from_offset)
        located.setdefault((e.kind, at), []).append((e.to_section, image.address(e.to_section, e.to_offset)))
    for ref in refs:
        name = SPLIT_KIND_NAMES[ref.kind]
        got = located.get((ref.kind, ref.at))
        where = f"{image.section_name(image.section_index(ref.at))}+{ref.at:#x}"
        if not got:
            problems.append(f"missing {name} entry at {ref.at:#x} ({where}: {ref.what}) -> {ref.target:#x}")
            continue
        ok = any(
            (t == ref.target if ref.exact else t & ~0xFFF == ref.target & ~0xFFF)
            and image.reaches(sect, ref.target)
            for sect, t in got
        )
        if not ok:
            targets = ", ".join(f"{image.section_name(s)}+{t:#x}" for s, t in got)
            problems.append(
                f"{name} entry at {ref.at:#x} ({ref.what}) points at {targets}, not {ref.target:#x}"
            )
    # the other way round: entries of the kinds scanned must match what the code / pointers hold
    code = {s_i for s_i, s in enumerate(image.sections, 1) if s in _code_sections(image)}
    pointer_kind = THREADED_POINTER_64 if image.arch == "arm64e" else POINTER_64
    pointers = {r.at: r.target for r in refs if r.kind == pointer_kind}
    for e in entries:
        at = image.address(e.from_section, e.from_offset)
        target = image.address(e.to_section, e.to_offset)
        name = SPLIT_KIND_NAMES.get(e.kind, str(e.kind))
        fact = image.facts.get(at)
        if e.kind in CODE_KINDS or (e.kind == DELTA_32 and e.from_section in code):
            want = {ARM64_ADRP: "adrp", ARM64_OFF12: "off12", ARM64_BR26: "br26", DELTA_32: "rel32"}[e.kind]
            if fact is None or fact[0] != want:
                problems.append(f"{name} entry at {at:#x} is not on a {want} instruction ({fact})")
            elif (fact[1] & ~0xFFF != target & ~0xFFF) if want == "adrp" else (fact[1] != target):
                problems.append(f"{name} entry at {at:#x} says {target:#x}, the code reaches {fact[1]:#x}")
        elif e.kind in (POINTER_64, THREADED_POINTER_64):
            if e.kind != pointer_kind:
                problems.append(
                    f"{name} entry at {at:#x}: pointers of {image.arch} are {SPLIT_KIND_NAMES[pointer_kind]}"
                )
            elif at not in pointers:
                problems.append(f"{name} entry at {at:#x} is not an in-image pointer")
            elif pointers[at] != target:
                problems.append(
                    f"{name} entry at {at:#x} says {target:#x}, the pointer holds {pointers[at]:#x}"
                )
    return problems


def _entries(path: Path) -> list[SplitEntry]:
    entries = split_seg_entries(path)
    assert entries is not None, f"{path} has no split seg info"
    # our reader decodes the same stream to the same entries
    ours = open_macho(path).split_seg
    assert ours is not None and ours.version == 2
    assert [
        SplitEntry(
            int(e["kind"]),
            int(e["from_section"]),
            int(e["to_section"]),
            int(e["from_offset"]),
            int(e["to_offset"]),
        )
        for e in ours.entries
    ] == entries
    return entries


@pytest.mark.parametrize(
    ("arch", "fixups", "name"), [pytest.param(a, f, n, id=f"{a}-{f}-{n}") for a, f in CONFIGS for n in NAMES]
)
def test_split_seg_covers_every_reference(arch: str, fixups: str, name: str) -> None:
    python_module("capstone")
    path = linked(arch, fixups).path(name)
    image = _image(path, arch)
    entries = _entries(path)
    refs = expected_refs(image, fixups)
    problems = check(image, entries, refs)
    assert not problems, f"{len(problems)} problems in {path}:\n" + "\n".join(problems[:40])
    assert not image.unknown, f"the scan cannot decode the code at {[hex(a) for a in image.unknown]}"
    kinds = {r.kind for r in refs}
    if arch == "x86_64":
        assert DELTA_32 in kinds
    else:
        assert {ARM64_ADRP, ARM64_OFF12} <= kinds
        if name != "libsystem":
            assert ARM64_BR26 in kinds


def _first(entries: list[SplitEntry], kind: int, image: Image, code: bool) -> SplitEntry | None:
    code_sections = {i for i, s in enumerate(image.sections, 1) if s in _code_sections(image)}
    return next((e for e in entries if e.kind == kind and (e.from_section in code_sections) == code), None)


@pytest.mark.parametrize(
    ("arch", "kind", "code"),
    [
        ("arm64", ARM64_ADRP, True),
        ("arm64", ARM64_OFF12, True),
        ("arm64", ARM64_BR26, True),
        ("arm64", POINTER_64, False),
        ("arm64e", THREADED_POINTER_64, False),
        ("arm64e", ARM64_OFF12, True),
        ("x86_64", DELTA_32, True),
        ("x86_64", POINTER_64, False),
    ],
)
def test_checker_reports_a_removed_or_wrong_entry(arch: str, kind: int, code: bool) -> None:
    """The checker can fail: without one entry it names the missing location; with a wrong target or
    an entry where no reference is, it says so."""
    python_module("capstone")
    for name in ("libb", "liba"):  # x86_64 libb has no in-image pointer
        path = linked(arch).path(name)
        image = _image(path, arch)
        entries = _entries(path)
        victim = _first(entries, kind, image, code)
        if victim is not None:
            break
    assert victim is not None
    refs = expected_refs(image, "chained")
    assert check(image, entries, refs) == []
    at = image.address(victim.from_section, victim.from_offset)
    problems = check(image, [e for e in entries if e is not victim], refs)
    assert problems and all(f"{at:#x}" in p for p in problems), problems
    assert problems[0].startswith(f"missing {SPLIT_KIND_NAMES[kind]} entry at {at:#x}")
    shifted = SplitEntry(
        victim.kind, victim.from_section, victim.to_section, victim.from_offset, victim.to_offset + 0x1000
    )
    problems = check(image, [shifted if e is victim else e for e in entries], refs)
    assert any(f"entry at {at:#x}" in p and "points at" in p for p in problems), problems
    moved = SplitEntry(
        victim.kind, victim.from_section, victim.to_section, victim.from_offset + 2, victim.to_offset
    )
    problems = check(image, [*entries, moved], refs)
    assert any(f"entry at {at + 2:#x}" in p for p in problems), problems
