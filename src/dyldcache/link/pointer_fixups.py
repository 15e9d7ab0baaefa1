"""What the output tells dyld and the cache builder about its locations, recorded while content
is written: every pointer's fixup (a rebase, or a bind to an import), the weak binds of the
opcode form, and the split seg entries of every reference that a moved segment would break."""

from __future__ import annotations

import struct

import numpy as np

from ..arch import Arch
from ..macho import constants as C
from ..macho.fixups import FIXUP_DTYPE, FixupKind, Import, WeakBind
from .model import LinkSymbol, OutSection, SymKind
from .sections import OutputSections

#: FIXUP_DTYPE fields in the order of a recorded row
_ROW_FIELDS = (
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
)


class FixupRecorder:
    def __init__(self, arch: Arch, chained: bool, layout: OutputSections, buf: bytearray) -> None:
        self.arch = arch
        self.chained = chained
        self.layout = layout
        #: the output image as it is written (opcode rebases store their target in place)
        self.buf = buf
        self.fixups: list[tuple[int, ...]] = []
        self.imports: list[Import] = []
        self._import_index: dict[tuple[str, int, bool], int] = {}
        self.weak_binds: list[WeakBind] = []
        #: (kind, from section index, to section index, from offset, to offset)
        self.split: list[tuple[int, int, int, int, int]] = []
        #: some bind goes to a weak definition (MH_BINDS_TO_WEAK)
        self.binds_to_weak = False

    def split_entry(
        self, kind: int, from_sect: OutSection, from_off: int, to_sect: OutSection, to_off: int
    ) -> None:
        self.split.append((kind, from_sect.index, to_sect.index, from_off, to_off))

    def import_for(self, ls: LinkSymbol) -> int:
        """Index of ``ls`` in the imports table (own weak definitions bind by weak lookup)."""
        if ls.is_import:
            key = (ls.name, ls.ordinal, ls.weak_import)
        else:
            key = (ls.name, C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP, False)
        idx = self._import_index.get(key)
        if idx is None:
            idx = len(self.imports)
            self._import_index[key] = idx
            self.imports.append(Import(key[0], key[1], key[2]))
        if ls.import_is_weak_def or not ls.is_import:
            self.binds_to_weak = True
        return idx

    @property
    def pointer_split_kind(self) -> int:
        return (
            C.DYLD_CACHE_ADJ_V2_THREADED_POINTER_64
            if self.arch.uses_pointer_auth
            else C.DYLD_CACHE_ADJ_V2_POINTER_64
        )

    def pointer(
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
                "<Q", self.buf, self.layout.file_offset(location), (target.value + addend) & (2**64 - 1)
            )
            return
        if target is not None and target.needs_bind and (target.is_import or self.chained):
            kind = FixupKind.AUTH_BIND if auth else FixupKind.BIND
            self.fixups.append(
                (location, 0, addend, self.import_for(target), seg_index, div, kind, 0, key, int(addr_div))
            )
            if not target.is_import:
                assert to is not None
                self.split_entry(self.pointer_split_kind, from_sect, from_off, to[0], to[1] + addend)
            return
        if target is not None and target.needs_bind:  # opcodes: own weak def -> rebase + weak bind entry
            self.weak_binds.append(WeakBind(target.name, location, addend))
            self.binds_to_weak = True
        value = target_addr + addend
        kind = FixupKind.AUTH_REBASE if auth else FixupKind.REBASE
        self.fixups.append((location, value, 0, -1, seg_index, div, kind, 0, key, int(addr_div)))
        if not self.chained:
            struct.pack_into("<Q", self.buf, self.layout.file_offset(location), value)
        if to is not None:
            self.split_entry(self.pointer_split_kind, from_sect, from_off, to[0], to[1] + addend)

    def records(self) -> np.ndarray:
        """Every fixup as FIXUP_DTYPE rows, sorted by address."""
        records = np.zeros(len(self.fixups), dtype=FIXUP_DTYPE)
        if self.fixups:
            cols = list(zip(*self.fixups, strict=True))
            for name, col in zip(_ROW_FIELDS, cols, strict=True):
                records[name] = col
            records = records[np.argsort(records["address"], kind="stable")]
        return records
