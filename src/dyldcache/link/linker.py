"""The small linker: relocatable objects (+ dylibs / .tbd stubs) -> one cache-ready MH_DYLIB.

It writes what Apple's ld64 writes for a shared-region dylib (``docs/linker-notes.md``):
``__TEXT`` / ``__DATA_CONST`` / ``__DATA`` / ``__LINKEDIT`` (+ ``__AUTH_CONST`` / ``__AUTH`` on
arm64e), stubs and GOTs, chained fixups or dyld-info opcodes, an exports trie, a symbol
table with indirect symbols, ``__unwind_info`` from compact unwind, and split seg info v2
computed from the relocations themselves. There is no code relaxation and no dead
stripping: every input byte is kept and every ADRP pair stays an ADRP pair.

The phases, in order: load inputs, resolve symbols, plan synthetic content (stubs, GOT
slots, unwind rows), build output sections, lay out, write content and apply
relocations, build LINKEDIT, write the header and load commands, derive the UUID.
A stand-in for a stub library (``-stub_library``) is the same link with one more input: the
synthetic object of ``link/stub_library.py``, made once the real objects are loaded.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from dataclasses import dataclass, field

import numpy as np

from ..arch import ARCHS, Arch
from ..arch import arm64 as A64
from ..arch import x86_64 as X64
from ..errors import InputError, LinkError
from ..fileio import write_atomically
from ..macho import constants as C
from ..macho.exports_trie import Export, write_exports
from ..macho.file import parse_macho
from ..macho.fixups import FIXUP_DTYPE, FixupKind, Import, WeakBind
from ..macho.function_starts import write_function_starts
from ..macho.load_commands import (
    SectionSpec,
    build_version_command,
    dyld_info_command,
    dylib_command,
    dysymtab_command,
    linkedit_data_command,
    segment_command,
    source_version_command,
    symtab_command,
    uuid_command,
)
from ..macho.split_seg import SPLIT_SEG_DTYPE, SPLIT_SEG_V1_DTYPE, encode_split_seg_v1, encode_split_seg_v2
from ..macho.symtab import StringPool, nlist_array
from ..macho.tbd import looks_like_tbd
from .dylibs import DylibInterface, DylibSet, read_dylib_interfaces
from .model import LinkSymbol, OutSection, OutSegment, SectionKind, SymKind
from .objects import InputSection, ObjectFile, ObjSymbol, Reloc, RelocKind, Target
from .placement import SEGMENT_PROT, output_segment, section_rank, segment_rank
from .stub_library import stand_in_object
from .unwind import (
    CIE,
    COMPACT_UNWIND_ENTRY_SIZE,
    FDE,
    UnwindEntry,
    dwarf_mode,
    merge_entries,
    parse_eh_frame,
    unwind_layout,
    write_unwind_info,
)

_PLATFORMS = {"macos": C.PLATFORM_MACOS, "ios": C.PLATFORM_IOS}
_DEFAULT_MINOS = {C.PLATFORM_MACOS: 0x000D0000, C.PLATFORM_IOS: 0x00100000}
#: free bytes kept after the load commands (the cache builder adds two segment commands to libobjc)
HEADER_PAD = 0x200
LINKEDIT_ALIGN = 8


@dataclass(slots=True)
class LinkInput:
    """One input of a link: an object file (.o), a dylib or a .tbd stub to link against."""

    path: str
    #: for dylibs: "load", "weak", "reexport" or "upward"
    mode: str = "load"


@dataclass(slots=True)
class LinkOptions:
    """What to link (the options of ``dyldcache link``): ``inputs`` (objects, and the dylibs or
    .tbd stubs they link against) into the dylib ``output`` for ``arch`` ("arm64", "arm64e",
    "x86_64"), named ``install_name``, with split seg info so that the cache builder can move
    its segments. ``fixups`` is "chained" (the default) or "opcodes"; ``search_paths`` are where
    dependencies named by install name are looked for."""

    arch: str
    output: str
    #: "" takes the stub library's install name
    install_name: str
    inputs: list[LinkInput]
    platform: str | None = None
    fixups: str = "chained"
    search_paths: list[str] = field(default_factory=list)
    #: None: the stub library's, else 1.0.0
    current_version: int | None = None
    compatibility_version: int | None = None
    #: (existing symbol, alias name) pairs, like ld64 -alias
    aliases: list[tuple[str, str]] = field(default_factory=list)
    #: split seg info version: 2, or 1 (x86_64 only: ld64's default there, with no __DATA_CONST)
    split_seg_version: int = 2
    #: opcode fixups only: calls to imports go through __la_symbol_ptr and __stub_helper, bound on
    #: first call by dyld_stub_binder (ld64's default before chained fixups)
    lazy_binding: bool = False
    #: a .tbd the output stands in for: its install name, versions and re-exports become the
    #: output's, and every symbol it lists that no input object defines gets a synthetic
    #: definition (link/stub_library.py)
    stub_library: str | None = None
    #: names the stub library lists that are data, not functions
    stub_data: frozenset[str] = frozenset()


@dataclass(slots=True)
class LinkResult:
    """What a link wrote: the dylib's path, its LC_UUID, and the linker's warnings."""

    path: str
    uuid: bytes
    warnings: list[str]


@dataclass(slots=True)
class _Dylib:
    iface: DylibInterface
    mode: str
    ordinal: int


@dataclass(slots=True)
class _CompactUnwind:
    isect: InputSection
    offset: int
    length: int
    encoding: int
    personality: LinkSymbol | None
    lsda: tuple[InputSection, int] | None


def link(options: LinkOptions) -> LinkResult:
    """Link ``options.inputs`` into ``options.output`` (written atomically)."""
    return Linker(options).run()


class Linker:
    def __init__(self, options: LinkOptions) -> None:
        if options.arch not in ARCHS:
            raise LinkError(f"unsupported architecture {options.arch!r}")
        if options.fixups not in ("chained", "opcodes"):
            raise LinkError(f"unknown fixup style {options.fixups!r} (chained or opcodes)")
        self.opts = options
        self.arch: Arch = ARCHS[options.arch]
        if self.arch.uses_pointer_auth and options.fixups != "chained":
            raise LinkError("arm64e needs chained fixups: authenticated pointers have no opcode encoding")
        self.chained = options.fixups == "chained"
        if options.split_seg_version not in (1, 2):
            raise LinkError(f"split seg version {options.split_seg_version} (1 or 2)")
        if options.split_seg_version == 1 and self.arch.name != "x86_64":
            raise LinkError("split seg v1 is only written for x86_64 (arm64 dylibs always use v2)")
        #: v1 dylibs keep every writable section in __DATA: v1 moves all data by one amount
        self.data_const = options.split_seg_version == 2
        if options.lazy_binding and self.chained:
            raise LinkError("lazy binding needs opcode fixups (chained fixups bind everything at load)")
        self.warnings: list[str] = []
        self.install_name = options.install_name
        self.current_version = options.current_version
        self.compatibility_version = options.compatibility_version
        #: the library a stand-in is made for (-stub_library)
        self.stub: DylibInterface | None = None
        self.objects: list[ObjectFile] = []
        self.dylibs: list[_Dylib] = []
        self.dylib_set = DylibSet(options.arch, options.platform, list(options.search_paths))
        self.globals: dict[str, LinkSymbol] = {}
        #: per object: object symbol index -> resolved symbol
        self.symbol_maps: list[list[LinkSymbol | None]] = []
        self.stubs: list[LinkSymbol] = []
        self.got: list[LinkSymbol] = []
        self.auth_got: list[LinkSymbol] = []
        self.sections: list[OutSection] = []
        self.segments: list[OutSegment] = []
        self.out_of: dict[int, OutSection] = {}
        self.unwind_rows: list[_CompactUnwind] = []
        self.synthetic_relocs: dict[int, list[Reloc]] = {}
        self.platform = 0
        self.minos = 0
        self.sdk = 0
        self.cpusubtype = self.arch.cpusubtype
        # output of relocation processing
        self.fixups: list[tuple[int, ...]] = []
        self.fixup_imports: list[Import] = []
        self._import_index: dict[tuple[str, int, bool], int] = {}
        self.weak_binds: list[WeakBind] = []
        self.split: list[tuple[int, int, int, int, int]] = []
        self.binds_to_weak = False
        self.aliases_reexported: list[tuple[str, LinkSymbol]] = []
        self.common_section: OutSection | None = None
        self.eh_frames: dict[int, tuple[dict[int, CIE], list[FDE]]] = {}
        self.got_index: dict[int, int] = {}
        self.auth_got_index: dict[int, int] = {}
        self.stub_index: dict[int, int] = {}
        #: lazily bound imports (one __la_symbol_ptr slot and __stub_helper entry each)
        self.lazy: list[LinkSymbol] = []
        self.lazy_index: dict[int, int] = {}
        self.stub_binder: LinkSymbol | None = None
        self.lazy_bind_stream = b""
        self.unwind_entries: list[UnwindEntry] = []
        # set by layout / emit
        self.linkedit_vmaddr = 0
        self.linkedit_fileoff = 0
        self.buf = bytearray()
        self.linkedit = b""
        self.linkedit_offsets: dict[str, tuple[int, int]] = {}
        self.fixup_records = np.zeros(0, dtype=FIXUP_DTYPE)
        self.nsyms = 0
        self.nindirect = 0
        self.symtab_ranges = (0, 0, 0, 0, 0, 0)
        self.uuid = bytes(16)
        self.ncmds = 0

    # ------------------------------------------------------------------------------------------
    # phase 1: inputs

    def load_inputs(self) -> None:
        by_name: dict[str, _Dylib] = {}
        for inp in self.opts.inputs:
            path = inp.path
            try:
                with open(path, "rb") as f:
                    head = f.read(8)
            except OSError as exc:
                raise InputError(f"{path}: cannot read: {exc.strerror}") from None
            if looks_like_tbd(head):
                iface = self.dylib_set.load(path)
            else:
                with open(path, "rb") as f:
                    data = f.read()
                image = parse_macho(data, path, self.opts.arch)
                if image.filetype == C.MH_OBJECT:
                    if image.header.cputype != self.arch.cputype:
                        raise InputError(f"{path}: object is {image.arch}, not {self.arch.name}")
                    self.objects.append(ObjectFile(image, self.arch.name))
                    continue
                if image.filetype != C.MH_DYLIB:
                    raise InputError(f"{path}: not an object, dylib or .tbd")
                iface = self.dylib_set.load(path)
            if iface.install_name in by_name:
                continue  # a repeated install path reuses its ordinal
            d = _Dylib(iface, inp.mode, len(self.dylibs) + 1)
            by_name[iface.install_name] = d
            self.dylibs.append(d)
        if self.opts.stub_library is not None:
            self._load_stub_library(by_name)
        elif not self.objects:
            raise LinkError("no object files to link")
        if not self.install_name:
            raise LinkError("no install name: give -install_name (or -stub_library)")
        if len(self.dylibs) > C.MAX_LIBRARY_ORDINAL:
            raise LinkError(f"too many dylibs ({len(self.dylibs)})")
        self._pick_platform()
        if self.stub is not None:
            self._add_stand_in_object()

    def _load_stub_library(self, by_name: dict[str, _Dylib]) -> None:
        """The stub's first document is the library the output stands in for; the others
        (inlined re-exported libraries) only serve to find its re-exports."""
        path = self.opts.stub_library
        assert path is not None
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from None
        if not looks_like_tbd(head):
            raise InputError(f"{path}: -stub_library needs a .tbd text stub")
        ifaces = read_dylib_interfaces(path, self.opts.arch, self.opts.platform)
        self.dylib_set.add(ifaces)
        stub = self.stub = ifaces[0]
        if not stub.exports and not stub.reexports:
            self.warnings.append(f"{path}: lists no symbols for {self.arch.name}")
        self.install_name = self.install_name or stub.install_name
        if self.current_version is None:
            self.current_version = stub.current_version
        if self.compatibility_version is None:
            self.compatibility_version = stub.compatibility_version
        for name in stub.reexports:
            d = by_name.get(name)
            if d is not None:
                d.mode = "reexport"
                continue
            iface = self.dylib_set.find(name)
            if iface is None:
                raise LinkError(
                    f"{path}: re-exported library {name} not found (inline it in the .tbd, "
                    "or give its directory with -L)"
                )
            d = by_name[name] = _Dylib(iface, "reexport", len(self.dylibs) + 1)
            self.dylibs.append(d)

    def _add_stand_in_object(self) -> None:
        assert self.stub is not None
        defined = {
            s.name for o in self.objects for s in o.symbols if s.is_external and (s.is_defined or s.is_common)
        }
        image, warnings = stand_in_object(
            self.stub, self.arch, self.platform, self.minos, self.sdk, defined, self.opts.stub_data
        )
        self.warnings += warnings
        self.objects.append(ObjectFile(image, self.arch.name))

    def _pick_platform(self) -> None:
        versions = [bv for o in self.objects for bv in o.image.build_versions]
        if self.arch.uses_pointer_auth and self.objects:
            subs = {o.image.header.cpusubtype for o in self.objects}
            self.cpusubtype = max(subs)
        if self.opts.platform is not None:
            if self.opts.platform not in _PLATFORMS:
                raise LinkError(f"unknown platform {self.opts.platform!r} (macos or ios)")
            self.platform = _PLATFORMS[self.opts.platform]
            same = [bv for bv in versions if bv.platform == self.platform]
            self.minos = max((bv.minos for bv in same), default=_DEFAULT_MINOS[self.platform])
            self.sdk = max((bv.sdk for bv in same), default=self.minos)
        elif versions:
            self.platform = versions[0].platform
            self.minos = max(bv.minos for bv in versions)
            self.sdk = max(bv.sdk for bv in versions)
        elif self.objects:
            raise LinkError("objects carry no LC_BUILD_VERSION: pass -platform")
        else:
            raise LinkError("a stand-in made from a stub library alone needs -platform")

    # ------------------------------------------------------------------------------------------
    # phase 2: symbols

    def resolve_symbols(self) -> None:
        commons: dict[str, tuple[int, int]] = {}
        undefined: dict[str, list[str]] = {}
        weak_refs: dict[str, bool] = {}
        for obj in self.objects:
            table: list[LinkSymbol | None] = []
            for sym in obj.symbols:
                if sym.is_stab:
                    table.append(None)
                    continue
                if sym.is_defined:
                    ls = self._defined_symbol(obj, sym)
                    if sym.is_external:
                        ls = self._add_global(ls, obj)
                    table.append(ls)
                elif sym.is_common:
                    size, align = sym.n_value, 1 << ((sym.n_desc >> 8) & 0xF)
                    old = commons.get(sym.name)
                    commons[sym.name] = (max(size, old[0] if old else 0), max(align, old[1] if old else 1))
                    table.append(None)
                else:
                    undefined.setdefault(sym.name, []).append(obj.path)
                    weak_refs[sym.name] = weak_refs.get(sym.name, True) and sym.is_weak_ref
                    table.append(None)
            self.symbol_maps.append(table)
        self._place_commons(commons)
        missing = []
        for name, refs in undefined.items():
            if name in self.globals:
                continue
            found = self._import(name, weak_refs[name])
            if found is None:
                missing.append(f"  {name}, referenced from {', '.join(sorted(set(refs)))}")
        if missing:
            raise LinkError(
                "undefined symbols for architecture " + self.arch.name + ":\n" + "\n".join(missing)
            )
        for k, obj in enumerate(self.objects):
            table = self.symbol_maps[k]
            for i, sym in enumerate(obj.symbols):
                if table[i] is None and not sym.is_stab:
                    table[i] = self.globals[sym.name]
        for name, alias in self.opts.aliases:
            self._add_alias(name, alias)

    def _defined_symbol(self, obj: ObjectFile, sym: ObjSymbol) -> LinkSymbol:
        if sym.is_absolute:
            return LinkSymbol(
                sym.name,
                SymKind.ABSOLUTE,
                value=sym.n_value,
                external=sym.is_external and not sym.is_private_extern,
                private_extern=sym.is_private_extern,
            )
        isect = obj.section(sym.n_sect)
        return LinkSymbol(
            sym.name,
            SymKind.DEFINED,
            isect=isect,
            offset=sym.n_value - isect.addr,
            external=sym.is_external and not sym.is_private_extern,
            private_extern=sym.is_private_extern,
            weak_def=sym.is_weak_def,
        )

    def _add_global(self, ls: LinkSymbol, obj: ObjectFile) -> LinkSymbol:
        old = self.globals.get(ls.name)
        if old is None:
            self.globals[ls.name] = ls
            return ls
        if old.weak_def and not ls.weak_def:
            self.globals[ls.name] = ls
            return ls
        if ls.weak_def:
            return old
        raise LinkError(f"duplicate symbol {ls.name} (in {obj.path} and an earlier object)")

    def _place_commons(self, commons: dict[str, tuple[int, int]]) -> None:
        todo = [(n, s, a) for n, (s, a) in sorted(commons.items()) if n not in self.globals]
        if not todo:
            return
        sect = OutSection("__DATA", "__common", C.S_ZEROFILL, 1, SectionKind.COMMON)
        off = 0
        for name, size, align in todo:
            off = -(-off // align) * align
            self.globals[name] = LinkSymbol(name, SymKind.COMMON, out=sect, offset=off, external=True)
            sect.align = max(sect.align, align)
            off += size
        sect.size = off
        self.common_section = sect

    def _import(self, name: str, weak_ref: bool) -> LinkSymbol | None:
        for d in self.dylibs:
            kind = self.dylib_set.lookup(d.iface, name)
            if kind is None:
                continue
            ls = LinkSymbol(
                name,
                SymKind.IMPORT,
                ordinal=d.ordinal,
                weak_import=weak_ref or d.mode == "weak",
                import_is_weak_def=kind == "weak",
            )
            self.globals[name] = ls
            return ls
        return None

    def _add_alias(self, name: str, alias: str) -> None:
        target = self.globals.get(name)
        if target is None:
            target = self._import(name, False)
            if target is None:
                raise LinkError(f"-alias: symbol {name} is not defined")
        if alias in self.globals:
            raise LinkError(f"-alias: {alias} is already defined")
        if target.is_import:
            self.aliases_reexported.append((alias, target))
        else:
            self.globals[alias] = LinkSymbol(
                alias,
                target.kind,
                isect=target.isect,
                offset=target.offset,
                out=target.out,
                value=target.value,
                external=True,
            )

    def symbol_for(self, obj_index: int, target: Target) -> LinkSymbol:
        assert target.symbol is not None
        ls = self.symbol_maps[obj_index][target.symbol]
        if ls is None:
            raise LinkError(
                f"{self.objects[obj_index].path}: relocation to symbol #{target.symbol}, which has no "
                "definition"
            )
        return ls

    # ------------------------------------------------------------------------------------------
    # phase 3: synthetic content

    def plan_synthetic(self) -> None:
        stubs: dict[int, LinkSymbol] = {}
        got: dict[int, LinkSymbol] = {}
        auth_got: dict[int, LinkSymbol] = {}
        for k, obj in enumerate(self.objects):
            for isect in obj.sections:
                if isect.segname == "__LD":
                    continue
                for r in isect.relocs:
                    if r.target.symbol is None:
                        continue
                    ls = self.symbol_for(k, r.target)
                    if r.kind in (RelocKind.BRANCH26, RelocKind.X86_BRANCH) and ls.needs_bind:
                        stubs[id(ls)] = ls
                    elif r.kind in (
                        RelocKind.GOT_PAGE21,
                        RelocKind.GOT_PAGEOFF12,
                        RelocKind.X86_GOT_LOAD,
                        RelocKind.X86_GOT,
                        RelocKind.POINTER_TO_GOT,
                    ):
                        got[id(ls)] = ls
        self._collect_unwind()
        for row in self.unwind_rows:
            if row.personality is not None:
                (auth_got if self.arch.uses_pointer_auth else got)[id(row.personality)] = row.personality
        lazy = [ls for ls in stubs.values() if self.opts.lazy_binding and ls.is_import]
        for ls in stubs.values():
            if not (self.opts.lazy_binding and ls.is_import):
                (auth_got if self.arch.uses_pointer_auth else got)[id(ls)] = ls
        if lazy:
            binder = self.globals.get("dyld_stub_binder") or self._import("dyld_stub_binder", False)
            if binder is None or not binder.is_import:
                raise LinkError("lazy binding needs dyld_stub_binder, which no linked dylib exports")
            self.stub_binder = binder
            got[id(binder)] = binder
        self.lazy = sorted(lazy, key=lambda s: s.name)
        self.lazy_index = {id(s): i for i, s in enumerate(self.lazy)}
        self.stubs = sorted(stubs.values(), key=lambda s: s.name)
        self.got = sorted(got.values(), key=lambda s: s.name)
        self.auth_got = sorted(auth_got.values(), key=lambda s: s.name)
        self.got_index = {id(s): i for i, s in enumerate(self.got)}
        self.auth_got_index = {id(s): i for i, s in enumerate(self.auth_got)}
        self.stub_index = {id(s): i for i, s in enumerate(self.stubs)}

    def _collect_unwind(self) -> None:
        """Compact unwind rows from every object, and pc-relative __eh_frame fields with no relocation."""
        for k, obj in enumerate(self.objects):
            for isect in obj.sections:
                if isect.segname == "__LD" and isect.sectname == "__compact_unwind":
                    self._compact_unwind_rows(k, obj, isect)
                elif isect.sectname == "__eh_frame":
                    self._eh_frame_relocs(obj, isect)

    def _compact_unwind_rows(self, k: int, obj: ObjectFile, isect: InputSection) -> None:
        if isect.size % COMPACT_UNWIND_ENTRY_SIZE:
            raise LinkError(f"{obj.path}: __compact_unwind size {isect.size} is not a multiple of 32")
        relocs = {r.offset: r for r in isect.relocs}
        for base in range(0, isect.size, COMPACT_UNWIND_ENTRY_SIZE):
            length, encoding = struct.unpack_from("<II", isect.content, base + 8)
            fr = relocs.get(base)
            if fr is None:
                raise LinkError(f"{obj.path}: compact unwind entry at {base:#x} has no function relocation")
            fsect, foff = self._defined_place(k, fr.target, fr.addend)
            personality = None
            if (pr := relocs.get(base + 16)) is not None:
                personality = self.symbol_for(k, pr.target) if pr.target.symbol is not None else None
            lsda = None
            if (lr := relocs.get(base + 24)) is not None:
                lsda = self._defined_place(k, lr.target, lr.addend)
            self.unwind_rows.append(_CompactUnwind(fsect, foff, length, encoding, personality, lsda))

    def _defined_place(self, k: int, target: Target, addend: int) -> tuple[InputSection, int]:
        obj = self.objects[k]
        if target.section is not None:
            return obj.section(target.section), target.offset + addend
        ls = self.symbol_for(k, target)
        if ls.isect is None:
            raise LinkError(f"{obj.path}: unwind info refers to {ls.name}, which is not defined in a section")
        return ls.isect, ls.offset + addend

    def _eh_frame_relocs(self, obj: ObjectFile, isect: InputSection) -> None:
        """x86_64 objects leave FDE pc_begin/LSDA fields unrelocated: make relocations from the CFI."""
        cies, fdes = parse_eh_frame(isect.content, f"{obj.path}(__eh_frame)")
        covered = {r.offset for r in isect.relocs}
        extra = []
        for fde in fdes:
            for fld in (fde.pc_begin, fde.lsda):
                if fld is None or fld.offset in covered or not fld.pcrel:
                    continue
                target_addr = isect.addr + fld.offset + fld.value
                tsect, toff = obj.section_at(target_addr)
                extra.append(
                    Reloc(
                        RelocKind.DELTA,
                        fld.offset,
                        fld.size,
                        Target(section=tsect.ordinal, offset=toff),
                        0,
                        minus=None,
                    )
                )
        self.synthetic_relocs[id(isect)] = extra
        self.eh_frames[id(isect)] = (cies, fdes)

    # ------------------------------------------------------------------------------------------
    # phase 4: output sections

    def build_sections(self) -> None:
        by_key: dict[tuple[str, str], OutSection] = {}
        order: dict[tuple[str, str], int] = {}
        auth_segments = self.arch.uses_pointer_auth
        for obj in self.objects:
            for isect in obj.sections:
                if (
                    isect.segname == "__LD"
                    or isect.header.flags & C.S_ATTR_DEBUG
                    or isect.segname == "__DWARF"
                ):
                    continue
                seg = output_segment(
                    isect.segname, isect.sectname, isect.has_auth_pointers, auth_segments, self.data_const
                )
                key = (seg, isect.sectname)
                osect = by_key.get(key)
                if osect is None:
                    osect = OutSection(seg, isect.sectname, isect.header.flags, 1)
                    by_key[key] = osect
                    order[key] = len(order)
                osect.inputs.append(isect)
                osect.align = max(osect.align, isect.align)
                self.out_of[id(isect)] = osect
        code_attrs = C.S_SYMBOL_STUBS | C.S_ATTR_PURE_INSTRUCTIONS | C.S_ATTR_SOME_INSTRUCTIONS
        synth: list[OutSection] = []
        if self.stubs:
            synth.append(
                OutSection(
                    "__TEXT",
                    self.arch.stubs_section,
                    code_attrs,
                    2 if self.arch.name == "x86_64" else 4,
                    SectionKind.STUBS,
                    reserved2=self.arch.stub_size,
                )
            )
        if self.lazy:
            synth.append(
                OutSection(
                    "__TEXT",
                    "__stub_helper",
                    C.S_ATTR_PURE_INSTRUCTIONS | C.S_ATTR_SOME_INSTRUCTIONS,
                    4,
                    SectionKind.STUB_HELPER,
                )
            )
            synth.append(
                OutSection(
                    "__DATA", "__la_symbol_ptr", C.S_LAZY_SYMBOL_POINTERS, 8, SectionKind.LAZY_POINTERS
                )
            )
        if self.got:
            synth.append(
                OutSection(
                    "__DATA_CONST" if self.data_const else "__DATA",
                    "__got",
                    C.S_NON_LAZY_SYMBOL_POINTERS,
                    8,
                    SectionKind.GOT,
                )
            )
        if self.auth_got:
            synth.append(
                OutSection(
                    "__AUTH_CONST", "__auth_got", C.S_NON_LAZY_SYMBOL_POINTERS, 8, SectionKind.AUTH_GOT
                )
            )
        if self.unwind_rows or any(o.sectname == "__text" for o in by_key.values()):
            synth.append(OutSection("__TEXT", "__unwind_info", C.S_REGULAR, 4, SectionKind.UNWIND_INFO))
        if self.common_section is not None:
            synth.append(self.common_section)
        if self.lazy:
            # __dyld_private: 8 bytes for dyld's lazy binder at the end of __DATA,__data
            data = by_key.get(("__DATA", "__data"))
            if data is None:
                data = OutSection("__DATA", "__data", C.S_REGULAR, 8)
                synth.append(data)
            data.align = max(data.align, 8)
            data.tail = 8
        for s in synth:
            key = (s.segname, s.sectname)
            if key in by_key:
                raise LinkError(f"input objects already contain a {s.segname},{s.sectname} section")
            by_key[key] = s
            order[key] = len(order)
        segs: dict[str, OutSegment] = {"__TEXT": OutSegment("__TEXT", SEGMENT_PROT["__TEXT"])}
        seg_seen = {"__TEXT": 0}
        for osect in by_key.values():
            if osect.segname not in segs:
                if osect.segname not in SEGMENT_PROT:
                    raise LinkError(f"unsupported output segment {osect.segname}")
                segs[osect.segname] = OutSegment(osect.segname, SEGMENT_PROT[osect.segname])
                seg_seen[osect.segname] = len(seg_seen)
            segs[osect.segname].sections.append(osect)
        self.segments = sorted(segs.values(), key=lambda g: segment_rank(g.name, seg_seen[g.name]))
        for g in self.segments:
            g.sections.sort(
                key=lambda s: section_rank(s.segname, s.sectname, s.flags, order[(s.segname, s.sectname)])
            )
        self.sections = [s for g in self.segments for s in g.sections]
        for i, s in enumerate(self.sections, 1):
            s.index = i
        if len(self.sections) > 255:
            raise LinkError("more than 255 output sections")
        self.segments.append(OutSegment("__LINKEDIT", SEGMENT_PROT["__LINKEDIT"]))

    def section(self, kind: SectionKind) -> OutSection:
        for s in self.sections:
            if s.kind is kind:
                return s
        raise KeyError(kind)

    # ------------------------------------------------------------------------------------------
    # phase 5: layout

    def size_sections(self) -> None:
        for s in self.sections:
            if s.kind is SectionKind.REGULAR:
                off = 0
                for isect in s.inputs:
                    off = -(-off // isect.align) * isect.align
                    s.input_offsets.append(off)
                    off += isect.size
                if s.tail:
                    off = -(-off // 8) * 8 + s.tail
                s.size = off
            elif s.kind is SectionKind.STUBS:
                s.size = len(self.stubs) * self.arch.stub_size
            elif s.kind is SectionKind.GOT:
                s.size = 8 * len(self.got)
            elif s.kind is SectionKind.STUB_HELPER:
                header, entry = self._stub_helper_sizes()
                s.size = header + entry * len(self.lazy)
            elif s.kind is SectionKind.LAZY_POINTERS:
                s.size = 8 * len(self.lazy)
            elif s.kind is SectionKind.AUTH_GOT:
                s.size = 8 * len(self.auth_got)
            elif s.kind is SectionKind.UNWIND_INFO:
                self.unwind_entries = self._unwind_entries_unplaced()
                personalities = sorted({id(r.personality) for r in self.unwind_rows if r.personality})
                s.size = unwind_layout(self.unwind_entries, list(personalities)).size

    def _unwind_entries_unplaced(self) -> list[UnwindEntry]:
        """Rows with placeholder offsets: only their count and LSDA/personality shape matter for sizing."""
        entries = [
            UnwindEntry(0, r.length, r.encoding, 0 if r.personality else None, 0 if r.lsda else None)
            for r in self.unwind_rows
        ]
        return entries + [UnwindEntry(0, 0, 0) for _ in self._uncovered_functions()]

    def _uncovered_functions(self) -> list[tuple[InputSection, int]]:
        """Code symbols that no compact unwind row covers: they get an explicit 'no unwind' row."""
        covered: dict[int, list[tuple[int, int]]] = {}
        for r in self.unwind_rows:
            covered.setdefault(id(r.isect), []).append((r.offset, r.offset + r.length))
        out = []
        for obj in self.objects:
            seen: set[tuple[int, int]] = set()
            for sym in obj.symbols:
                if not sym.is_defined or sym.is_absolute or sym.is_temp_label:
                    continue
                isect = obj.section(sym.n_sect)
                if not isect.header.flags & C.S_ATTR_PURE_INSTRUCTIONS or isect.segname == "__LD":
                    continue
                off = sym.n_value - isect.addr
                if (id(isect), off) in seen or off >= isect.size:
                    continue
                seen.add((id(isect), off))
                if any(a <= off < b for a, b in covered.get(id(isect), [])):
                    continue
                out.append((isect, off))
        return out

    def load_commands_size(self) -> int:
        return len(self.build_load_commands(placeholder=True))

    def layout(self) -> None:
        align = self.arch.segment_alignment
        header_end = 32 + self.load_commands_size() + HEADER_PAD
        vm = 0
        fileoff = 0
        for g in self.segments:
            if g.name == "__LINKEDIT":
                continue
            g.vmaddr, g.fileoff = vm, fileoff
            cursor = header_end if g.name == "__TEXT" else 0
            file_end = cursor
            for s in g.sections:
                cursor = -(-cursor // s.align) * s.align
                s.addr = g.vmaddr + cursor
                if s.is_zerofill:
                    s.fileoff = 0
                else:
                    s.fileoff = g.fileoff + cursor
                    file_end = cursor + s.size
                cursor += s.size
            g.vmsize = -(-max(cursor, 1) // align) * align
            g.filesize = -(-file_end // align) * align if file_end else 0
            vm = g.vmaddr + g.vmsize
            fileoff = g.fileoff + g.filesize
        self.linkedit_vmaddr = vm
        self.linkedit_fileoff = fileoff
        for s in self.sections:
            for isect, off in zip(s.inputs, s.input_offsets, strict=True):
                isect.out_addr = s.addr + off

    # ------------------------------------------------------------------------------------------
    # addresses

    def address_of(self, ls: LinkSymbol) -> int:
        if ls.kind is SymKind.ABSOLUTE:
            return ls.value
        if ls.kind is SymKind.DEFINED:
            assert ls.isect is not None
            return ls.isect.out_addr + ls.offset
        if ls.kind is SymKind.COMMON:
            assert ls.out is not None
            return ls.out.addr + ls.offset
        raise LinkError(f"{ls.name} is imported and has no address in this image")

    def place_of(self, ls: LinkSymbol) -> tuple[OutSection, int]:
        """(output section, offset) of a defined symbol, for split seg 'to' fields."""
        if ls.kind is SymKind.DEFINED:
            assert ls.isect is not None
            osect = self.out_of[id(ls.isect)]
            return osect, ls.isect.out_addr - osect.addr + ls.offset
        if ls.kind is SymKind.COMMON:
            assert ls.out is not None
            return ls.out, ls.offset
        raise LinkError(f"{ls.name} has no place in this image")

    def stub_addr(self, ls: LinkSymbol) -> int:
        return self.section(SectionKind.STUBS).addr + self.stub_index[id(ls)] * self.arch.stub_size

    def got_slot(self, ls: LinkSymbol) -> tuple[OutSection, int]:
        s = self.section(SectionKind.GOT)
        return s, 8 * self.got_index[id(ls)]

    def stub_slot(self, ls: LinkSymbol) -> tuple[OutSection, int]:
        if id(ls) in self.lazy_index:
            return self.section(SectionKind.LAZY_POINTERS), 8 * self.lazy_index[id(ls)]
        if self.arch.uses_pointer_auth:
            s = self.section(SectionKind.AUTH_GOT)
            return s, 8 * self.auth_got_index[id(ls)]
        return self.got_slot(ls)

    # ------------------------------------------------------------------------------------------
    # phase 6: content and relocations

    def write_content(self) -> None:
        self.buf = bytearray(self.linkedit_fileoff)
        for s in self.sections:
            if s.kind is not SectionKind.REGULAR or s.is_zerofill:
                continue
            for isect in s.inputs:
                start = isect.out_addr - s.addr + s.fileoff
                self.buf[start : start + isect.size] = isect.content
        for k, obj in enumerate(self.objects):
            for isect in obj.sections:
                osect = self.out_of.get(id(isect))
                if osect is None:
                    continue
                for r in isect.relocs + self.synthetic_relocs.get(id(isect), []):
                    self.apply(k, isect, osect, r)
        self.write_stubs_and_gots()
        self.write_lazy_binding()
        self.write_unwind_info()

    def _split(
        self, kind: int, from_sect: OutSection, from_off: int, to_sect: OutSection, to_off: int
    ) -> None:
        self.split.append((kind, from_sect.index, to_sect.index, from_off, to_off))

    def _import_for(self, ls: LinkSymbol) -> int:
        if ls.is_import:
            key = (ls.name, ls.ordinal, ls.weak_import)
        else:
            key = (ls.name, C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP, False)
        idx = self._import_index.get(key)
        if idx is None:
            idx = len(self.fixup_imports)
            self._import_index[key] = idx
            self.fixup_imports.append(Import(key[0], key[1], key[2]))
        if ls.import_is_weak_def or not ls.is_import:
            self.binds_to_weak = True
        return idx

    def _pointer(
        self,
        location: int,
        seg_index: int,
        target: LinkSymbol | None,
        target_addr: int,
        addend: int,
        auth: tuple[int, int, bool] | None,
        from_sect: OutSection,
        from_off: int,
        to: tuple[OutSection, int] | None,
    ) -> None:
        """Record one pointer-sized fixup (rebase or bind) and its split seg entry."""
        key, div, addr_div = auth if auth is not None else (0, 0, False)
        if target is not None and target.kind is SymKind.ABSOLUTE:
            struct.pack_into(
                "<Q", self.buf, self._file_offset(location), (target.value + addend) & (2**64 - 1)
            )
            return
        if target is not None and target.needs_bind and (target.is_import or self.chained):
            kind = FixupKind.AUTH_BIND if auth else FixupKind.BIND
            self.fixups.append(
                (location, 0, addend, self._import_for(target), seg_index, div, kind, 0, key, int(addr_div))
            )
            if not target.is_import:
                assert to is not None
                self._split(self._pointer_kind(), from_sect, from_off, to[0], to[1] + addend)
            return
        if target is not None and target.needs_bind:  # opcodes: own weak def -> rebase + weak bind entry
            self.weak_binds.append(WeakBind(target.name, location, addend))
            self.binds_to_weak = True
        value = target_addr + addend
        kind = FixupKind.AUTH_REBASE if auth else FixupKind.REBASE
        self.fixups.append((location, value, 0, -1, seg_index, div, kind, 0, key, int(addr_div)))
        if not self.chained:
            struct.pack_into("<Q", self.buf, self._file_offset(location), value)
        if to is not None:
            self._split(self._pointer_kind(), from_sect, from_off, to[0], to[1] + addend)

    def _pointer_kind(self) -> int:
        return (
            C.DYLD_CACHE_ADJ_V2_THREADED_POINTER_64
            if self.arch.uses_pointer_auth
            else C.DYLD_CACHE_ADJ_V2_POINTER_64
        )

    def _file_offset(self, vmaddr: int) -> int:
        for s in self.sections:
            if s.addr <= vmaddr < s.addr + s.size and not s.is_zerofill:
                return s.fileoff + (vmaddr - s.addr)
        raise LinkError(f"address {vmaddr:#x} has no file content")

    def _segment_index(self, osect: OutSection) -> int:
        for i, g in enumerate(self.segments):
            if osect in g.sections:
                return i
        raise AssertionError(osect.name)

    def apply(self, k: int, isect: InputSection, osect: OutSection, r: Reloc) -> None:
        obj = self.objects[k]
        P = isect.out_addr + r.offset
        from_off = P - osect.addr
        fo = osect.fileoff + from_off
        where = f"{obj.path}({isect.segname},{isect.sectname}+{r.offset:#x})"

        def target_info(t: Target) -> tuple[LinkSymbol | None, int, tuple[OutSection, int] | None]:
            if t.section is not None:
                ts = obj.section(t.section)
                tos = self.out_of.get(id(ts))
                if tos is None:
                    raise LinkError(
                        f"{where}: refers to section {ts.segname},{ts.sectname}, which is not linked"
                    )
                return None, ts.out_addr + t.offset, (tos, ts.out_addr - tos.addr + t.offset)
            ls = self.symbol_for(k, t)
            if ls.is_import:
                return ls, 0, None
            if ls.kind is SymKind.ABSOLUTE:
                return ls, ls.value, None
            return ls, self.address_of(ls), self.place_of(ls)

        def put32(value: int) -> None:
            struct.pack_into("<I", self.buf, fo, value & 0xFFFFFFFF)

        def get32() -> int:
            return int(struct.unpack_from("<I", self.buf, fo)[0])

        kind = r.kind
        try:
            if kind in (RelocKind.POINTER64, RelocKind.AUTH_POINTER):
                ls, T, to = target_info(r.target)
                if P % (8 if self.arch.uses_pointer_auth else 4):
                    raise LinkError(f"{where}: pointer is not aligned for chained fixups")
                auth = (r.key, r.diversity, r.addr_div) if kind is RelocKind.AUTH_POINTER else None
                self._pointer(P, self._segment_index(osect), ls, T, r.addend, auth, osect, from_off, to)
            elif kind is RelocKind.POINTER32:
                raise LinkError(f"{where}: 32-bit absolute pointers cannot be slid in a 64-bit dylib")
            elif kind is RelocKind.DELTA:
                ls, T, to = target_info(r.target)
                if ls is not None and ls.is_import:
                    raise LinkError(f"{where}: difference with imported symbol {ls.name}")
                if r.minus is None:  # pc-relative field found by parsing CFI
                    value = T + r.addend - P
                else:
                    ms, M, _ = target_info(r.minus)
                    if ms is not None and ms.is_import:
                        raise LinkError(f"{where}: difference with imported symbol {ms.name}")
                    value = T + r.addend - M
                struct.pack_into("<q" if r.length == 8 else "<i", self.buf, fo, value)
                if to is not None:
                    self._split(
                        C.DYLD_CACHE_ADJ_V2_DELTA_64 if r.length == 8 else C.DYLD_CACHE_ADJ_V2_DELTA_32,
                        osect,
                        from_off,
                        to[0],
                        to[1],
                    )
            elif kind is RelocKind.BRANCH26:
                ls, T, to = target_info(r.target)
                if ls is not None and ls.needs_bind:
                    T = self.stub_addr(ls)
                    to = (self.section(SectionKind.STUBS), T - self.section(SectionKind.STUBS).addr)
                put32(A64.set_branch26(get32(), P, T + r.addend))
                if to is not None and to[0] is not osect:
                    self._split(C.DYLD_CACHE_ADJ_V2_ARM64_BR26, osect, from_off, to[0], to[1] + r.addend)
            elif kind in (
                RelocKind.PAGE21,
                RelocKind.PAGEOFF12,
                RelocKind.GOT_PAGE21,
                RelocKind.GOT_PAGEOFF12,
            ):
                if kind in (RelocKind.GOT_PAGE21, RelocKind.GOT_PAGEOFF12):
                    ls = self.symbol_for(k, r.target)
                    gs, goff = self.got_slot(ls)
                    T, to = gs.addr + goff, (gs, goff)
                else:
                    ls, T, to = target_info(r.target)
                    if ls is not None and ls.is_import:
                        raise LinkError(f"{where}: direct ADRP/ADD reference to imported symbol {ls.name}")
                    T += r.addend
                    if to is not None:
                        to = (to[0], to[1] + r.addend)
                if kind in (RelocKind.PAGE21, RelocKind.GOT_PAGE21):
                    put32(A64.set_adrp(get32(), P, T))
                    split_kind = C.DYLD_CACHE_ADJ_V2_ARM64_ADRP
                else:
                    put32(A64.set_imm12(get32(), T, P))
                    split_kind = C.DYLD_CACHE_ADJ_V2_ARM64_OFF12
                if to is not None and to[0] is not osect:
                    self._split(split_kind, osect, from_off, to[0], to[1])
            elif kind is RelocKind.POINTER_TO_GOT:
                ls = self.symbol_for(k, r.target)
                personality = any(row.personality is ls for row in self.unwind_rows)
                gs, goff = self.stub_slot(ls) if personality else self.got_slot(ls)
                struct.pack_into("<i", self.buf, fo, gs.addr + goff - P)
                self._split(C.DYLD_CACHE_ADJ_V2_DELTA_32, osect, from_off, gs, goff)
            elif kind in (
                RelocKind.X86_PCREL,
                RelocKind.X86_BRANCH,
                RelocKind.X86_GOT_LOAD,
                RelocKind.X86_GOT,
            ):
                if kind in (RelocKind.X86_GOT_LOAD, RelocKind.X86_GOT):
                    ls = self.symbol_for(k, r.target)
                    gs, goff = self.got_slot(ls)
                    T, to = gs.addr + goff, (gs, goff)
                    value = T + r.addend - (P + r.bias)
                else:
                    ls, T, to = target_info(r.target)
                    if ls is not None and ls.needs_bind:
                        if kind is not RelocKind.X86_BRANCH:
                            raise LinkError(f"{where}: RIP-relative reference to imported symbol {ls.name}")
                        T = self.stub_addr(ls)
                        to = (self.section(SectionKind.STUBS), T - self.section(SectionKind.STUBS).addr)
                    value = T + r.addend - (P + r.bias)
                    if to is not None:
                        # the instruction reaches T + addend: the bias only moves P to the
                        # instruction's end (SIGNED_1/2/4 have immediates after the displacement)
                        to = (to[0], to[1] + r.addend)
                self.buf[fo : fo + 4] = X64.rel32(value, P)
                if to is not None and (to[0] is not osect or not osect.is_code):
                    self._split(C.DYLD_CACHE_ADJ_V2_DELTA_32, osect, from_off, to[0], to[1])
            else:
                raise LinkError(f"{where}: unsupported relocation {kind.value}")
        except A64.InstructionError as exc:
            raise LinkError(f"{where}: {exc}") from None
        except ValueError as exc:
            raise LinkError(f"{where}: {exc}") from None

    def write_stubs_and_gots(self) -> None:
        auth = self.arch.uses_pointer_auth
        if self.stubs:
            ss = self.section(SectionKind.STUBS)
            for i, ls in enumerate(self.stubs):
                addr = ss.addr + i * self.arch.stub_size
                gs, goff = self.stub_slot(ls)
                slot = gs.addr + goff
                fo = ss.fileoff + i * self.arch.stub_size
                if self.arch.name == "x86_64":
                    self.buf[fo : fo + 6] = X64.stub_bytes(addr, slot)
                    self._split(
                        C.DYLD_CACHE_ADJ_V2_DELTA_32, ss, addr - ss.addr + X64.STUB_DISP_OFFSET, gs, goff
                    )
                else:
                    words = A64.stub_words(addr, slot, auth)
                    struct.pack_into(f"<{len(words)}I", self.buf, fo, *words)
                    self._split(C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, ss, addr - ss.addr, gs, goff)
                    self._split(C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, ss, addr - ss.addr + 4, gs, goff)
        for kind, table in ((SectionKind.GOT, self.got), (SectionKind.AUTH_GOT, self.auth_got)):
            if not table:
                continue
            gs = self.section(kind)
            seg = self._segment_index(gs)
            for i, ls in enumerate(table):
                slot = gs.addr + 8 * i
                slot_auth = (C.PTRAUTH_KEY_IA, 0, True) if kind is SectionKind.AUTH_GOT else None
                if ls.is_import:
                    self._pointer(slot, seg, ls, 0, 0, slot_auth, gs, 8 * i, None)
                else:
                    self._pointer(
                        slot,
                        seg,
                        ls,
                        self.address_of(ls),
                        0,
                        slot_auth,
                        gs,
                        8 * i,
                        self.place_of(ls) if ls.kind is not SymKind.ABSOLUTE else None,
                    )

    def _stub_helper_sizes(self) -> tuple[int, int]:
        if self.arch.name == "x86_64":
            return X64.STUB_HELPER_HEADER_SIZE, X64.STUB_HELPER_ENTRY_SIZE
        return 4 * len(A64.STUB_HELPER_HEADER), 4 * (len(A64.STUB_HELPER_ENTRY) + 1)

    def write_lazy_binding(self) -> None:
        """__la_symbol_ptr slots (rebased to their __stub_helper entries), the helper code and
        the lazy bind records whose offsets the entries push for dyld_stub_binder."""
        if not self.lazy:
            return
        from ..macho.bind_opcodes import BindEntry, encode_lazy_bind_opcodes

        assert self.stub_binder is not None
        hs, ls_sect = self.section(SectionKind.STUB_HELPER), self.section(SectionKind.LAZY_POINTERS)
        data = next(s for s in self.sections if s.tail)
        private_off = data.size - data.tail
        private = data.addr + private_off
        gs, goff = self.got_slot(self.stub_binder)
        binder_slot = gs.addr + goff
        seg = self._segment_index(ls_sect)
        seg_start = self.segments[seg].vmaddr
        stream, offsets = encode_lazy_bind_opcodes(
            BindEntry(
                seg,
                ls_sect.addr + 8 * i - seg_start,
                C.BIND_TYPE_POINTER,
                sym.ordinal,
                sym.name,
                C.BIND_SYMBOL_FLAGS_WEAK_IMPORT if sym.weak_import else 0,
                0,
            )
            for i, sym in enumerate(self.lazy)
        )
        self.lazy_bind_stream = stream
        header_size, entry_size = self._stub_helper_sizes()
        if self.arch.name == "x86_64":
            raw = X64.stub_helper_header(hs.addr, private, binder_slot)
            self._split(C.DYLD_CACHE_ADJ_V2_DELTA_32, hs, X64.HELPER_PRIVATE_DISP, data, private_off)
            self._split(C.DYLD_CACHE_ADJ_V2_DELTA_32, hs, X64.HELPER_BINDER_DISP, gs, goff)
        else:
            words = A64.stub_helper_header_words(hs.addr, private, binder_slot)
            raw = struct.pack(f"<{len(words)}I", *words)
            self._split(C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, hs, 0, data, private_off)
            self._split(C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, hs, 4, data, private_off)
            self._split(C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, hs, 12, gs, goff)
            self._split(C.DYLD_CACHE_ADJ_V2_ARM64_OFF12, hs, 16, gs, goff)
        self.buf[hs.fileoff : hs.fileoff + header_size] = raw
        for i, offset in enumerate(offsets):
            at = header_size + entry_size * i
            if self.arch.name == "x86_64":
                raw = X64.stub_helper_entry(hs.addr + at, hs.addr, offset)
            else:
                words = A64.stub_helper_entry_words(hs.addr + at, hs.addr, offset)
                raw = struct.pack(f"<{len(words)}I", *words)
            self.buf[hs.fileoff + at : hs.fileoff + at + entry_size] = raw
            # the slot starts out at its helper entry: a rebase, and a pointer for split seg
            self._pointer(ls_sect.addr + 8 * i, seg, None, hs.addr + at, 0, None, ls_sect, 8 * i, (hs, at))

    def write_unwind_info(self) -> None:
        try:
            us = self.section(SectionKind.UNWIND_INFO)
        except KeyError:
            return
        dwarf = dwarf_mode(self.arch.name)
        eh_out = {}
        for s in self.sections:
            for isect in s.inputs:
                if isect.sectname == "__eh_frame":
                    eh_out[id(isect.obj)] = (isect, isect.out_addr - s.addr)
        entries = []
        personalities: list[int] = []
        for r in self.unwind_rows:
            func = r.isect.out_addr + r.offset
            encoding = r.encoding
            if (encoding & 0x0F000000) == dwarf:
                encoding = dwarf | self._fde_offset(r, eh_out)
            slot = None
            if r.personality is not None:
                gs, goff = self.stub_slot(r.personality)
                slot = gs.addr + goff
                if slot not in personalities:
                    personalities.append(slot)
            lsda = r.lsda[0].out_addr + r.lsda[1] if r.lsda is not None else None
            entries.append(UnwindEntry(func, r.length, encoding, slot, lsda))
        for isect, off in self._uncovered_functions():
            entries.append(UnwindEntry(isect.out_addr + off, 0, 0))
        entries.sort(key=lambda e: e.function)
        text_end = max((e.function + e.length for e in entries), default=0)
        if entries:
            for a, b in itertools.pairwise(entries):
                if a.length == 0:
                    a.length = b.function - a.function
        text = next((s for s in self.sections if s.sectname == "__text"), None)
        if text is not None:
            text_end = max(text_end, text.addr + text.size)
        merged = merge_entries(entries, self.arch.name)
        raw, image_offsets = write_unwind_info(merged, personalities, text_end)
        if len(raw) > us.size:
            raise LinkError("internal error: __unwind_info grew after layout")
        self.buf[us.fileoff : us.fileoff + len(raw)] = raw
        us.size = len(raw)
        for field_off, target in image_offsets:
            tsect = self._section_at(target)
            if tsect is not None:
                self._split(C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32, us, field_off, tsect, target - tsect.addr)

    def _section_at(self, addr: int) -> OutSection | None:
        for s in self.sections:
            if s.addr <= addr < s.addr + s.size:
                return s
        for s in self.sections:  # one past the end (index sentinels)
            if addr == s.addr + s.size and s.is_code:
                return s
        return None

    def _fde_offset(self, row: _CompactUnwind, eh_out: dict[int, tuple[InputSection, int]]) -> int:
        obj = row.isect.obj
        found = eh_out.get(id(obj))
        if found is None:
            raise LinkError(f"{obj.path}: DWARF unwind encoding but no __eh_frame")
        eh_isect, base = found
        _, fdes = self.eh_frames[id(eh_isect)]
        relocs = {r.offset: r for r in eh_isect.relocs + self.synthetic_relocs.get(id(eh_isect), [])}
        k = self.objects.index(obj)
        for fde in fdes:
            r = relocs.get(fde.pc_begin.offset)
            if r is None:
                continue
            if r.target.section is not None:
                tsect, toff = obj.section(r.target.section), r.target.offset + r.addend
            else:
                ls = self.symbol_for(k, r.target)
                if ls.isect is None:
                    continue
                tsect, toff = ls.isect, ls.offset
                if r.minus is not None:  # A - B + in_place where B is the field's own position
                    toff = ls.offset
            if tsect is row.isect and toff == row.offset:
                return base + fde.offset
        raise LinkError(f"{obj.path}: no FDE for a function at {row.isect.sectname}+{row.offset:#x}")

    # ------------------------------------------------------------------------------------------
    # phase 7: LINKEDIT

    def build_linkedit(self) -> None:
        pieces: list[tuple[str, bytes]] = []
        records = np.zeros(len(self.fixups), dtype=FIXUP_DTYPE)
        if self.fixups:
            cols = list(zip(*self.fixups, strict=True))
            for name, col in zip(
                (
                    "address",
                    "target",
                    "addend",
                    "bind",
                    "segment",
                    "diversity",
                    "kind",
                    "high8",
                    "key",
                    "addr_div",
                ),
                cols,
                strict=True,
            ):
                records[name] = col
            records = records[np.argsort(records["address"], kind="stable")]
        self.fixup_records = records
        if self.chained:
            pieces.append(("chained", self._chained_blob(records)))
        else:
            from ..macho.bind_opcodes import BindEntry, encode_bind_opcodes, encode_weak_bind_opcodes
            from ..macho.rebase_opcodes import encode_rebase_opcodes

            seg_starts = [g.vmaddr for g in self.segments]
            rebases = [
                (int(r["segment"]), int(r["address"]) - seg_starts[int(r["segment"])], C.REBASE_TYPE_POINTER)
                for r in records
                if r["kind"] == FixupKind.REBASE
            ]
            binds = [
                BindEntry(
                    int(r["segment"]),
                    int(r["address"]) - seg_starts[int(r["segment"])],
                    C.BIND_TYPE_POINTER,
                    self.fixup_imports[int(r["bind"])].ordinal,
                    self.fixup_imports[int(r["bind"])].name,
                    C.BIND_SYMBOL_FLAGS_WEAK_IMPORT if self.fixup_imports[int(r["bind"])].weak else 0,
                    int(r["addend"]),
                )
                for r in records
                if r["kind"] == FixupKind.BIND
            ]
            segs = [(g.vmaddr, g.vmsize) for g in self.segments]
            pieces.append(("rebase", encode_rebase_opcodes(rebases)))
            pieces.append(("bind", encode_bind_opcodes(binds)))
            pieces.append(
                (
                    "weak_bind",
                    encode_weak_bind_opcodes(sorted(self.weak_binds, key=lambda w: w.name), segs)
                    if self.weak_binds
                    else b"",
                )
            )
            pieces.append(("lazy_bind", self.lazy_bind_stream))
        pieces.append(("exports", self._exports_trie()))
        split = (
            np.array(sorted(self.split), dtype=SPLIT_SEG_DTYPE)
            if self.split
            else np.zeros(0, SPLIT_SEG_DTYPE)
        )
        if self.opts.split_seg_version == 1:
            pieces.append(("split_seg", encode_split_seg_v1(self._split_seg_v1(split))))
        else:
            pieces.append(("split_seg", encode_split_seg_v2(split)))
        pieces.append(("function_starts", write_function_starts(self._function_starts(), 0)))
        pieces.append(("data_in_code", self._data_in_code()))
        nlist, strings, indirect = self._symbol_table()
        pieces.append(("symtab", nlist.tobytes()))
        pieces.append(("indirect", indirect.tobytes() + bytes(-len(indirect.tobytes()) % 8)))
        pieces.append(("strings", strings))
        off = self.linkedit_fileoff
        self.linkedit_offsets = {}
        blob = bytearray()
        for name, raw in pieces:
            pad = -len(blob) % LINKEDIT_ALIGN
            blob += bytes(pad)
            self.linkedit_offsets[name] = (off + len(blob), len(raw))
            blob += raw
        self.linkedit = bytes(blob)
        g = self.segments[-1]
        g.vmaddr, g.fileoff = self.linkedit_vmaddr, self.linkedit_fileoff
        g.filesize = len(blob)
        g.vmsize = -(-len(blob) // self.arch.segment_alignment) * self.arch.segment_alignment
        self.nsyms = len(nlist)
        self.nindirect = len(indirect)

    def _split_seg_v1(self, split: np.ndarray) -> np.ndarray:
        """v1 lists the values in __TEXT that refer to another segment (they move with the data)."""
        sections = {s.index: s for s in self.sections}
        rows = []
        for kind, from_sect, to_sect, from_off, _to_off in split.tolist():
            src, dst = sections[from_sect], sections.get(to_sect)
            if src.segname != "__TEXT" or dst is None or dst.segname == "__TEXT":
                continue
            if kind in (C.DYLD_CACHE_ADJ_V2_DELTA_32, C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32):
                rows.append((1, src.addr + from_off))
            elif kind == C.DYLD_CACHE_ADJ_V2_DELTA_64:
                rows.append((2, src.addr + from_off))
            elif kind != C.DYLD_CACHE_ADJ_V2_POINTER_64:  # pointers are rebased, not listed
                raise LinkError(
                    f"split seg v1 cannot express a {C.SPLIT_SEG_KIND_NAMES.get(kind, kind)} reference"
                )
        return (
            np.array(sorted(set(rows)), dtype=SPLIT_SEG_V1_DTYPE) if rows else np.zeros(0, SPLIT_SEG_V1_DTYPE)
        )

    def _chained_blob(self, records: np.ndarray) -> bytes:
        from ..macho.chained_fixups import ChainedSegment, encode_chained_fixups

        segments = [ChainedSegment(g.vmaddr, g.vmsize, g.fileoff) for g in self.segments]
        return encode_chained_fixups(
            segments=segments,
            records=records,
            imports=self.fixup_imports,
            pointer_format=self.arch.chained_pointer_format,
            page_size=self.arch.chained_page_size,
            image=memoryview(self.buf),
            base_address=0,
        )

    def _exports_trie(self) -> bytes:
        exports: list[Export] = []
        data_exports = 0
        for name, ls in sorted(self.globals.items()):
            if not ls.external or ls.is_import:
                continue
            flags = C.EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION if ls.weak_def else 0
            if ls.kind is SymKind.ABSOLUTE:
                exports.append(Export(name, flags | C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE, ls.value))
                continue
            addr = self.address_of(ls)
            exports.append(Export(name, flags, addr))
            if self.place_of(ls)[0].segname != "__TEXT":
                data_exports += 1
        for alias, target in self.aliases_reexported:
            exports.append(
                Export(
                    alias,
                    C.EXPORT_SYMBOL_FLAGS_REEXPORT,
                    ordinal=target.ordinal,
                    import_name="" if alias == target.name else target.name,
                )
            )
        raw = write_exports(exports) if exports else b""
        # ld64 leaves 9 spare bytes per export in a data segment so the cache builder can grow
        # their ULEB offsets in place
        return raw + bytes(9 * data_exports)

    def _function_starts(self) -> list[int]:
        starts = {r.isect.out_addr + r.offset for r in self.unwind_rows}
        for k, obj in enumerate(self.objects):
            for sym in obj.symbols:
                if not sym.is_defined or sym.is_absolute or sym.is_temp_label:
                    continue
                isect = obj.section(sym.n_sect)
                if isect.header.flags & C.S_ATTR_PURE_INSTRUCTIONS and id(isect) in self.out_of:
                    starts.add(isect.out_addr + sym.n_value - isect.addr)
            del k
        return sorted(starts)

    def _data_in_code(self) -> bytes:
        rows = []
        for obj in self.objects:
            for e in obj.image.data_in_code:
                isect, off = obj.section_at(int(e["offset"]))
                rows.append((isect.out_addr + off, int(e["length"]), int(e["kind"])))
        rows.sort()
        return b"".join(struct.pack("<IHH", *r) for r in rows)

    def _symbol_table(self) -> tuple[np.ndarray, bytes, np.ndarray]:
        pool = StringPool()
        locals_: list[tuple[int, int, int, int, int]] = []
        seen_local: set[int] = set()
        for k, obj in enumerate(self.objects):
            for i, sym in enumerate(obj.symbols):
                ls = self.symbol_maps[k][i]
                if ls is None or sym.is_temp_label or ls.is_import or ls.external or id(ls) in seen_local:
                    continue
                if sym.is_external and not sym.is_private_extern:
                    continue
                seen_local.add(id(ls))
                n_type = C.N_ABS if ls.kind is SymKind.ABSOLUTE else C.N_SECT
                if sym.is_private_extern:
                    n_type |= C.N_PEXT
                sect = 0 if ls.kind is SymKind.ABSOLUTE else self.place_of(ls)[0].index
                locals_.append(
                    (
                        pool.add(ls.name),
                        n_type,
                        sect,
                        sym.n_desc & ~C.N_WEAK_DEF & 0xFFFF,
                        self.address_of(ls),
                    )
                )
                ls.symtab_index = len(locals_) - 1
        extdefs = [ls for ls in self.globals.values() if ls.external and not ls.is_import]
        extdefs.sort(key=lambda s: s.name)
        imports = sorted(
            {id(s): s for s in self.globals.values() if s.is_import}.values(), key=lambda s: s.name
        )
        rows = list(locals_)
        for ls in extdefs:
            n_type = C.N_EXT | (C.N_ABS if ls.kind is SymKind.ABSOLUTE else C.N_SECT)
            sect = 0 if ls.kind is SymKind.ABSOLUTE else self.place_of(ls)[0].index
            desc = C.N_WEAK_DEF if ls.weak_def else 0
            ls.symtab_index = len(rows)
            rows.append((pool.add(ls.name), n_type, sect, desc, self.address_of(ls)))
        for ls in imports:
            desc = (ls.ordinal << 8) | (C.N_WEAK_REF if ls.weak_import else 0)
            if ls.import_is_weak_def:
                desc |= C.N_REF_TO_WEAK
            ls.symtab_index = len(rows)
            rows.append((pool.add(ls.name), C.N_EXT | C.N_UNDF, 0, desc, 0))
        self.symtab_ranges = (
            0,
            len(locals_),
            len(locals_),
            len(extdefs),
            len(locals_) + len(extdefs),
            len(imports),
        )
        indirect: list[int] = []
        for s in self.sections:
            if s.kind is SectionKind.STUBS:
                s.reserved1 = len(indirect)
                indirect += [ls.symtab_index for ls in self.stubs]
            elif s.kind is SectionKind.LAZY_POINTERS:
                s.reserved1 = len(indirect)
                indirect += [ls.symtab_index for ls in self.lazy]
            elif s.kind in (SectionKind.GOT, SectionKind.AUTH_GOT):
                s.reserved1 = len(indirect)
                table = self.got if s.kind is SectionKind.GOT else self.auth_got
                for ls in table:
                    if ls.is_import or (ls.external and ls.weak_def):
                        indirect.append(ls.symtab_index)
                    elif ls.kind is SymKind.ABSOLUTE:
                        indirect.append(C.INDIRECT_SYMBOL_ABS | C.INDIRECT_SYMBOL_LOCAL)
                    else:
                        indirect.append(C.INDIRECT_SYMBOL_LOCAL)
        return nlist_array(rows), pool.bytes(), np.array(indirect, dtype="<u4")

    # ------------------------------------------------------------------------------------------
    # phase 8: header and load commands

    def header_flags(self) -> int:
        flags = C.MH_NOUNDEFS | C.MH_DYLDLINK | C.MH_TWOLEVEL
        if not any(d.mode == "reexport" for d in self.dylibs):
            flags |= C.MH_NO_REEXPORTED_DYLIBS
        if any(ls.external and ls.weak_def for ls in self.globals.values()):
            flags |= C.MH_WEAK_DEFINES
        if self.binds_to_weak:
            flags |= C.MH_BINDS_TO_WEAK
        return flags

    def build_load_commands(self, placeholder: bool = False) -> bytes:
        lcs: list[bytes] = []
        for g in self.segments:
            specs = []
            for s in g.sections:
                specs.append(
                    SectionSpec(
                        s.segname,
                        s.sectname,
                        s.addr,
                        s.size,
                        s.fileoff,
                        max(0, s.align.bit_length() - 1),
                        s.flags,
                        s.reserved1,
                        s.reserved2,
                    )
                )
            lcs.append(
                segment_command(g.name, g.vmaddr, g.vmsize, g.fileoff, g.filesize, g.prot, g.prot, specs)
            )
        lcs.append(
            dylib_command(
                C.LC_ID_DYLIB,
                self.install_name,
                1,
                0x10000 if self.current_version is None else self.current_version,
                0x10000 if self.compatibility_version is None else self.compatibility_version,
            )
        )
        lo = {} if placeholder else self.linkedit_offsets

        def piece(name: str) -> tuple[int, int]:
            return lo.get(name, (0, 0))

        if self.chained:
            lcs.append(linkedit_data_command(C.LC_DYLD_CHAINED_FIXUPS, *piece("chained")))
            lcs.append(linkedit_data_command(C.LC_DYLD_EXPORTS_TRIE, *piece("exports")))
        else:
            lcs.append(
                dyld_info_command(
                    piece("rebase"), piece("bind"), piece("weak_bind"), piece("lazy_bind"), piece("exports")
                )
            )
        symoff, _ = piece("symtab")
        stroff, strsize = piece("strings")
        lcs.append(symtab_command(symoff, self.nsyms, stroff, strsize))
        indoff, _ = piece("indirect")
        lcs.append(dysymtab_command(*self.symtab_ranges, indoff if self.nindirect else 0, self.nindirect))
        lcs.append(uuid_command(self.uuid))
        lcs.append(build_version_command(self.platform, self.minos, self.sdk))
        lcs.append(source_version_command(0))
        lcs.append(linkedit_data_command(C.LC_SEGMENT_SPLIT_INFO, *piece("split_seg")))
        cmd_of = {
            "load": C.LC_LOAD_DYLIB,
            "weak": C.LC_LOAD_WEAK_DYLIB,
            "reexport": C.LC_REEXPORT_DYLIB,
            "upward": C.LC_LOAD_UPWARD_DYLIB,
        }
        for d in self.dylibs:
            lcs.append(
                dylib_command(
                    cmd_of[d.mode],
                    d.iface.install_name,
                    2,
                    d.iface.current_version,
                    d.iface.compatibility_version,
                )
            )
        lcs.append(linkedit_data_command(C.LC_FUNCTION_STARTS, *piece("function_starts")))
        lcs.append(linkedit_data_command(C.LC_DATA_IN_CODE, *piece("data_in_code")))
        self.ncmds = len(lcs)
        return b"".join(lcs)

    def finish(self) -> bytes:
        self.uuid = bytes(16)
        out = self._assemble()
        digest = hashlib.sha256(self.install_name.encode() + b"\0" + out).digest()
        u = bytearray(digest[:16])
        u[6] = (u[6] & 0x0F) | 0x30
        u[8] = (u[8] & 0x3F) | 0x80
        self.uuid = bytes(u)
        return self._assemble()

    def _assemble(self) -> bytes:
        lcs = self.build_load_commands()
        if self.sections and 32 + len(lcs) > self.sections[0].addr:
            raise LinkError("internal error: load commands outgrew the header space")
        header = struct.pack(
            "<7I4x",
            C.MH_MAGIC_64,
            self.arch.cputype,
            self.cpusubtype,
            C.MH_DYLIB,
            self.ncmds,
            len(lcs),
            self.header_flags(),
        )
        out = bytearray(self.buf)
        out[0 : 32 + len(lcs)] = header + lcs
        return bytes(out) + self.linkedit

    # ------------------------------------------------------------------------------------------

    def run(self) -> LinkResult:
        self.load_inputs()
        self.resolve_symbols()
        self.plan_synthetic()
        self.build_sections()
        self.size_sections()
        self.layout()
        self.write_content()
        self.build_linkedit()
        data = self.finish()
        write_atomically(self.opts.output, data)
        return LinkResult(self.opts.output, self.uuid, self.warnings)
