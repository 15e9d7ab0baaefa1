"""The linker's output (MH_DYLIB from clang objects, link/): the bundled examples linked for every
arch and fixup style, checked against llvm-objdump-22, llvm-nm-22, LIEF and the format rules of
linker-notes.md, plus the ``dyldcache link`` command line.

Oracles: llvm-objdump reads every output without a warning; its fixup, export, load-command,
indirect-symbol and unwind listings (and LIEF for arm64e chained fixups, which llvm-objdump
cannot decode) must agree with our reader entry for entry; the stub bytes, segment layout,
load commands, UUID and unwind coverage are checked against the rules worked out in this file;
unwind encodings are compared with the objects' own ``__compact_unwind`` as llvm-objdump lists it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import objdump
import pytest
from conftest import run_cli
from linked_examples import CONFIG_IDS, CONFIGS, NAMES, linked
from oracles import AUTH_BIND, AUTH_REBASE, BIND, REBASE, lief_chained_fixups
from test_chained_fixups import check_structure

from dyldcache.errors import LinkError
from dyldcache.examples import EXAMPLE_DYLIBS, OBJ_DIR, TBD_DIR, example, link_examples
from dyldcache.link.linker import LinkInput, LinkOptions, link
from dyldcache.macho.chained_fixups import parse_chained_fixups_blob
from dyldcache.macho.file import open_macho
from dyldcache.macho.fixups import FIXUP_FLAG_LAZY, FixupKind

PAGE = {"arm64": 0x4000, "arm64e": 0x4000, "x86_64": 0x1000}
DYLIB_PARAMS = [pytest.param(a, f, n, id=f"{a}-{f}-{n}") for a, f in CONFIGS for n in NAMES]
CONFIG_PARAMS = [pytest.param(a, f, id=i) for (a, f), i in zip(CONFIGS, CONFIG_IDS, strict=True)]
MISSING_DYLIB = "/usr/lib/libfxmissing.dylib"  # install-name of tbd/libfxmissing.tbd


@pytest.fixture(scope="module", autouse=True)
def _prefetch_listings() -> None:
    """Every llvm-objdump / llvm-nm listing the tests below read, run in parallel up front."""
    jobs: list[tuple[str | Path, tuple[str, ...]]] = []
    nm_paths = []
    for arch, fixups in CONFIGS:
        s = linked(arch, fixups)
        flag_sets = [
            ("--private-headers",),
            ("--exports-trie",),
            ("--unwind-info",),
            ("--function-starts",),
            ("--indirect-symbols",),
            ("--dylibs-used",),
            ("--private-headers", "--exports-trie", "--unwind-info", "--function-starts"),
        ]
        if fixups == "opcodes":
            flag_sets.append(("--rebase", "--bind", "--lazy-bind", "--weak-bind"))
        else:
            flag_sets.append(("--chained-fixups",))
            if arch != "arm64e":
                flag_sets.append(("--dyld-info",))
        for name, path in s.items():
            jobs += [(path, flags) for flags in flag_sets]
            jobs += [(s.object(name), ("--private-headers",)), (s.object(name), ("--unwind-info",))]
            nm_paths.append(path)
    objdump.prefetch(jobs, nm_paths)


def _path(arch: str, fixups: str, name: str) -> Path:
    return linked(arch, fixups).path(name)


def _dylib_name(ordinal: int, dylibs: list[str], llvm_name: str) -> bool:
    """Does llvm's dylib column denote library ordinal ``ordinal`` of an image with ``dylibs``?"""
    if ordinal <= 0:
        return llvm_name == objdump.SPECIAL_ORDINALS[ordinal]
    return objdump.short_name_matches(dylibs[ordinal - 1], llvm_name)


def _dependencies(path: Path) -> list[str]:
    """Install names of the LC_*_DYLIB dependencies in ordinal order, as llvm-objdump lists them."""
    return [name for name, _ in objdump.dylibs_used(path)[1:]]


# ---------------------------------------------------------------------------------------------
# arm64e refuses opcodes


def test_arm64e_refuses_opcode_fixups(tmp_path: Path) -> None:
    with pytest.raises(LinkError, match="arm64e needs chained fixups"):
        link_examples("arm64e", str(tmp_path), fixups="opcodes")
    with pytest.raises(LinkError, match="chained"):
        link(
            LinkOptions(
                arch="arm64e",
                output=str(tmp_path / "x.dylib"),
                install_name="/usr/lib/libSystem.B.dylib",
                inputs=[LinkInput(str(OBJ_DIR / "arm64e" / "libsystem.o"))],
                fixups="opcodes",
            )
        )
    assert not list(tmp_path.rglob("*.dylib")), "a refused link must not leave an output behind"


# ---------------------------------------------------------------------------------------------
# llvm-objdump reads every output cleanly


@pytest.mark.parametrize(("arch", "fixups", "name"), DYLIB_PARAMS)
def test_objdump_reads_without_warnings(arch: str, fixups: str, name: str) -> None:
    path = _path(arch, fixups, name)
    out = objdump.run_raw(path, "--private-headers", "--exports-trie", "--unwind-info", "--function-starts")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "Contents of __unwind_info section" in out.stdout
    assert "Exports trie:" in out.stdout
    assert "LC_SEGMENT_SPLIT_INFO" in out.stdout


# ---------------------------------------------------------------------------------------------
# fixups: entry for entry


def _check_chained_structure(path: Path) -> None:
    """--chained-fixups (header, starts per segment, imports) == parse_chained_fixups_blob."""
    listing = objdump.chained_fixups(path)
    image = open_macho(path)
    lc = image.linkedit_commands[0x80000034]
    data = path.read_bytes()
    info = parse_chained_fixups_blob(data[lc.dataoff : lc.dataoff + lc.datasize], str(path), lc.dataoff)
    check_structure(listing, info)
    # ... and the reader's uniform view carries the same imports
    assert [(i.name, i.ordinal, i.weak) for i in image.fixups.imports] == [
        (name, ordinal, bool(weak)) for ordinal, weak, _, name, _ in listing.imports
    ]


def _check_dyld_info(path: Path) -> int:
    """Chained formats llvm-objdump decodes (arm64, x86_64): --dyld-info row for row."""
    image = open_macho(path)
    fixups = image.fixups
    assert fixups.source == "chained"
    dylibs = _dependencies(path)
    rows = objdump.dyld_info(path)
    assert len(rows) == len(fixups.records)
    for r, row in zip(fixups.records, rows, strict=True):
        assert int(r["address"]) == row.address, row
        if row.kind == "rebase":
            assert int(r["kind"]) == FixupKind.REBASE, row
            assert int(r["target"]) == row.target, row
            # DYLD_CHAINED_PTR_64(_OFFSET): high8 is bits 36-43 of the raw pointer
            assert int(r["high8"]) == (row.pointer >> 36) & 0xFF, row
        else:
            assert int(r["kind"]) == FixupKind.BIND, row
            imp = fixups.imports[int(r["bind"])]
            assert (imp.name, int(r["addend"]), imp.weak) == (row.symbol, row.addend, row.weak_import), row
            assert row.dylib is not None and _dylib_name(imp.ordinal, dylibs, row.dylib), (imp, row)
    return len(rows)


def _check_lief(path: Path) -> int:
    """arm64e (pointer format 12): every pointer as LIEF decodes it, auth fields included."""
    image = open_macho(path)
    fixups = image.fixups
    expected = [
        (
            f.address,
            f.kind,
            f.target if f.kind in (REBASE, AUTH_REBASE) else None,
            f.high8,
            f.symbol,
            f.ordinal,
            f.addend,
            f.weak_import,
            f.key,
            f.diversity,
            f.addr_div,
        )
        for f in lief_chained_fixups(path)
    ]
    ours = []
    for r in fixups.records:
        kind = int(r["kind"])
        if kind in (BIND, AUTH_BIND):
            imp = fixups.imports[int(r["bind"])]
            what: tuple[object, ...] = (None, 0, imp.name, imp.ordinal, int(r["addend"]), imp.weak)
        else:
            what = (int(r["target"]), int(r["high8"]), None, None, None, False)
        ours.append((int(r["address"]), kind, *what, int(r["key"]), int(r["diversity"]), int(r["addr_div"])))
    assert ours == expected
    return len(ours)


def _check_opcodes(path: Path) -> int:
    """dyld-info opcodes: --rebase, --bind, --lazy-bind and --weak-bind, entry for entry."""
    image = open_macho(path)
    fixups = image.fixups
    assert fixups.source == "opcodes"
    data = path.read_bytes()
    dylibs = _dependencies(path)
    records = fixups.records
    rebases = records[records["kind"] == FixupKind.REBASE]
    assert sorted(a for _, _, a, _ in objdump.rebase_table(path)) == sorted(
        int(a) for a in rebases["address"]
    )
    for r in rebases:
        # opcode images hold the unslid target in place
        off = image.address_to_offset(int(r["address"]))
        assert off is not None
        assert int(r["target"]) | (int(r["high8"]) << 56) == struct.unpack_from("<Q", data, off)[0]
    binds = records[(records["kind"] == FixupKind.BIND) & ((records["flags"] & FIXUP_FLAG_LAZY) == 0)]
    lazy = records[(records["kind"] == FixupKind.BIND) & ((records["flags"] & FIXUP_FLAG_LAZY) != 0)]
    rows = objdump.bind_table(path)
    ours = sorted(
        (
            int(r["address"]),
            fixups.imports[int(r["bind"])].name,
            int(r["addend"]),
            fixups.imports[int(r["bind"])].weak,
        )
        for r in binds
    )
    assert ours == sorted((b.address, b.symbol, b.addend, b.weak_import) for b in rows)
    by_addr = {int(r["address"]): fixups.imports[int(r["bind"])].ordinal for r in binds}
    for b in rows:
        assert _dylib_name(by_addr[b.address], dylibs, b.dylib), b
    lazy_rows = objdump.lazy_bind_table(path)
    assert sorted((a, s) for _, _, a, _, s in lazy_rows) == sorted(
        (int(r["address"]), fixups.imports[int(r["bind"])].name) for r in lazy
    )
    weak_rows = objdump.weak_bind_table(path)
    assert [(w.name, w.address, w.addend) for w in fixups.weak_binds] == [
        (name, addr, addend) for _, _, addr, addend, name in weak_rows
    ]
    return len(records) + len(fixups.weak_binds)


@pytest.mark.parametrize(("arch", "fixups"), CONFIG_PARAMS)
def test_fixups_match_independent_readers(arch: str, fixups: str) -> None:
    total = 0
    for _, path in linked(arch, fixups).items():
        if fixups == "opcodes":
            total += _check_opcodes(path)
        else:
            _check_chained_structure(path)
            total += _check_lief(path) if arch == "arm64e" else _check_dyld_info(path)
    assert total > 100  # the examples do have fixups


def test_arm64e_fixups_are_signed_as_clang_asked() -> None:
    """Values clang-22 writes for arm64e (linker-notes §1.1, §3.3): stubs' __auth_got slots are signed
    IA with address diversity and discriminator 0; the kinds LIEF sees include auth rebases and binds."""
    seen = Counter()
    for _, path in linked("arm64e").items():
        auth_got = next(
            (s for s in objdump.private_headers(path).sections if s.sectname == "__auth_got"), None
        )
        for f in lief_chained_fixups(path):
            seen[f.kind] += 1
            if auth_got is not None and auth_got.addr <= f.address < auth_got.addr + auth_got.size:
                assert f.kind in (AUTH_BIND, AUTH_REBASE), f
                assert (f.key, f.diversity, f.addr_div) == (0, 0, 1), f
    assert seen[AUTH_BIND] and seen[AUTH_REBASE] and seen[REBASE] and seen[BIND]


# ---------------------------------------------------------------------------------------------
# exports


def _check_exports(path: Path) -> None:
    image = open_macho(path)
    base = objdump.private_headers(path).segments[0].vmaddr
    dylibs = _dependencies(path)
    rows = sorted(objdump.exports_trie(path), key=lambda e: e.name)
    ours = sorted(image.exports, key=lambda e: e.name)
    assert [e.name for e in ours] == [e.name for e in rows]
    for e, row in zip(ours, rows, strict=True):
        assert e.is_weak_def == ("weak_def" in row.attributes), row
        assert e.is_thread_local == ("per-thread" in row.attributes), row
        assert e.is_absolute == ("absolute" in row.attributes), row
        assert e.is_reexport == (row.reexport_from is not None), row
        if e.is_reexport:
            assert row.reexport_from is not None and _dylib_name(e.ordinal, dylibs, row.reexport_from), row
            assert e.import_name == row.import_name, row
        else:
            assert row.address == e.address + base, row
    # every exported definition is an external defined symbol at that address, and vice versa
    external = {name: value for value, t, name in objdump.nm(path) if t.isupper() and t not in "UI"}
    defined = {e.name: e.address + base for e in ours if not e.is_reexport}
    assert defined == external


@pytest.mark.parametrize(("arch", "fixups"), CONFIG_PARAMS)
def test_exports_match_objdump(arch: str, fixups: str) -> None:
    for _, path in linked(arch, fixups).items():
        _check_exports(path)
    weak = [e.name for e in open_macho(linked(arch, fixups).path("libsystem")).exports if e.is_weak_def]
    assert weak, "the example has a weak definition (_fx_system_hook)"


def test_reexport_aliases_match_objdump(tmp_path: Path) -> None:
    """-alias of an imported symbol makes a re-export entry (ordinal + name in the other dylib)."""
    s = linked("arm64")
    out = tmp_path / "libfxc.dylib"
    link(
        LinkOptions(
            arch="arm64",
            output=str(out),
            install_name="/usr/lib/libfxc.dylib",
            inputs=[
                LinkInput(str(s.object("libc"))),
                LinkInput(str(s.path("liba")), "reexport"),
                LinkInput(str(s.path("libsystem"))),
            ],
            aliases=[
                ("_fxa_poly", "_fxc_poly_alias"),
                ("_malloc", "_fxc_malloc"),
                ("_fxc_twice", "_fxc_twice2"),
            ],
        )
    )
    _check_exports(out)
    rows = {e.name: e for e in objdump.exports_trie(out)}
    assert (rows["_fxc_poly_alias"].reexport_from, rows["_fxc_poly_alias"].import_name) == (
        "libfxa",
        "_fxa_poly",
    )
    assert (rows["_fxc_malloc"].reexport_from, rows["_fxc_malloc"].import_name) == ("libSystem", "_malloc")
    assert rows["_fxc_twice2"].address == rows["_fxc_twice"].address


# ---------------------------------------------------------------------------------------------
# segments and sections (linker-notes §3.6, §3.7)

#: where well-known sections must land (arm64e may move pointer-holding ones to the __AUTH* twins)
SECTION_SEGMENT = {
    "__text": {"__TEXT"},
    "__stubs": {"__TEXT"},
    "__auth_stubs": {"__TEXT"},
    "__cstring": {"__TEXT"},
    "__unwind_info": {"__TEXT"},
    "__eh_frame": {"__TEXT"},
    "__gcc_except_tab": {"__TEXT"},
    "__objc_methname": {"__TEXT"},
    "__objc_classname": {"__TEXT"},
    "__objc_methtype": {"__TEXT"},
    "__got": {"__DATA_CONST"},
    "__auth_got": {"__AUTH_CONST"},
    "__objc_classlist": {"__DATA_CONST"},
    "__objc_catlist": {"__DATA_CONST"},
    "__objc_protolist": {"__DATA_CONST"},
    "__objc_nlclslist": {"__DATA_CONST"},
    "__objc_imageinfo": {"__DATA_CONST"},
    "__objc_selrefs": {"__DATA_CONST"},
    "__objc_const": {"__DATA_CONST", "__AUTH_CONST"},
    "__objc_classrefs": {"__DATA"},
    "__objc_superrefs": {"__DATA"},
    "__objc_data": {"__DATA", "__AUTH"},
    "__data": {"__DATA", "__AUTH"},
    "__bss": {"__DATA"},
    "__common": {"__DATA"},
}
SEGMENT_ORDER = ["__TEXT", "__DATA_CONST", "__AUTH_CONST", "__AUTH", "__DATA", "__LINKEDIT"]


@pytest.mark.parametrize(("arch", "fixups", "name"), DYLIB_PARAMS)
def test_segments_follow_the_format_rules(arch: str, fixups: str, name: str) -> None:
    path = _path(arch, fixups, name)
    ph = objdump.private_headers(path)
    page = PAGE[arch]
    names = [s.name for s in ph.segments]
    assert names == sorted(names, key=SEGMENT_ORDER.index), names
    assert names[0] == "__TEXT" and names[-1] == "__LINKEDIT"
    assert {"__DATA", "__AUTH"} & set(names), "every example has writable data"
    if arch != "arm64e":
        assert not {"__AUTH_CONST", "__AUTH"} & set(names)
    size = path.stat().st_size
    end = file_end = 0
    for seg in ph.segments:
        # base address 0; segments back to back in memory and in the file (zerofill takes no file space)
        assert (seg.vmaddr, seg.fileoff) == (end, file_end), (
            f"{seg.name} does not follow the previous segment"
        )
        assert seg.vmaddr % page == 0 and seg.vmsize % page == 0 and seg.fileoff % page == 0, seg
        assert seg.filesize <= seg.vmsize, seg
        file_end = seg.fileoff + seg.filesize
        if seg.name != "__LINKEDIT":
            assert seg.filesize % page == 0, seg
        else:
            assert seg.fileoff + seg.filesize == size, "__LINKEDIT ends the file"
        prot = {"__TEXT": "r-x", "__LINKEDIT": "r--"}.get(seg.name, "rw-")
        assert (seg.maxprot, seg.initprot) == (prot, prot), seg
        end = seg.vmaddr + seg.vmsize
        zerofill_seen = False
        for s in seg.sections:
            assert seg.vmaddr <= s.addr and s.addr + s.size <= seg.vmaddr + seg.vmsize, s
            assert s.addr % s.align == 0, s
            assert s.segname == seg.name
            zerofill = s.type in ("S_ZEROFILL", "S_GB_ZEROFILL")
            assert not (zerofill_seen and not zerofill), f"{s.sectname} follows a zerofill section"
            zerofill_seen |= zerofill
            if not zerofill:
                assert s.offset - seg.fileoff == s.addr - seg.vmaddr, s
                assert s.addr + s.size <= seg.vmaddr + seg.filesize, s
            if s.sectname in SECTION_SEGMENT:
                assert seg.name in SECTION_SEGMENT[s.sectname], (seg.name, s.sectname)
    sections = ph.sections
    stub_names = {s.sectname for s in sections if s.type == "S_SYMBOL_STUBS"}
    assert stub_names <= ({"__auth_stubs"} if arch == "arm64e" else {"__stubs"})
    if name != "libsystem":
        assert stub_names, "every example but libSystem calls another dylib"
    # dyld finds ObjC metadata through exactly one __objc_imageinfo in a __DATA* segment
    info = [s for s in sections if s.sectname == "__objc_imageinfo"]
    assert len(info) == (1 if name in ("objc", "libobjc") else 0)
    assert all(s.segname.startswith("__DATA") for s in info)
    # the header is followed by room to spare before the first section (the builder adds commands)
    sizeofcmds = int(ph.header[6])
    assert 32 + sizeofcmds + 32 <= sections[0].addr


# ---------------------------------------------------------------------------------------------
# stubs: ld64's exact patterns, through a GOT slot of the right symbol


def _adrp_page(insn: int, pc: int) -> int:
    imm = ((insn >> 29) & 3) | (((insn >> 5) & 0x7FFFF) << 2)
    if imm & (1 << 20):
        imm -= 1 << 21
    return (pc & ~0xFFF) + (imm << 12)


def _decode_stub(arch: str, code: bytes, addr: int) -> int:
    """The GOT slot a stub jumps through; asserts the exact ld64 instruction pattern."""
    if arch == "x86_64":
        assert code[:2] == b"\xff\x25", code.hex()  # jmp *disp32(%rip)
        return addr + 6 + struct.unpack_from("<i", code, 2)[0]
    insns = struct.unpack(f"<{len(code) // 4}I", code)
    if arch == "arm64":
        i0, i1, i2 = insns
        assert i0 & 0x9F00001F == 0x90000010, hex(i0)  # adrp x16, slot@page
        assert i1 & 0xFFC003FF == 0xF9400210, hex(i1)  # ldr x16, [x16, slot@pageoff]
        assert i2 == 0xD61F0200, hex(i2)  # br x16
        return _adrp_page(i0, addr) + ((i1 >> 10) & 0xFFF) * 8
    i0, i1, i2, i3 = insns
    assert i0 & 0x9F00001F == 0x90000011, hex(i0)  # adrp x17, slot@page
    assert i1 & 0xFFC003FF == 0x91000231, hex(i1)  # add x17, x17, slot@pageoff
    assert i2 == 0xF9400230, hex(i2)  # ldr x16, [x17]
    assert i3 == 0xD71F0A11, hex(i3)  # braa x16, x17
    return _adrp_page(i0, addr) + ((i1 >> 10) & 0xFFF)


def _slot_names(arch: str, fixups: str, path: Path) -> dict[int, str]:
    """Address -> the symbol a pointer is bound (or rebased) to, from the independent readers."""
    names: dict[int, str] = {}
    targets: dict[int, int] = {}
    if fixups == "opcodes":
        for b in objdump.bind_table(path):
            names[b.address] = b.symbol
        for _, _, addr, _, sym in objdump.lazy_bind_table(path):
            names[addr] = sym
        for _, _, addr, _, sym in objdump.weak_bind_table(path):
            if addr is not None:
                names.setdefault(addr, sym)
        data = path.read_bytes()
        for _, _, addr, _ in objdump.rebase_table(path):
            targets[addr] = struct.unpack_from("<Q", data, addr)[0]
    elif arch == "arm64e":
        for f in lief_chained_fixups(path):
            if f.symbol is not None:
                names[f.address] = f.symbol
            else:
                assert f.target is not None
                targets[f.address] = f.target
    else:
        for row in objdump.dyld_info(path):
            if row.kind == "bind":
                assert row.symbol is not None
                names[row.address] = row.symbol
            else:
                assert row.target is not None
                targets[row.address] = row.target
    by_value = {v: n for v, t, n in objdump.nm(path) if v is not None and not n.startswith("l")}
    for addr, target in targets.items():
        if addr not in names and target in by_value:
            names[addr] = by_value[target]
    return names


@pytest.mark.parametrize(("arch", "fixups", "name"), [p for p in DYLIB_PARAMS if p.values[2] != "libsystem"])
def test_stubs_are_ld64_patterns_through_the_right_got_slot(arch: str, fixups: str, name: str) -> None:
    path = _path(arch, fixups, name)
    ph = objdump.private_headers(path)
    stub_sect = "__auth_stubs" if arch == "arm64e" else "__stubs"
    got_sect = "__auth_got" if arch == "arm64e" else "__got"
    size = {"arm64": 12, "arm64e": 16, "x86_64": 6}[arch]
    (stubs,) = [s for s in ph.sections if s.sectname == stub_sect]
    (got,) = [s for s in ph.sections if s.sectname == got_sect]
    assert stubs.type == "S_SYMBOL_STUBS" and stubs.reserved2 == size
    assert "PURE_INSTRUCTIONS" in stubs.attributes and "SOME_INSTRUCTIONS" in stubs.attributes
    assert got.type == "S_NON_LAZY_SYMBOL_POINTERS"
    assert stubs.size % size == 0 and stubs.size
    data = path.read_bytes()
    names = _slot_names(arch, fixups, path)
    indirect = objdump.indirect_symbols(path)
    stub_rows = indirect[("__TEXT", stub_sect)]
    got_rows = {addr: sym for addr, _, sym in indirect[(got.segname, got_sect)]}
    assert len(stub_rows) == stubs.size // size
    slots = []
    for k, (addr, index, sym) in enumerate(stub_rows):
        assert addr == stubs.addr + k * size
        slot = _decode_stub(arch, data[stubs.offset + k * size : stubs.offset + (k + 1) * size], addr)
        assert got.addr <= slot < got.addr + got.size and slot % 8 == 0, f"stub {k} -> {slot:#x}"
        assert index.isdigit(), (addr, index)
        assert names.get(slot) == sym, (
            f"stub at {addr:#x} ({sym}) jumps through {slot:#x} ({names.get(slot)})"
        )
        assert got_rows[slot] == sym
        slots.append(slot)
    assert len(set(slots)) == len(slots), "two stubs share a GOT slot"
    assert [r[2] for r in stub_rows] == sorted(r[2] for r in stub_rows), "ld64 sorts stubs by name"


# ---------------------------------------------------------------------------------------------
# load commands: dylib ids and dependencies, build version, UUID


def _expected_dependencies(name: str, weak_dylib: bool) -> list[tuple[str, str]]:
    """(install name, llvm-objdump's attribute word) per LC_*_DYLIB, from the recipe."""
    out = []
    for ref, mode in example(name).deps:
        dep = example(ref.removeprefix("sdk:"))
        out.append((dep.install_name, mode))
        if ref.startswith("sdk:") and weak_dylib:
            out.append((MISSING_DYLIB, "weak"))
    return out


@pytest.mark.parametrize("weak_dylib", [False, True], ids=["sdk-stub", "weak-dylib"])
@pytest.mark.parametrize(("arch", "fixups"), CONFIG_PARAMS)
def test_dylib_commands_follow_the_recipe(arch: str, fixups: str, weak_dylib: bool) -> None:
    s = linked(arch, fixups, weak_dylib)
    versions = {}
    for d in EXAMPLE_DYLIBS:
        path = s.path(d.name)
        ph = objdump.private_headers(path)
        (ident,) = ph.commands_named("LC_ID_DYLIB")
        assert ident["name"].split(" (offset")[0] == d.install_name
        assert ident["time stamp"].split()[0] == "1"
        versions[d.install_name] = (ident["current version"], ident["compatibility version"])
        cmd_of = {"load": "LC_LOAD_DYLIB", "weak": "LC_LOAD_WEAK_DYLIB", "reexport": "LC_REEXPORT_DYLIB"}
        deps = [c for c in ph.commands if c.get("cmd") in cmd_of.values()]
        expected = _expected_dependencies(d.name, weak_dylib)
        assert [(c["name"].split(" (offset")[0], c["cmd"]) for c in deps] == [
            (n, cmd_of[m]) for n, m in expected
        ]
        for c in deps:
            assert c["time stamp"].split()[0] == "2"
            dep_name = c["name"].split(" (offset")[0]
            if dep_name in versions:  # linked earlier: its LC_ID_DYLIB versions are recorded
                assert (c["current version"], c["compatibility version"]) == versions[dep_name]
            else:
                assert dep_name == MISSING_DYLIB and c["current version"] == "1.0.0"
        flags = ph.header[7:]
        assert ("NO_REEXPORTED_DYLIBS" in flags) == (not any(m == "reexport" for _, m in expected))
        assert {"NOUNDEFS", "DYLDLINK", "TWOLEVEL"} <= set(flags) and "PIE" not in flags
        assert ("WEAK_DEFINES" in flags) == any(e.is_weak_def for e in open_macho(path).exports)
        assert ph.header[4] == "DYLIB"


def _uuid(path: Path) -> str:
    (cmd,) = objdump.private_headers(path).commands_named("LC_UUID")
    return cmd["uuid"]


def test_uuid_is_derived_from_content(tmp_path: Path) -> None:
    obj = str(OBJ_DIR / "x86_64" / "libsystem.o")

    def make(folder: str, install_name: str, version: int = 0x10000) -> Path:
        out = tmp_path / folder / "libSystem.B.dylib"
        out.parent.mkdir(exist_ok=True)
        link(
            LinkOptions(
                arch="x86_64",
                output=str(out),
                install_name=install_name,
                inputs=[LinkInput(obj)],
                current_version=version,
            )
        )
        return out

    a = make("a", "/usr/lib/libSystem.B.dylib")
    b = make("b", "/usr/lib/libSystem.B.dylib")
    c = make("c", "/usr/lib/libOther.dylib")
    d = make("d", "/usr/lib/libSystem.B.dylib", version=0x20000)
    assert a.read_bytes() == b.read_bytes(), "the same inputs must give the same bytes"
    uuids = [_uuid(p) for p in (a, c, d)]
    assert len(set(uuids)) == 3, uuids
    assert _uuid(a) == _uuid(linked("x86_64").path("libsystem"))  # the output path does not matter
    for u in uuids:
        raw = bytes.fromhex(u.replace("-", ""))
        # ld64's convention (linker-notes §7.4): a name-based (version 3) RFC 4122 UUID
        assert raw[6] >> 4 == 3 and raw[8] >> 6 == 2, u
    # different example dylibs have different UUIDs
    all_uuids = [_uuid(p) for _, p in linked("arm64").items()]
    assert len(set(all_uuids)) == len(all_uuids)


def _build_version(path: Path) -> dict[str, str]:
    (cmd,) = objdump.private_headers(path).commands_named("LC_BUILD_VERSION")
    return cmd


@pytest.mark.parametrize("arch", ["arm64", "arm64e", "x86_64"])
def test_build_version_comes_from_the_objects(arch: str, tmp_path: Path) -> None:
    for name, path in linked(arch).items():
        obj = _build_version(linked(arch).object(name))
        out = _build_version(path)
        assert (out["platform"], out["minos"]) == (obj["platform"], obj["minos"]), name
        assert out["platform"] == "macos"
    written = link_examples(arch, str(tmp_path), platform="ios", names=("libsystem", "liba"))
    for p in written:
        bv = _build_version(Path(p))
        assert bv["platform"] == "ios" and bv["minos"] == "16.0", bv


# ---------------------------------------------------------------------------------------------
# unwind info covers every function; encodings are the objects' compact unwind


def _section(ph: objdump.PrivateHeaders, sectname: str) -> objdump.ObjSection | None:
    return next((s for s in ph.sections if s.sectname == sectname), None)


@pytest.mark.parametrize(("arch", "fixups", "name"), DYLIB_PARAMS)
def test_unwind_info_covers_every_function(arch: str, fixups: str, name: str) -> None:
    s = linked(arch, fixups)
    path = s.path(name)
    obj = s.object(name)
    ph = objdump.private_headers(path)
    oph = objdump.private_headers(obj)
    text = _section(ph, "__text")
    otext = _section(oph, "__text")
    assert text is not None and otext is not None
    listing = objdump.unwind_info(path)
    starts = objdump.function_starts(path)
    assert starts and starts == sorted(starts)
    assert all(text.addr <= f < text.addr + text.size for f in starts), "function starts only in __text"
    # ld64 writes one past the end of the last function, lld the end itself
    assert text.addr + text.size <= listing.end <= text.addr + text.size + 1
    for f in starts:
        assert listing.encoding_at(f) is not None, f"function at {f:#x} has no unwind entry"
    dwarf = 0x03000000 if arch.startswith("arm64") else 0x04000000
    slot_names = _slot_names(arch, fixups, path)
    lsdas = dict(listing.lsdas)
    entries = objdump.object_compact_unwind(obj)
    assert entries
    for e in entries:
        # one object per dylib: its __text moves as a whole
        start = text.addr + e.start - otext.addr
        assert start in starts, f"{e} is not a function start"
        enc = listing.encoding_at(start)
        assert enc is not None
        if e.encoding & 0x0F000000 == dwarf:
            assert enc & 0x0F000000 == dwarf, (hex(start), hex(enc))
            eh = _section(ph, "__eh_frame")
            assert eh is not None and enc & 0xFFFFFF < eh.size
        else:
            # bits 28-29 hold the personality index, bit 30 UNWIND_HAS_LSDA
            assert enc & ~0x70000000 == e.encoding & ~0x70000000, (hex(start), hex(enc), e)
        p = (enc >> 28) & 3
        if e.personality is None:
            assert p == 0, (hex(start), hex(enc))
        else:
            assert p and slot_names.get(listing.personalities[p]) == e.personality, (e, listing.personalities)
        if e.lsda is None:
            assert start not in lsdas
        else:
            otab = _section(oph, "__gcc_except_tab")
            tab = _section(ph, "__gcc_except_tab")
            assert otab is not None and tab is not None
            assert lsdas.get(start) == tab.addr + e.lsda - otab.addr, e
            assert enc & 0x40000000


# ---------------------------------------------------------------------------------------------
# the command line


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``dyldcache ARGS`` run in this process (the same entry point as ``python -m dyldcache``)."""
    from dyldcache.cli import main

    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["dyldcache", *args], status, out.out, out.err)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dyldcache link: error: "), proc.stderr
    return lines[0]


CLI_VARIANTS = [
    ("arm64e", "chained", ()),
    ("x86_64", "opcodes", ()),
    ("x86_64", "opcodes", ("-split_seg_v1", "-lazy_binding")),
    ("arm64", "opcodes", ("-lazy_binding",)),
]


@pytest.mark.parametrize(("arch", "fixups", "flags"), CLI_VARIANTS)
def test_cli_builds_the_same_bytes_as_the_api(
    arch: str, fixups: str, flags: tuple[str, ...], tmp_path: Path
) -> None:
    s = linked(arch, fixups, split_seg=1 if "-split_seg_v1" in flags else 2, lazy="-lazy_binding" in flags)
    out = tmp_path / "libfxc.dylib"
    proc = run_cli(
        "link", "-arch", arch, "-fixups", fixups, *flags, "-o", str(out),
        "-install_name", "/usr/lib/libfxc.dylib",
        str(s.object("libc")), "-reexport_library", str(s.path("liba")), str(s.path("libsystem")),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert out.read_bytes() == s.path("libc").read_bytes()


BAD_USAGE = [
    [],
    ["-arch", "ppc", "-o", "x", "-install_name", "/usr/lib/x.dylib", "x.o"],
    ["-arch", "arm64", "-frobnicate"],
    ["-arch", "arm64", "-o"],
    ["-arch", "arm64", "-o", "x", "x.o"],
    ["-arch", "arm64", "-fixups", "lazy", "-o", "x", "-install_name", "/usr/lib/x.dylib", "x.o"],
    ["-arch", "arm64", "-platform", "tvos", "-o", "x", "-install_name", "/usr/lib/x.dylib", "x.o"],
]


@pytest.mark.parametrize("args", BAD_USAGE, ids=[" ".join(a) or "no-args" for a in BAD_USAGE])
def test_cli_bad_usage_exits_2_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    proc = _main(capsys, "link", *args) if args else run_cli("link")
    assert proc.returncode == 2
    _one_line_error(proc)


def test_cli_undefined_symbol_names_symbol_and_object(tmp_path: Path) -> None:
    obj = OBJ_DIR / "arm64" / "libb.o"
    proc = run_cli(
        "link",
        "-arch",
        "arm64",
        "-o",
        str(tmp_path / "x.dylib"),
        "-install_name",
        "/usr/lib/x.dylib",
        str(obj),
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("dyldcache link: error: undefined symbols")
    assert any("_fxa_poly" in line and str(obj) in line for line in proc.stderr.splitlines()), proc.stderr
    assert not (tmp_path / "x.dylib").exists()


def test_cli_arm64e_opcodes_is_a_clean_link_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = OBJ_DIR / "arm64e" / "libsystem.o"
    proc = _main(
        capsys,
        "link", "-arch", "arm64e", "-fixups", "opcodes", "-o", str(tmp_path / "x.dylib"),
        "-install_name", "/usr/lib/libSystem.B.dylib", str(obj),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "chained" in _one_line_error(proc)


def _bad_inputs(folder: Path) -> dict[str, Path]:
    good = (OBJ_DIR / "arm64" / "libsystem.o").read_bytes()
    cases = {
        "truncated-in-load-commands": good[:100],
        "truncated-in-symbols": good[: len(good) - 64],
        "truncated-header": good[:4],
        "not-macho": b"just some text\n" * 10,
        "empty": b"",
    }
    out = {}
    for name, content in cases.items():
        p = folder / f"{name}.o"
        p.write_bytes(content)
        out[name] = p
    out["missing"] = folder / "does-not-exist.o"
    return out


@pytest.mark.parametrize(
    "case",
    [
        "truncated-in-load-commands",
        "truncated-in-symbols",
        "truncated-header",
        "not-macho",
        "empty",
        "missing",
    ],
)
def test_cli_bad_input_is_a_clean_error(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.dylib"
    proc = _main(
        capsys, "link", "-arch", "arm64", "-o", str(out), "-install_name", "/usr/lib/x.dylib", str(path)
    )
    assert proc.returncode == 2, proc  # bad input, as the README promises
    line = _one_line_error(proc)
    assert str(path) in line
    assert not out.exists()


def test_cli_links_against_a_tbd_by_library_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-L/-lSystem finds libSystem.tbd; a stub listing the dylib's exports links exactly like the dylib."""
    shutil.copy(TBD_DIR / "libSystem.tbd", tmp_path / "libSystem.tbd")
    out = tmp_path / "libfxa.dylib"
    proc = _main(
        capsys,
        "link", "-arch", "arm64", "-o", str(out), "-install_name", "/usr/lib/libfxa.dylib",
        str(OBJ_DIR / "arm64" / "liba.o"), "-L", str(tmp_path), "-lSystem",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == linked("arm64").path("liba").read_bytes()
