"""Phase 3 of a link, and its writing in phase 6: the synthetic sections. Calls to symbols dyld
binds go through ``__stubs`` (``__auth_stubs`` on arm64e), which jump through a GOT slot
(``__auth_got``) or, with lazy binding, through a ``__la_symbol_ptr`` slot that starts out at
the symbol's ``__stub_helper`` entry. GOT-relative references and personality routines get a
GOT slot. The code of stubs and helpers is the arch's (:mod:`dyldcache.arch`)."""

from __future__ import annotations

from ..arch import Arch
from ..arch.relocation import Via
from ..arch.stubs import HelperTarget
from ..errors import LinkError
from ..macho import constants as C
from ..macho.bind_opcodes import BindEntry, encode_lazy_bind_opcodes
from .model import LinkSymbol, OutSection, SectionKind, SymKind
from .objects import ObjectFile
from .pointer_fixups import FixupRecorder
from .resolution import Symbols
from .sections import OutputSections


class SyntheticSections:
    """Which symbols get a stub, a GOT slot or a lazy pointer, and where those are."""

    def __init__(self, arch: Arch, lazy_binding: bool) -> None:
        self.arch = arch
        self.lazy_binding = lazy_binding
        self.stubs: list[LinkSymbol] = []
        self.got: list[LinkSymbol] = []
        self.auth_got: list[LinkSymbol] = []
        #: lazily bound imports (one __la_symbol_ptr slot and __stub_helper entry each)
        self.lazy: list[LinkSymbol] = []
        self.stub_binder: LinkSymbol | None = None
        self.got_index: dict[int, int] = {}
        self.auth_got_index: dict[int, int] = {}
        self.stub_index: dict[int, int] = {}
        self.lazy_index: dict[int, int] = {}
        #: the lazy bind opcodes the helper entries point into
        self.lazy_bind_stream = b""
        self._layout: OutputSections | None = None

    def plan(self, objects: list[ObjectFile], symbols: Symbols, personalities: list[LinkSymbol]) -> None:
        stubs: dict[int, LinkSymbol] = {}
        got: dict[int, LinkSymbol] = {}
        auth_got: dict[int, LinkSymbol] = {}
        rules = self.arch.relocations
        for k, obj in enumerate(objects):
            for isect in obj.sections:
                if isect.segname == "__LD":
                    continue
                for r in isect.relocs:
                    if r.target.symbol is None:
                        continue
                    ls = symbols.symbol_for(k, r.target)
                    rule = rules.get(r.kind)
                    if rule is None:
                        continue
                    if rule.via is Via.CALL and ls.needs_bind:
                        stubs[id(ls)] = ls
                    elif rule.goes_through_got:
                        got[id(ls)] = ls
        pointer_got = auth_got if self.arch.uses_pointer_auth else got
        for personality in personalities:
            pointer_got[id(personality)] = personality
        lazy = [ls for ls in stubs.values() if self.lazy_binding and ls.is_import]
        for ls in stubs.values():
            if not (self.lazy_binding and ls.is_import):
                pointer_got[id(ls)] = ls
        if lazy:
            binder = symbols.globals.get("dyld_stub_binder") or symbols.import_symbol(
                "dyld_stub_binder", False
            )
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

    def sections(self, data_const: bool) -> list[OutSection]:
        """The output sections the plan needs, in the order they are first seen."""
        code_attrs = C.S_SYMBOL_STUBS | C.S_ATTR_PURE_INSTRUCTIONS | C.S_ATTR_SOME_INSTRUCTIONS
        out: list[OutSection] = []
        if self.stubs:
            out.append(
                OutSection(
                    "__TEXT",
                    self.arch.stubs_section,
                    code_attrs,
                    self.arch.stubs.alignment,
                    SectionKind.STUBS,
                    reserved2=self.arch.stub_size,
                )
            )
        if self.lazy:
            out.append(
                OutSection(
                    "__TEXT",
                    "__stub_helper",
                    C.S_ATTR_PURE_INSTRUCTIONS | C.S_ATTR_SOME_INSTRUCTIONS,
                    4,
                    SectionKind.STUB_HELPER,
                )
            )
            out.append(
                OutSection(
                    "__DATA", "__la_symbol_ptr", C.S_LAZY_SYMBOL_POINTERS, 8, SectionKind.LAZY_POINTERS
                )
            )
        if self.got:
            out.append(
                OutSection(
                    "__DATA_CONST" if data_const else "__DATA",
                    "__got",
                    C.S_NON_LAZY_SYMBOL_POINTERS,
                    8,
                    SectionKind.GOT,
                )
            )
        if self.auth_got:
            out.append(
                OutSection(
                    "__AUTH_CONST", "__auth_got", C.S_NON_LAZY_SYMBOL_POINTERS, 8, SectionKind.AUTH_GOT
                )
            )
        return out

    def size(self, kind: SectionKind) -> int:
        stubs = self.arch.stubs
        sizes = {
            SectionKind.STUBS: len(self.stubs) * self.arch.stub_size,
            SectionKind.GOT: 8 * len(self.got),
            SectionKind.STUB_HELPER: stubs.helper_header_size + stubs.helper_entry_size * len(self.lazy),
            SectionKind.LAZY_POINTERS: 8 * len(self.lazy),
            SectionKind.AUTH_GOT: 8 * len(self.auth_got),
        }
        return sizes[kind]

    # -- addresses, once laid out ---------------------------------------------------------------

    def place(self, layout: OutputSections) -> None:
        self._layout = layout

    @property
    def layout(self) -> OutputSections:
        assert self._layout is not None, "synthetic sections used before layout"
        return self._layout

    def stub_addr(self, ls: LinkSymbol) -> int:
        return self.layout.section(SectionKind.STUBS).addr + self.stub_index[id(ls)] * self.arch.stub_size

    def got_slot(self, ls: LinkSymbol) -> tuple[OutSection, int]:
        s = self.layout.section(SectionKind.GOT)
        return s, 8 * self.got_index[id(ls)]

    def stub_slot(self, ls: LinkSymbol) -> tuple[OutSection, int]:
        """The pointer slot a stub (or the unwind info, for a personality) goes through."""
        if id(ls) in self.lazy_index:
            return self.layout.section(SectionKind.LAZY_POINTERS), 8 * self.lazy_index[id(ls)]
        if self.arch.uses_pointer_auth:
            s = self.layout.section(SectionKind.AUTH_GOT)
            return s, 8 * self.auth_got_index[id(ls)]
        return self.got_slot(ls)

    # -- content --------------------------------------------------------------------------------

    def write_stubs_and_gots(self, buf: bytearray, fixups: FixupRecorder) -> None:
        layout = self.layout
        auth = self.arch.uses_pointer_auth
        code = self.arch.stubs
        if self.stubs:
            ss = layout.section(SectionKind.STUBS)
            size = self.arch.stub_size
            for i, ls in enumerate(self.stubs):
                addr = ss.addr + i * size
                gs, goff = self.stub_slot(ls)
                fo = ss.fileoff + i * size
                buf[fo : fo + size] = code.stub(addr, gs.addr + goff, auth)
                for split_kind, at in code.stub_fields:
                    fixups.split_entry(split_kind, ss, addr - ss.addr + at, gs, goff)
        for kind, table in ((SectionKind.GOT, self.got), (SectionKind.AUTH_GOT, self.auth_got)):
            if not table:
                continue
            gs = layout.section(kind)
            seg = layout.segment_index(gs)
            for i, ls in enumerate(table):
                slot = gs.addr + 8 * i
                slot_auth = (C.PTRAUTH_KEY_IA, 0, True) if kind is SectionKind.AUTH_GOT else None
                if ls.is_import:
                    fixups.pointer(slot, seg, ls, 0, 0, slot_auth, gs, 8 * i, None)
                else:
                    fixups.pointer(
                        slot,
                        seg,
                        ls,
                        layout.address_of(ls),
                        0,
                        slot_auth,
                        gs,
                        8 * i,
                        layout.place_of(ls) if ls.kind is not SymKind.ABSOLUTE else None,
                    )

    def write_lazy_binding(self, buf: bytearray, fixups: FixupRecorder) -> None:
        """__la_symbol_ptr slots (rebased to their __stub_helper entries), the helper code and
        the lazy bind records whose offsets the entries push for dyld_stub_binder."""
        if not self.lazy:
            return
        assert self.stub_binder is not None
        layout = self.layout
        code = self.arch.stubs
        hs, ls_sect = layout.section(SectionKind.STUB_HELPER), layout.section(SectionKind.LAZY_POINTERS)
        data = next(s for s in layout.sections if s.tail)
        private_off = data.size - data.tail
        private = data.addr + private_off
        gs, goff = self.got_slot(self.stub_binder)
        binder_slot = gs.addr + goff
        seg = layout.segment_index(ls_sect)
        seg_start = layout.segments[seg].vmaddr
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
        header_size, entry_size = code.helper_header_size, code.helper_entry_size
        buf[hs.fileoff : hs.fileoff + header_size] = code.helper_header(hs.addr, private, binder_slot)
        refers_to = {HelperTarget.DYLD_PRIVATE: (data, private_off), HelperTarget.BINDER_SLOT: (gs, goff)}
        for kind, at, target in code.helper_header_fields:
            fixups.split_entry(kind, hs, at, *refers_to[target])
        for i, offset in enumerate(offsets):
            at = header_size + entry_size * i
            entry = code.helper_entry(hs.addr + at, hs.addr, offset)
            buf[hs.fileoff + at : hs.fileoff + at + entry_size] = entry
            # the slot starts out at its helper entry: a rebase, and a pointer for split seg
            fixups.pointer(ls_sect.addr + 8 * i, seg, None, hs.addr + at, 0, None, ls_sect, 8 * i, (hs, at))
