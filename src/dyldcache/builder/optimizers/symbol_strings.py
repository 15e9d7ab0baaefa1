"""Deduplicate LINKEDIT Symbol Strings: one string pool per LINKEDIT region, shared by the new
symbol tables of the dylibs whose LINKEDIT it holds (the seed's calculateSubCacheSymbolStrings,
phase 3; the pools are written in phase 6, emitSymbolTable). With unmapped locals, the locals
move to the .symbols file (unmapped_locals.py) and the ones in __text stay as "<redacted>".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ...byteviews import words_at
from ...errors import BuildError
from ...macho import constants as C
from ...macho.format import NLIST64_DTYPE
from ...names import encode_name
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib, DylibSymbols
from ..layout import Chunk, ChunkKind, Region
from ..model import CacheModel
from ..scratch import ScratchFiles, Stored, store
from .base import DylibResult, Optimizer
from .string_pool import StringPool, string_keys
from .unmapped_locals import UnmappedLocals

REDACTED = "<redacted>"
_SKIPPED_GLOBAL_PREFIXES = (".objc_", "$ld$")


class DeduplicateSymbolStrings(Optimizer):
    name: ClassVar[str] = "Deduplicate LINKEDIT Symbol Strings"

    def __init__(self, unmapped: UnmappedLocals | None) -> None:
        #: where the locals go when they are unmapped (None: they stay)
        self.unmapped = unmapped
        self.pools: list[tuple[StringPool, Chunk]] = []

    def place(self, model: CacheModel) -> None:
        """Per LINKEDIT region (remove_unused_linkedit.py chose them): the pool and every nlist."""
        groups: dict[Region, list[CacheDylib]] = {}
        for d in model.dylibs:
            assert d.linkedit is not None
            groups.setdefault(d.linkedit.region, []).append(d)
        mode = "unmap" if self.unmapped is not None else "keep"
        for le, group in groups.items():
            pool, tables = plan_symbol_tables(group, mode, self.unmapped, model.scratch)
            pool.freeze()
            pool_chunk = le.add(Chunk("symbol strings", ChunkKind.SYMBOL_STRINGS, pool.size, 1))
            self.pools.append((pool, pool_chunk))
            for d in group:
                assert d.linkedit is not None
                syms = tables[d.index]
                d.linkedit.symbols = syms
                d.linkedit.pool = pool_chunk
                d.linkedit.pieces["nlist"] = le.add(
                    Chunk(
                        f"{d.install_name} nlist",
                        ChunkKind.SYMBOL_NLIST,
                        syms.nlist_count * NLIST64_DTYPE.itemsize,
                        8,
                        d.index,
                    )
                )

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        for pool, chunk in self.pools:
            buffers.put(chunk, pool.bytes())


def _symbol_ranges(dylib: CacheDylib) -> tuple[range, range, range]:
    n = len(dylib.image.symbol_table.nlist)
    dy = dylib.image.dysymtab_command
    if dy is None:
        return range(0), range(0, n), range(0)
    for start, count, what in (
        (dy.ilocalsym, dy.nlocalsym, "locals"),
        (dy.iextdefsym, dy.nextdefsym, "exports"),
        (dy.iundefsym, dy.nundefsym, "imports"),
    ):
        if start + count > n:
            raise BuildError(
                f"{dylib.install_name}: LC_DYSYMTAB {what} range {start}+{count} exceeds {n} symbols"
            )
    return (
        range(dy.ilocalsym, dy.ilocalsym + dy.nlocalsym),
        range(dy.iextdefsym, dy.iextdefsym + dy.nextdefsym),
        range(dy.iundefsym, dy.iundefsym + dy.nundefsym),
    )


class _Names:
    """The names at some string-table offsets (each up to its NUL) as spans of the string table,
    with their string-pool keys: no Python object per name."""

    def __init__(self, d: CacheDylib, strx: np.ndarray) -> None:
        strings = d.image.symbol_table.strings
        self.table = np.frombuffer(strings, dtype=np.uint8)
        if not len(strx):
            self.starts = self.ends = np.zeros(0, dtype=np.int64)
            self.keys = np.zeros(0, dtype=np.uint64)
            return
        # only the part of the table from the first name to the NUL after the last one (a
        # table's locals, exports and imports each have their own part)
        lo = min(int(strx.min()), len(strings))
        last = strings.find(b"\0", min(int(strx.max()), len(strings)))
        hi = len(strings) if last < 0 else last + 1
        nuls = np.flatnonzero(self.table[lo:hi] == 0) + lo
        if len(nuls):
            first = np.searchsorted(nuls, strx)  # the first NUL at or after each offset
            self.ends = np.where(first < len(nuls), nuls[np.minimum(first, len(nuls) - 1)], len(strings))
        else:
            self.ends = np.full(len(strx), len(strings))
        self.starts = np.minimum(strx, len(strings))
        self.keys = string_keys(self.table, self.starts, self.ends)

    def starting_with(self, prefixes: tuple[bytes, ...]) -> np.ndarray:
        """Which names start with one of ``prefixes`` (each at most 8 bytes)."""
        if not len(self.starts):
            return np.zeros(0, dtype=bool)
        lo = int(self.starts.min())
        padded = np.concatenate([self.table[lo : int(self.starts.max()) + 8], np.zeros(8, dtype=np.uint8)])
        head = words_at(padded)[self.starts - lo]
        out = np.zeros(len(self.starts), dtype=bool)
        for p in prefixes:
            mask = np.uint64((1 << (8 * len(p))) - 1)
            want = np.uint64(int.from_bytes(p, "little"))
            out |= ((head & mask) == want) & (self.ends - self.starts >= len(p))
        return out

    def offsets_in(self, pool: StringPool, keep: np.ndarray | None = None) -> np.ndarray:
        """Each name's offset in ``pool`` (added when new); only the ``keep`` ones when given."""
        if keep is None:
            return pool.add_table(self.table, self.starts, self.ends, self.keys)
        return pool.add_table(self.table, self.starts[keep], self.ends[keep], self.keys[keep])


def plan_symbol_tables(
    dylibs: list[CacheDylib], mode: str, unmapped: UnmappedLocals | None, scratch: ScratchFiles | None = None
) -> tuple[StringPool, dict[int, DylibSymbols]]:
    """Build one LINKEDIT region's string pool and each dylib's new symbol table.

    ``mode`` is "keep" (locals stay), "unmap" (locals move to ``unmapped``; __text locals
    stay as <redacted>) or "strip". Order follows dyld-1162: locals of every dylib, then
    exports, then imports (tools that extract dylibs depend on it).
    """
    pool = StringPool((REDACTED,) if mode == "unmap" else ())
    redacted = pool.add(encode_name(REDACTED)) if mode == "unmap" else 0
    out: dict[int, DylibSymbols] = {}
    # per dylib until its imports are done: the stored nlist parts, the counts and the old
    # indexes of the globals kept (each part goes to scratch as soon as it is planned)
    parts: dict[int, list[Stored]] = {d.index: [] for d in dylibs}
    counts: dict[int, list[int]] = {d.index: [0, 0, 0] for d in dylibs}
    kept_globals: dict[int, np.ndarray] = {}
    ranges = {d.index: _symbol_ranges(d) for d in dylibs}
    skipped = tuple(p.encode() for p in _SKIPPED_GLOBAL_PREFIXES)

    # locals of every dylib, then exports, then imports: the pool is filled in that order
    for d in dylibs:
        nlist = d.image.symbol_table.nlist
        loc = ranges[d.index][0]
        sel = nlist[loc.start : loc.stop]
        sel = sel[(sel["n_type"] & C.N_STAB) == 0] if len(sel) else sel
        if unmapped is not None and mode == "unmap":
            start = unmapped.count
            un = sel.copy()
            un["n_strx"] = _Names(d, sel["n_strx"].astype(np.int64)).offsets_in(unmapped.pool)
            unmapped.nlists.append(un)
            unmapped.ranges.append((start, len(un)))
            kept = sel[sel["n_sect"] == 1].copy()
            kept["n_strx"] = redacted
        elif mode == "strip":
            kept = sel[:0].copy()
        else:
            kept = sel.copy()
            kept["n_strx"] = _Names(d, sel["n_strx"].astype(np.int64)).offsets_in(pool)
        parts[d.index].append(store(kept, scratch))
        counts[d.index][0] = len(kept)
        d.input.mapped.release_pages()  # the symbol tables of every input would add up
    for d in dylibs:
        nlist = d.image.symbol_table.nlist
        ext = ranges[d.index][1]
        idx = np.arange(ext.start, ext.stop, dtype=np.int64)
        # dyld-1162 copies only N_SECT globals (SymbolTable::forEachGlobalSymbol): an N_INDR
        # entry (a re-export, whose n_value is an offset in the input's string table) or an
        # N_ABS one would be meaningless in the cache
        types = nlist["n_type"][idx]
        defined = ((types & C.N_TYPE) == C.N_SECT) & ((types & C.N_EXT) != 0) & ((types & C.N_STAB) == 0)
        idx = idx[defined]
        found = _Names(d, nlist["n_strx"][idx].astype(np.int64))
        keep = ~found.starting_with(skipped)
        idx = idx[keep]
        sel = nlist[idx].copy()
        sel["n_strx"] = found.offsets_in(pool, keep)
        kept_globals[d.index] = idx
        parts[d.index].append(store(sel, scratch))
        counts[d.index][1] = len(sel)
        d.input.mapped.release_pages()
    for d in dylibs:
        nlist = d.image.symbol_table.nlist
        und = ranges[d.index][2]
        sel = nlist[und.start : und.stop].copy()
        sel["n_strx"] = _Names(d, sel["n_strx"].astype(np.int64)).offsets_in(pool)
        parts[d.index].append(store(sel, scratch))
        nloc, nglob = counts[d.index][0], counts[d.index][1]
        counts[d.index][2] = len(sel)
        # old symbol index -> new one (-1: dropped), for the indirect symbol table
        mapping = np.full(len(nlist), -1, dtype=np.int64)
        mapping[kept_globals.pop(d.index)] = nloc + np.arange(nglob)
        mapping[und.start : und.stop] = nloc + nglob + np.arange(len(sel))
        old_ind = d.image.indirect_symbols.astype(np.uint32)
        special = (old_ind & (C.INDIRECT_SYMBOL_LOCAL | C.INDIRECT_SYMBOL_ABS)) != 0
        inside = ~special & (old_ind < len(mapping))
        new_ind = np.where(special, old_ind, 0).astype("<u4")
        looked_up = mapping[old_ind[inside].astype(np.int64)]
        # an entry naming a dropped symbol points at symbol 0, as dyld-1162 does
        new_ind[inside] = np.where(looked_up >= 0, looked_up, 0).astype("<u4")
        nloc, nglob, nund = counts[d.index]
        out[d.index] = DylibSymbols(tuple(parts.pop(d.index)), nloc, nglob, nund, store(new_ind, scratch))
        # the input's symbol table (its strings are a copy) is read again where a pass needs it
        d.image.forget_decodes("symbol_table")
        d.input.mapped.release_pages()
    return pool, out
