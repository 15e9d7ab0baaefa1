"""The LINKEDIT optimizers: deduplicated symbol strings per LINKEDIT region, unmapped local
symbols, rebuilt export tries, and each dylib's copied LINKEDIT pieces.

Planning happens in phase 3 (sizes must be known before layout); emission in phase 5
(per dylib) and 6 (the shared string pools and the .symbols payload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import BuildError
from ..macho import constants as C
from ..macho.exports_trie import Export, write_exports
from ..macho.format import NLIST64_DTYPE
from .cache_dylib import CacheDylib

REDACTED = "<redacted>"
_SKIPPED_GLOBAL_PREFIXES = (".objc_", "$ld$")
_SKIPPED_EXPORT_PREFIXES = ("$ld$", ".objc_class_name", ".objc_category_name")


class StringPool:
    """One deduplicated string pool (a LINKEDIT region's, or the .symbols file's); starts with ""."""

    def __init__(self, first: tuple[str, ...] = ()) -> None:
        self.offsets: dict[bytes, int] = {b"": 0}
        self.size = 1
        for s in first:
            self.add(s.encode())

    def add(self, s: bytes) -> int:
        off = self.offsets.get(s)
        if off is None:
            off = self.size
            self.offsets[s] = off
            self.size += len(s) + 1
        return off

    def bytes(self) -> bytes:
        buf = bytearray(self.size)
        for s, off in self.offsets.items():
            buf[off : off + len(s)] = s
        return bytes(buf)


@dataclass(slots=True)
class DylibSymbols:
    """A dylib's new symbol table: nlist (input n_values, adjusted when emitted), counts, indirect table."""

    nlist: np.ndarray
    locals_count: int
    globals_count: int
    undefs_count: int
    indirect: np.ndarray


@dataclass(slots=True)
class UnmappedLocals:
    """The .symbols payload: every dylib's locals with the input addresses."""

    pool: StringPool = field(default_factory=StringPool)
    nlists: list[np.ndarray] = field(default_factory=list)
    #: per dylib: (first nlist index, count)
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(n) for n in self.nlists)


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


def plan_symbol_tables(
    dylibs: list[CacheDylib], mode: str, unmapped: UnmappedLocals | None
) -> tuple[StringPool, dict[int, DylibSymbols]]:
    """Build one LINKEDIT region's string pool and each dylib's new symbol table.

    ``mode`` is "keep" (locals stay), "unmap" (locals move to ``unmapped``; __text locals
    stay as <redacted>) or "strip". Order follows dyld-1162: locals of every dylib, then
    exports, then imports (tools that extract dylibs depend on it).
    """
    pool = StringPool((REDACTED,) if mode == "unmap" else ())
    redacted = pool.offsets.get(REDACTED.encode(), 0)
    out: dict[int, DylibSymbols] = {}
    rows: dict[int, list[np.ndarray]] = {}
    old_to_new: dict[int, dict[int, int]] = {}
    counts: dict[int, list[int]] = {}
    ranges = {d.index: _symbol_ranges(d) for d in dylibs}

    def strings_of(d: CacheDylib) -> tuple[np.ndarray, bytes]:
        st = d.image.symbol_table
        return st.nlist, st.strings

    def name_at(strings: bytes, strx: int) -> bytes:
        end = strings.find(b"\0", strx)
        return strings[strx:end] if end >= 0 else strings[strx:]

    # locals
    for d in dylibs:
        nlist, strings = strings_of(d)
        loc = ranges[d.index][0]
        rows[d.index] = []
        old_to_new[d.index] = {}
        counts[d.index] = [0, 0, 0]
        sel = nlist[loc.start : loc.stop]
        sel = sel[(sel["n_type"] & C.N_STAB) == 0] if len(sel) else sel
        if unmapped is not None and mode == "unmap":
            start = unmapped.count
            un = sel.copy()
            for k in range(len(un)):
                un["n_strx"][k] = unmapped.pool.add(name_at(strings, int(un["n_strx"][k])))
            unmapped.nlists.append(un)
            unmapped.ranges.append((start, len(un)))
            kept = sel[sel["n_sect"] == 1].copy()
            kept["n_strx"] = redacted
        elif mode == "strip":
            kept = sel[:0].copy()
        else:
            kept = sel.copy()
            for k in range(len(kept)):
                kept["n_strx"][k] = pool.add(name_at(strings, int(kept["n_strx"][k])))
        rows[d.index].append(kept)
        counts[d.index][0] = len(kept)
    # exports
    for d in dylibs:
        nlist, strings = strings_of(d)
        ext = ranges[d.index][1]
        base = counts[d.index][0]
        keep_idx: list[int] = []
        for i in ext:
            name = name_at(strings, int(nlist["n_strx"][i]))
            if name.startswith(tuple(p.encode() for p in _SKIPPED_GLOBAL_PREFIXES)):
                continue
            old_to_new[d.index][i] = base + len(keep_idx)
            keep_idx.append(i)
        sel = nlist[keep_idx].copy()
        for k, i in enumerate(keep_idx):
            sel["n_strx"][k] = pool.add(name_at(strings, int(nlist["n_strx"][i])))
        rows[d.index].append(sel)
        counts[d.index][1] = len(sel)
    # imports
    for d in dylibs:
        nlist, strings = strings_of(d)
        und = ranges[d.index][2]
        base = counts[d.index][0] + counts[d.index][1]
        sel = nlist[und.start : und.stop].copy()
        for k, i in enumerate(und):
            sel["n_strx"][k] = pool.add(name_at(strings, int(nlist["n_strx"][i])))
            old_to_new[d.index][i] = base + k
        rows[d.index].append(sel)
        counts[d.index][2] = len(sel)
    for d in dylibs:
        old_ind = d.image.indirect_symbols.astype(np.uint32)
        special = (old_ind & (C.INDIRECT_SYMBOL_LOCAL | C.INDIRECT_SYMBOL_ABS)) != 0
        mapping = old_to_new[d.index]
        new_ind = np.array(
            [int(v) if sp else mapping.get(int(v), 0) for v, sp in zip(old_ind, special, strict=True)],
            dtype="<u4",
        )
        nl = np.concatenate(rows[d.index]) if rows[d.index] else np.zeros(0, dtype=NLIST64_DTYPE)
        nloc, nglob, nund = counts[d.index]
        out[d.index] = DylibSymbols(nl, nloc, nglob, nund, new_ind)
    return pool, out


def rebuilt_exports(dylib: CacheDylib, estimate: bool = False) -> bytes:
    """The dylib's export trie with offsets of moved segments adjusted, padded to 8 bytes.

    With ``estimate``, every non-absolute offset is bumped by 2 GiB instead: an upper bound on
    the size whatever the final layout is (ULEB lengths only grow with the value).
    """
    image = dylib.image
    exports: list[Export] = []
    base = image.base_address
    if not estimate:
        text_slide = dylib.text.slide
    for e in image.exports:
        if e.name.startswith(_SKIPPED_EXPORT_PREFIXES):
            continue
        if e.is_reexport or e.is_absolute:
            exports.append(e)
            continue
        if estimate:
            delta = 1 << 31
        else:
            seg = dylib.segment_for_input_address(base + e.address)
            delta = (seg.slide - text_slide) if seg is not None and seg.chunk is not None else 0
        resolver = e.resolver + delta if e.is_resolver else e.resolver
        exports.append(Export(e.name, e.flags, e.address + delta, resolver, e.ordinal, e.import_name))
    raw = write_exports(exports) if exports else b""
    return raw + bytes(-len(raw) % 8)
