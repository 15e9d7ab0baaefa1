"""Unmap Local Symbols: on embedded platforms every dylib's local symbols move out of the mapped
cache into a .symbols file of their own (dyld_cache_local_symbols_info, its entries, the nlist
and a string pool). symbol_strings.py collects them in phase 3 while it builds the symbol
tables; this optimizer adds the .symbols subcache and writes its payload (the seed's
emitUnmappedLocalSymbols, phase 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...cache.format import LocalSymbolsEntry64, LocalSymbolsInfo
from ...macho import constants as C
from ...macho.format import NLIST64_DTYPE
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind
from ..model import CacheModel
from ..types import CacheVMAddr, align_up, vm_offset
from .base import DylibResult, Optimizer
from .string_pool import StringPool

#: the payload's nlist starts on this boundary
_NLIST_ALIGNMENT = 16


@dataclass(slots=True)
class UnmappedLocals:
    """The .symbols payload: every dylib's locals with the input addresses."""

    pool: StringPool = field(default_factory=StringPool)
    nlists: list[np.ndarray] = field(default_factory=list)
    #: per dylib, in cache order: (first nlist index, count)
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(n) for n in self.nlists)


def _nlist_offset(dylib_count: int) -> int:
    return align_up(LocalSymbolsInfo.SIZE + LocalSymbolsEntry64.SIZE * dylib_count, _NLIST_ALIGNMENT)


def unmapped_payload(u: UnmappedLocals, dylibs: list[CacheDylib], base: CacheVMAddr) -> bytes:
    """dyld_cache_local_symbols_info, one entry per dylib, the nlist (cache addresses), the strings."""
    entries_off = LocalSymbolsInfo.SIZE
    nlist_off = _nlist_offset(len(dylibs))
    # like the dylibs' own symbol tables, the unmapped locals hold cache addresses
    slid = []
    for d, nl in zip(dylibs, u.nlists, strict=True):
        nl = nl.copy()
        in_sect = (nl["n_type"] & C.N_TYPE) == C.N_SECT
        nl["n_value"][in_sect] = d.cache_addresses(nl["n_value"][in_sect])
        slid.append(nl)
    nlist = np.concatenate(slid) if slid else np.zeros(0, dtype=NLIST64_DTYPE)
    strings_off = nlist_off + len(nlist) * NLIST64_DTYPE.itemsize
    out = bytearray(strings_off)
    LocalSymbolsInfo(nlist_off, len(nlist), strings_off, u.pool.size, entries_off, len(dylibs)).pack_into(
        out, 0
    )
    for i, d in enumerate(dylibs):
        start, count = u.ranges[i]
        LocalSymbolsEntry64(vm_offset(d.cache_load_address, base), start, count).pack_into(
            out, entries_off + i * LocalSymbolsEntry64.SIZE
        )
    out[nlist_off:strings_off] = nlist.tobytes()
    return bytes(out) + u.pool.bytes()


class UnmapLocalSymbols(Optimizer):
    name: ClassVar[str] = "Unmap Local Symbols"

    def __init__(self, enabled: bool) -> None:
        #: filled by symbol_strings.py (None: locals stay in the symbol tables)
        self.locals = UnmappedLocals() if enabled else None
        self.chunk: Chunk | None = None

    def place(self, model: CacheModel) -> None:
        if self.locals is None:
            return
        sym = SubCache(SubCacheKind.SYMBOLS)
        model.subcaches.append(sym)
        size = (
            _nlist_offset(len(model.dylibs))
            + self.locals.count * NLIST64_DTYPE.itemsize
            + self.locals.pool.size
        )
        self.chunk = sym.region(RegionKind.UNMAPPED).add(
            Chunk("unmapped locals", ChunkKind.UNMAPPED_SYMBOLS, size, 16)
        )

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        if self.locals is not None and self.chunk is not None:
            buffers.put(self.chunk, unmapped_payload(self.locals, model.dylibs, model.config.base_address))

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        if sub.kind is SubCacheKind.SYMBOLS and self.chunk is not None:
            fields.values["local_symbols_offset"] = self.chunk.file_offset
            fields.values["local_symbols_size"] = self.chunk.size
