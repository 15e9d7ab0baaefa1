"""Our Mach-O reader (dyldcache.macho) against llvm-objdump-22's listings of the same image, entry
for entry: the mach header and every load command, the exports trie, the rebase / bind / lazy-bind /
weak-bind opcodes and chained fixups. Shared by test_wheel_macho (PyPI wheels) and test_real_macho
(Apple's own dylibs).

The expected side is llvm-objdump's text only (tests/objdump.py parses it). The names llvm prints
for numbers (header flags, section types, platforms, ...) are turned back into numbers with tables
restated here from <mach-o/loader.h>, not taken from dyldcache.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import fields

import numpy as np
import objdump

from dyldcache.macho.file import MachOFile
from dyldcache.macho.fixups import FIXUP_FLAG_32BIT, FIXUP_FLAG_LAZY, FixupKind

# ---------------------------------------------------------------------------------------------
# <mach-o/loader.h> values under the names llvm-objdump prints for them

FILETYPES = {
    "OBJECT": 1,
    "EXECUTE": 2,
    "FVMLIB": 3,
    "CORE": 4,
    "PRELOAD": 5,
    "DYLIB": 6,
    "DYLINKER": 7,
    "BUNDLE": 8,
    "DYLIB_STUB": 9,
    "DSYM": 10,
    "KEXT_BUNDLE": 11,
    "FILESET": 12,
}
HEADER_FLAGS = {
    "NOUNDEFS": 0x1,
    "INCRLINK": 0x2,
    "DYLDLINK": 0x4,
    "BINDATLOAD": 0x8,
    "PREBOUND": 0x10,
    "SPLIT_SEGS": 0x20,
    "LAZY_INIT": 0x40,
    "TWOLEVEL": 0x80,
    "FORCE_FLAT": 0x100,
    "NOMULTIDEFS": 0x200,
    "NOFIXPREBINDING": 0x400,
    "PREBINDABLE": 0x800,
    "ALLMODSBOUND": 0x1000,
    "SUBSECTIONS_VIA_SYMBOLS": 0x2000,
    "CANONICAL": 0x4000,
    "WEAK_DEFINES": 0x8000,
    "BINDS_TO_WEAK": 0x10000,
    "ALLOW_STACK_EXECUTION": 0x20000,
    "ROOT_SAFE": 0x40000,
    "SETUID_SAFE": 0x80000,
    "NO_REEXPORTED_DYLIBS": 0x100000,
    "PIE": 0x200000,
    "DEAD_STRIPPABLE_DYLIB": 0x400000,
    "MH_HAS_TLV_DESCRIPTORS": 0x800000,
    "NO_HEAP_EXECUTION": 0x1000000,
    "APP_EXTENSION_SAFE": 0x2000000,
    "NLIST_OUTOFSYNC_WITH_DYLDINFO": 0x4000000,
    "SIM_SUPPORT": 0x8000000,
    "DYLIB_IN_CACHE": 0x80000000,
}
#: (cputype, cpusubtype) as llvm prints them -> Apple's arch name
ARCHS = {
    ("X86_64", "ALL"): "x86_64",
    ("X86_64", "Haswell"): "x86_64h",
    ("ARM64", "ALL"): "arm64",
    ("ARM64", "E"): "arm64e",
}
SEGMENT_FLAGS = {
    "HIGHVM": 0x1,
    "FVMLIB": 0x2,
    "NORELOC": 0x4,
    "PROTECTED_VERSION_1": 0x8,
    "SG_READ_ONLY": 0x10,
}
SECTION_TYPES = {
    "S_REGULAR": 0x0,
    "S_ZEROFILL": 0x1,
    "S_CSTRING_LITERALS": 0x2,
    "S_4BYTE_LITERALS": 0x3,
    "S_8BYTE_LITERALS": 0x4,
    "S_LITERAL_POINTERS": 0x5,
    "S_NON_LAZY_SYMBOL_POINTERS": 0x6,
    "S_LAZY_SYMBOL_POINTERS": 0x7,
    "S_SYMBOL_STUBS": 0x8,
    "S_MOD_INIT_FUNC_POINTERS": 0x9,
    "S_MOD_TERM_FUNC_POINTERS": 0xA,
    "S_COALESCED": 0xB,
    "S_GB_ZEROFILL": 0xC,
    "S_INTERPOSING": 0xD,
    "S_16BYTE_LITERALS": 0xE,
    "S_DTRACE_DOF": 0xF,
    "S_LAZY_DYLIB_SYMBOL_POINTERS": 0x10,
    "S_THREAD_LOCAL_REGULAR": 0x11,
    "S_THREAD_LOCAL_ZEROFILL": 0x12,
    "S_THREAD_LOCAL_VARIABLES": 0x13,
    "S_THREAD_LOCAL_VARIABLE_POINTERS": 0x14,
    "S_THREAD_LOCAL_INIT_FUNCTION_POINTERS": 0x15,
    "S_INIT_FUNC_OFFSETS": 0x16,
}
SECTION_ATTRIBUTES = {
    "PURE_INSTRUCTIONS": 0x80000000,
    "NO_TOC": 0x40000000,
    "STRIP_STATIC_SYMS": 0x20000000,
    "NO_DEAD_STRIP": 0x10000000,
    "LIVE_SUPPORT": 0x08000000,
    "SELF_MODIFYING_CODE": 0x04000000,
    "DEBUG": 0x02000000,
    "SOME_INSTRUCTIONS": 0x400,
    "EXT_RELOC": 0x200,
    "LOC_RELOC": 0x100,
}
PLATFORMS = {
    "macos": 1,
    "ios": 2,
    "tvos": 3,
    "watchos": 4,
    "bridgeos": 5,
    "macCatalyst": 6,
    "iossim": 7,
    "tvossim": 8,
    "watchossim": 9,
    "driverkit": 10,
}
TOOLS = {"clang": 1, "swift": 2, "ld": 3, "lld": 4}
#: linkedit_data_command and the commands of fixed layout: the fields llvm prints under the names
#: of the struct members; our reader keeps each command's record (see _record)
_LINKEDIT_DATA = {
    "LC_CODE_SIGNATURE",
    "LC_SEGMENT_SPLIT_INFO",
    "LC_FUNCTION_STARTS",
    "LC_DATA_IN_CODE",
    "LC_DYLIB_CODE_SIGN_DRS",
    "LC_LINKER_OPTIMIZATION_HINT",
    "LC_DYLD_EXPORTS_TRIE",
    "LC_DYLD_CHAINED_FIXUPS",
    "LC_ATOM_INFO",
}
_DYLIB_COMMANDS = {
    "LC_LOAD_DYLIB",
    "LC_LOAD_WEAK_DYLIB",
    "LC_REEXPORT_DYLIB",
    "LC_LOAD_UPWARD_DYLIB",
    "LC_LAZY_LOAD_DYLIB",
}
_VERSION_MIN = {
    "LC_VERSION_MIN_MACOSX",
    "LC_VERSION_MIN_IPHONEOS",
    "LC_VERSION_MIN_TVOS",
    "LC_VERSION_MIN_WATCHOS",
}


def same(ours: list[object], theirs: list[object], what: str) -> None:
    """Two lists are equal; else fail naming the first entry where they part (this module is not
    rewritten by pytest, so it says itself what differs)."""
    if ours == theirs:
        return
    k = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
    )
    mine = ours[k] if k < len(ours) else "(none)"
    llvm = theirs[k] if k < len(theirs) else "(none)"
    raise AssertionError(
        f"{what}: {len(ours)} entries read, llvm-objdump lists {len(theirs)}; "
        f"first difference at [{k}]:\n  ours: {mine}\n  llvm: {llvm}"
    )


def _bits(names: str, table: dict[str, int], what: str) -> int:
    """The value of a list of flag names as llvm prints them ("(none)" = 0; a hex word = raw bits)."""
    value = 0
    for name in names.split():
        if name == "(none)":
            continue
        if name.startswith("0x"):
            value |= int(name, 16)
            continue
        assert name in table, f"llvm-objdump printed the {what} {name!r}, unknown to the test's table"
        value |= table[name]
    return value


def _prot(p: int) -> str:
    return ("r" if p & 1 else "-") + ("w" if p & 2 else "-") + ("x" if p & 4 else "-")


def _xyz(text: str) -> int:
    """A version llvm prints as X.Y[.Z] ("n/a" for 0), packed as X<<16 | Y<<8 | Z."""
    if text == "n/a":
        return 0
    parts = [int(p) for p in text.split(".")] + [0, 0]
    return parts[0] << 16 | parts[1] << 8 | parts[2]


def _source_version(text: str) -> int:
    """LC_SOURCE_VERSION as llvm prints it (A.B[.C[.D[.E]]]), packed as A<<40 | B<<30 | ... | E."""
    parts = [int(p) for p in text.split(".")] + [0, 0, 0]
    a, b, c, d, e = parts[:5]
    return a << 40 | b << 30 | c << 20 | d << 10 | e


def _string(value: str) -> str:
    """A load command string as llvm prints it: "text (offset N)"."""
    m = re.fullmatch(r"(.*) \(offset \d+\)", value)
    assert m is not None, value
    return m.group(1)


def _ints(cmd: dict[str, str], record: object, where: str) -> None:
    """Every struct field llvm printed under the record's own field name must be equal."""
    for f in fields(record):  # type: ignore[arg-type]
        if f.name in ("cmd", "cmdsize") or f.name not in cmd:
            continue
        assert int(cmd[f.name].split()[0], 0) == getattr(record, f.name), (where, f.name, cmd[f.name])


# ---------------------------------------------------------------------------------------------
# load commands


def check_header(image: MachOFile, ph: objdump.PrivateHeaders) -> None:
    magic, cputype, cpusubtype, caps, filetype, ncmds, sizeofcmds, *flags = ph.header
    h = image.header
    assert magic == "MH_MAGIC_64"
    assert ARCHS.get((cputype, cpusubtype)) == image.arch, (cputype, cpusubtype, image.arch)
    top = h.cpusubtype >> 24
    assert (f"PAC{top & 0xF:02d}" if top & 0x80 else f"0x{top:02x}") == caps, (caps, hex(h.cpusubtype))
    assert FILETYPES[filetype] == h.filetype
    assert (int(ncmds), int(sizeofcmds)) == (h.ncmds, h.sizeofcmds)
    assert _bits(" ".join(flags), HEADER_FLAGS, "mach header flag") == h.flags


def check_segments(image: MachOFile, ph: objdump.PrivateHeaders) -> None:
    """Segments and sections, every field llvm prints."""
    ours = []
    for s in image.segments:
        sections = [
            (x.sectname, x.segname, x.addr, x.size, x.offset, 1 << x.align, x.reloff, x.nreloc, x.flags,
             x.reserved1, x.reserved2)
            for x in s.sections
        ]  # fmt: skip
        ours.append(
            (
                s.name,
                s.vmaddr,
                s.vmsize,
                s.fileoff,
                s.filesize,
                _prot(s.maxprot),
                _prot(s.initprot),
                s.flags,
                sections,
            )
        )
    theirs = []
    for s in ph.segments:
        sections = [
            (x.sectname, x.segname, x.addr, x.size, x.offset, x.align, x.reloff, x.nreloc,
             SECTION_TYPES[x.type] | _bits(x.attributes, SECTION_ATTRIBUTES, "section attribute"),
             x.reserved1, x.reserved2)
            for x in s.sections
        ]  # fmt: skip
        theirs.append(
            (s.name, s.vmaddr, s.vmsize, s.fileoff, s.filesize, s.maxprot, s.initprot,
             _bits(s.flags, SEGMENT_FLAGS, "segment flag"), sections)
        )  # fmt: skip
    same(ours, theirs, f"{image.path}: segments")


def check_load_commands(image: MachOFile, ph: objdump.PrivateHeaders) -> int:
    """The mach header, then every load command in order: its kind and size, and the fields the
    reader decodes (dylibs, strings, versions, LINKEDIT offsets, ...). Returns the number of
    load commands compared."""
    check_header(image, ph)
    check_segments(image, ph)
    same(
        [(lc.name, lc.size) for lc in image.load_commands],
        [(c["cmd"], int(c["cmdsize"])) for c in ph.commands],
        f"{image.path}: load commands",
    )
    dylibs = iter(image.dylibs)
    builds = iter(image.build_versions)
    rpaths = iter(image.rpaths)
    clients = iter(image.sub_clients)
    for i, c in enumerate(ph.commands):
        name = c["cmd"]
        where = f"{image.path}: load command {i} {name}"
        if name == "LC_ID_DYLIB" or name in _DYLIB_COMMANDS:
            d = image.id_dylib if name == "LC_ID_DYLIB" else next(dylibs)
            assert d is not None and d.cmd == image.load_commands[i].cmd, where
            assert d.path == _string(c["name"]), where
            assert d.timestamp == int(c["time stamp"].split()[0]), where
            assert d.current_version == _xyz(c["current version"]), where
            assert d.compatibility_version == _xyz(c["compatibility version"]), where
        elif name == "LC_RPATH":
            assert next(rpaths) == _string(c["path"]), where
        elif name == "LC_SUB_CLIENT":
            assert next(clients) == _string(c["client"]), where
        elif name == "LC_SUB_FRAMEWORK":
            assert image.umbrella == _string(c["umbrella"]), where
        elif name in ("LC_ID_DYLINKER", "LC_LOAD_DYLINKER"):
            assert image.dylinker == _string(c["name"]), where
        elif name == "LC_UUID":
            assert image.uuid_string == c["uuid"], where
        elif name == "LC_BUILD_VERSION":
            bv = next(builds)
            assert bv.platform == PLATFORMS[c["platform"]], where
            assert (bv.minos, bv.sdk) == (_xyz(c["minos"]), _xyz(c["sdk"])), where
            assert len(bv.tools) == int(c["ntools"]), where
            if len(bv.tools) == 1:  # the listing's dict keeps the last tool only
                assert bv.tools[0] == (TOOLS[c["tool"]], _xyz(c["version"])), where
        elif name in _VERSION_MIN:
            assert image.version_min is not None, where
            assert image.version_min[1:] == (_xyz(c["version"]), _xyz(c["sdk"])), where
        elif name == "LC_SOURCE_VERSION":
            assert image.source_version == _source_version(c["version"]), where
        elif name == "LC_SYMTAB":
            _ints(c, image.symtab_command, where)
        elif name == "LC_DYSYMTAB":
            _ints(c, image.dysymtab_command, where)
        elif name in ("LC_DYLD_INFO", "LC_DYLD_INFO_ONLY"):
            _ints(c, image.dyld_info_command, where)
        elif name in _LINKEDIT_DATA:
            _ints(c, image.linkedit_commands[image.load_commands[i].cmd], where)
        elif name == "LC_ENCRYPTION_INFO_64":
            _ints(c, image.encryption_info, where)
        elif name == "LC_MAIN":
            _ints(c, image.entry_point, where)
    assert next(dylibs, None) is None and next(builds, None) is None
    return len(ph.commands)


# ---------------------------------------------------------------------------------------------
# the LINKEDIT tables next to the load commands: indirect symbols, data in code, function starts

#: section types whose entries the indirect symbol table lists (<mach-o/loader.h>)
_INDIRECT_TYPES = {
    SECTION_TYPES[t]
    for t in (
        "S_NON_LAZY_SYMBOL_POINTERS",
        "S_LAZY_SYMBOL_POINTERS",
        "S_LAZY_DYLIB_SYMBOL_POINTERS",
        "S_THREAD_LOCAL_VARIABLE_POINTERS",
        "S_SYMBOL_STUBS",
    )
}


def check_indirect_symbols(image: MachOFile, listing: objdump.Listing) -> int:
    """Every indirect symbol table entry of every stub / pointer section: its address, its index
    (or LOCAL / ABSOLUTE) and the name of that symbol in our symbol table."""
    rows = listing.indirect_symbols()
    table = image.indirect_symbols
    strings = image.symbol_table
    listed = [s for s in image.sections if s.type in _INDIRECT_TYPES and s.size]
    same(
        [(s.segname, s.sectname) for s in listed], list(rows), f"{image.path}: sections with indirect symbols"
    )
    count = 0
    for sect in listed:
        entries = rows[(sect.segname, sect.sectname)]
        stride = sect.reserved2 if sect.type == SECTION_TYPES["S_SYMBOL_STUBS"] else 8
        ours = []
        for k, index in enumerate(table[sect.reserved1 : sect.reserved1 + len(entries)].tolist()):
            name = ""
            if index not in objdump.INDIRECT_SPECIAL.values():
                name = (
                    strings.name(int(strings.nlist["n_strx"][index])) if index < len(strings.nlist) else "?"
                )
            ours.append((sect.addr + k * stride, index, name))
        theirs = [
            (addr, objdump.INDIRECT_SPECIAL[idx] if idx in objdump.INDIRECT_SPECIAL else int(idx), name)
            for addr, idx, name in entries
        ]
        same(ours, theirs, f"{image.path}: indirect symbols of {sect.full_name}")
        count += len(entries)
    return count


def check_data_in_code(image: MachOFile, listing: objdump.Listing) -> int:
    ours = [(int(d["offset"]), int(d["length"]), int(d["kind"])) for d in image.data_in_code]
    theirs = [(o, n, objdump.DATA_IN_CODE_KINDS[k]) for o, n, k in listing.data_in_code()]
    same(ours, theirs, f"{image.path}: data in code")
    return len(ours)


def check_function_starts(image: MachOFile, listing: objdump.Listing) -> int:
    ours = image.function_starts.tolist()
    same(ours, listing.function_starts(), f"{image.path}: function starts")
    return len(ours)


# ---------------------------------------------------------------------------------------------
# exports


def dylib_matches(image: MachOFile, ordinal: int, llvm_name: str) -> bool:
    """Does llvm's name for a library ordinal (a short name, or this-image, flat-namespace, ...)
    denote ``ordinal`` of ``image``?"""
    if ordinal <= 0:
        return objdump.SPECIAL_ORDINALS.get(ordinal) == llvm_name
    if ordinal > len(image.dylibs):
        return False
    return objdump.short_name_matches(image.dylibs[ordinal - 1].path, llvm_name)


def check_exports(image: MachOFile, rows: list[objdump.ObjExport]) -> int:
    """Every export: name, kind, flags, address, resolver, re-export source. Returns the count."""
    base = image.base_address
    ours = {e.name: e for e in image.exports}
    theirs = {r.name: r for r in rows}
    assert len(ours) == len(image.exports) and len(theirs) == len(rows), "duplicate export names"
    same(sorted(ours), sorted(theirs), f"{image.path}: export names")
    for name, e in ours.items():
        r = theirs[name]
        assert e.is_weak_def == ("weak_def" in r.attributes), r
        assert e.is_thread_local == ("per-thread" in r.attributes), r
        assert e.is_absolute == ("absolute" in r.attributes), r
        assert e.is_reexport == (r.reexport_from is not None), r
        if e.is_reexport:
            assert r.reexport_from is not None and dylib_matches(image, e.ordinal, r.reexport_from), (e, r)
            assert e.import_name == r.import_name, (e, r)
            continue
        assert r.address == e.address + (0 if e.is_absolute else base), (e, r)
        resolvers = {a for a in r.attributes if a.startswith("resolver=")}
        assert resolvers == ({f"resolver=0x{e.resolver:08X}"} if e.is_resolver else set()), (e, r)
    return len(ours)


# ---------------------------------------------------------------------------------------------
# fixups


def _segment_names(image: MachOFile, records: np.ndarray) -> list[str]:
    names = np.array([s.name for s in image.segments] or [""], dtype=object)
    return list(names[records["segment"].astype(np.intp)])


def check_opcode_fixups(image: MachOFile, tables: dict[str, list[str]]) -> Counter[str]:
    """Rebases, binds, lazy binds and weak binds of LC_DYLD_INFO, entry for entry (as multisets:
    our records are sorted by address, llvm lists them in stream order)."""
    fixups = image.fixups
    assert fixups.source in ("opcodes", "none")
    records = fixups.records
    rebase_rows = objdump.parse_rebase_table(tables)
    bind_rows = objdump.parse_bind_table(tables)
    lazy_rows = objdump.parse_lazy_bind_table(tables)
    weak_rows = objdump.parse_weak_bind_table(tables)

    rebases = records[records["kind"] == FixupKind.REBASE]
    same(
        sorted(
            zip(
                rebases["address"].tolist(),
                _segment_names(image, rebases),
                ((rebases["flags"] & FIXUP_FLAG_32BIT) != 0).tolist(),
                strict=True,
            )
        ),
        sorted((addr, seg, typ == "text abs32") for seg, _, addr, typ in rebase_rows),
        f"{image.path}: rebases",
    )

    lazy = (records["flags"] & FIXUP_FLAG_LAZY) != 0
    binds = records[(records["kind"] == FixupKind.BIND) & ~lazy]
    ours = sorted(
        (int(r["address"]), fixups.import_name(r), int(r["addend"]), seg, int(r["bind"]))
        for r, seg in zip(binds, _segment_names(image, binds), strict=True)
    )
    theirs = sorted((b.address, b.symbol, b.addend, b.segment, b) for b in bind_rows)
    same([o[:4] for o in ours], [t[:4] for t in theirs], f"{image.path}: binds")
    for (*_, index), (*_, row) in zip(ours, theirs, strict=True):
        imp = fixups.imports[index]
        assert imp.weak == row.weak_import and dylib_matches(image, imp.ordinal, row.dylib), (imp, row)
        assert row.type == "pointer"

    lazies = records[(records["kind"] == FixupKind.BIND) & lazy]
    ours_lazy = sorted(
        (int(r["address"]), fixups.import_name(r), seg, int(r["bind"]))
        for r, seg in zip(lazies, _segment_names(image, lazies), strict=True)
    )
    theirs_lazy = sorted((addr, sym, seg, lib) for seg, _, addr, lib, sym in lazy_rows)
    same([o[:3] for o in ours_lazy], [t[:3] for t in theirs_lazy], f"{image.path}: lazy binds")
    for (*_, index), (*_, lib) in zip(ours_lazy, theirs_lazy, strict=True):
        assert dylib_matches(image, fixups.imports[index].ordinal, lib), (fixups.imports[index], lib)

    weak_ours = sorted((-1 if w.address is None else w.address, w.name, w.addend) for w in fixups.weak_binds)
    weak_theirs = sorted((-1 if addr is None else addr, sym, addend) for _, _, addr, addend, sym in weak_rows)
    same(weak_ours, weak_theirs, f"{image.path}: weak binds")
    return Counter(
        rebases=len(rebase_rows), binds=len(bind_rows), lazy_binds=len(lazy_rows), weak_binds=len(weak_rows)
    )


def check_chained_fixups(image: MachOFile, listing: objdump.Listing) -> int:
    """Chained fixups: every location, kind, target or symbol and addend (``--dyld-info``), and the
    imports table (``--chained-fixups``)."""
    fixups = image.fixups
    assert fixups.source == "chained"
    records = fixups.records
    rows = listing.dyld_info()
    assert Counter(r.kind for r in rows) == Counter(
        {
            "rebase": int((records["kind"] == FixupKind.REBASE).sum()),
            "bind": int((records["kind"] == FixupKind.BIND).sum()),
        }
    )
    assert [r.address for r in rows] == [int(a) for a in records["address"]]
    binds = {r.address: (r.symbol, r.addend) for r in rows if r.kind == "bind"}
    for r in records[records["kind"] == FixupKind.BIND]:
        assert binds[int(r["address"])] == (fixups.import_name(r), int(r["addend"]))
    rebases = {r.address: r.target for r in rows if r.kind == "rebase"}
    for r in records[records["kind"] == FixupKind.REBASE]:
        assert rebases[int(r["address"])] == int(r["target"]) - image.base_address
    table = listing.chained_fixups()
    assert table is not None
    used = {(i.name, i.ordinal, i.weak) for i in fixups.imports}
    assert used <= {(name, ordinal, bool(weak)) for ordinal, weak, _, name, _ in table.imports}
    return len(rows)


def check_fixups(image: MachOFile, listing: objdump.Listing) -> Counter[str]:
    """Whatever encodes the image's fixups, compared with llvm's listing of it."""
    if image.has_chained_fixups:
        return Counter(chained_fixups=check_chained_fixups(image, listing))
    assert listing.chained_fixups() is None and not listing.dyld_info()
    return check_opcode_fixups(image, listing.tables())


def check_image(image: MachOFile, listing: objdump.Listing) -> Counter[str]:
    """Everything above on one image; the number of entries compared, by kind."""
    assert listing.problem is None, listing.problem
    counts = Counter(slices=1)
    counts["load_commands"] = check_load_commands(image, listing.private_headers())
    counts["exports"] = check_exports(image, listing.exports())
    counts["indirect_symbols"] = check_indirect_symbols(image, listing)
    counts["data_in_code"] = check_data_in_code(image, listing)
    counts["function_starts"] = check_function_starts(image, listing)
    counts.update(check_fixups(image, listing))
    return counts
