"""The output's symbol table (locals, then exported definitions, then imports, as
LC_DYSYMTAB ranges them) and its indirect symbol table (one entry per stub, lazy pointer and
GOT slot, in section order)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..macho import constants as C
from ..macho.symtab import StringPool, nlist_array
from .model import SectionKind, SymKind
from .resolution import Symbols
from .sections import OutputSections
from .synthetic import SyntheticSections


@dataclass(slots=True)
class SymbolTables:
    nlist: np.ndarray
    strings: bytes
    indirect: np.ndarray
    #: LC_DYSYMTAB (ilocalsym, nlocalsym, iextdefsym, nextdefsym, iundefsym, nundefsym)
    ranges: tuple[int, int, int, int, int, int]


def symbol_tables(symbols: Symbols, layout: OutputSections, synthetic: SyntheticSections) -> SymbolTables:
    """Both tables; sets each written symbol's ``symtab_index`` and each indirect-symbol
    section's ``reserved1`` (its first indirect entry)."""
    pool = StringPool()
    locals_: list[tuple[int, int, int, int, int]] = []
    seen_local: set[int] = set()
    for k, obj in enumerate(symbols.objects):
        for i, sym in enumerate(obj.symbols):
            ls = symbols.symbol_maps[k][i]
            if ls is None or sym.is_temp_label or ls.is_import or ls.external or id(ls) in seen_local:
                continue
            if sym.is_external and not sym.is_private_extern:
                continue
            seen_local.add(id(ls))
            n_type = C.N_ABS if ls.kind is SymKind.ABSOLUTE else C.N_SECT
            if sym.is_private_extern:
                n_type |= C.N_PEXT
            sect = 0 if ls.kind is SymKind.ABSOLUTE else layout.place_of(ls)[0].index
            locals_.append(
                (
                    pool.add(ls.name),
                    n_type,
                    sect,
                    sym.n_desc & ~C.N_WEAK_DEF & 0xFFFF,
                    layout.address_of(ls),
                )
            )
            ls.symtab_index = len(locals_) - 1
    extdefs = [ls for ls in symbols.globals.values() if ls.external and not ls.is_import]
    extdefs.sort(key=lambda s: s.name)
    imports = sorted(
        {id(s): s for s in symbols.globals.values() if s.is_import}.values(), key=lambda s: s.name
    )
    rows = list(locals_)
    for ls in extdefs:
        n_type = C.N_EXT | (C.N_ABS if ls.kind is SymKind.ABSOLUTE else C.N_SECT)
        sect = 0 if ls.kind is SymKind.ABSOLUTE else layout.place_of(ls)[0].index
        desc = C.N_WEAK_DEF if ls.weak_def else 0
        ls.symtab_index = len(rows)
        rows.append((pool.add(ls.name), n_type, sect, desc, layout.address_of(ls)))
    for ls in imports:
        desc = (ls.ordinal << 8) | (C.N_WEAK_REF if ls.weak_import else 0)
        if ls.import_is_weak_def:
            desc |= C.N_REF_TO_WEAK
        ls.symtab_index = len(rows)
        rows.append((pool.add(ls.name), C.N_EXT | C.N_UNDF, 0, desc, 0))
    ranges = (0, len(locals_), len(locals_), len(extdefs), len(locals_) + len(extdefs), len(imports))
    indirect: list[int] = []
    for s in layout.sections:
        if s.kind is SectionKind.STUBS:
            s.reserved1 = len(indirect)
            indirect += [ls.symtab_index for ls in synthetic.stubs]
        elif s.kind is SectionKind.LAZY_POINTERS:
            s.reserved1 = len(indirect)
            indirect += [ls.symtab_index for ls in synthetic.lazy]
        elif s.kind in (SectionKind.GOT, SectionKind.AUTH_GOT):
            s.reserved1 = len(indirect)
            table = synthetic.got if s.kind is SectionKind.GOT else synthetic.auth_got
            for ls in table:
                if ls.is_import or (ls.external and ls.weak_def):
                    indirect.append(ls.symtab_index)
                elif ls.kind is SymKind.ABSOLUTE:
                    indirect.append(C.INDIRECT_SYMBOL_ABS | C.INDIRECT_SYMBOL_LOCAL)
                else:
                    indirect.append(C.INDIRECT_SYMBOL_LOCAL)
    return SymbolTables(nlist_array(rows), pool.bytes(), np.array(indirect, dtype="<u4"), ranges)
