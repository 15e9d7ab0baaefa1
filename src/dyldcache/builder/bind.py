"""Per-dylib pass: turn every fixup into a cache pointer ("convert binds to rebases").

Rebases keep their target, moved by the slide of the section split seg info names; binds
are resolved through the dependents' export tries (with re-exports, weak definitions and
the weak-lookup rules of dyld-1162) to a cache address, or to an absolute value, or to 0
for a missing weak import. The result is one array of pointers that the slide-info pass
encodes, plus the absolute values to store as they are, plus the uses the patch table needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import BuildError
from ..macho import constants as C
from ..macho.fixups import FixupKind, Import
from .adjust import PointerSlides
from .cache_dylib import CacheDylib
from .symbol_resolution import ExportIndex, Found
from .types import InputVMAddr

#: every pointer the cache must hold after binding: location and value as cache addresses
CACHE_POINTER_FIELDS = np.dtype(
    [
        ("location", "<u8"),  # cache VM address of the pointer
        ("target", "<u8"),  # cache VM address it must hold (without high8)
        ("high8", "u1"),
        ("auth", "u1"),
        ("key", "u1"),
        ("addr_div", "u1"),
        ("diversity", "<u2"),
    ]
)


@dataclass(frozen=True, slots=True)
class BindTarget:
    """A resolved import: a cache address in ``dylib``, or an absolute value (dylib None)."""

    value: int
    dylib: int | None
    name: str
    weak_def: bool = False


#: one bind from one dylib into another, for the patch table
USE_DTYPE = np.dtype(
    [
        ("target_dylib", "<i4"),  # index of the dylib that exports the symbol
        ("export_addr", "<u8"),  # cache address of the export
        ("name", "<i4"),  # index into BindResult.use_names
        ("location", "<u8"),  # cache address of the bound pointer
        ("addend", "<u8"),  # addend without its high8
        ("high8", "u1"),
        ("auth", "u1"),
        ("key", "u1"),
        ("addr_div", "u1"),
        ("diversity", "<u2"),
        ("weak", "u1"),  # weak import
    ]
)


@dataclass(slots=True)
class BindResult:
    pointers: np.ndarray  # CACHE_POINTER_FIELDS
    #: locations written as plain integers (absolute symbols, missing weak imports) and their values
    absolute_locations: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    absolute_values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    #: patch-table uses (USE_DTYPE) and the symbol names they refer to
    uses: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=USE_DTYPE))
    use_names: list[str] = field(default_factory=list)


def set_pointers(bound: BindResult, new: np.ndarray) -> None:
    """Make ``bound`` hold the pointers ``new`` (CACHE_POINTER_FIELDS) that an optimizer writes:
    a location that already holds a pointer takes the new target, and keeps its own signing
    unless the new pointer is signed; the others are added. ``bound.pointers`` stays sorted."""
    ptrs = bound.pointers
    locs = new["location"]
    pos = np.searchsorted(ptrs["location"], locs)
    present = (pos < len(ptrs)) & (ptrs["location"][np.minimum(pos, max(len(ptrs) - 1, 0))] == locs)
    old = pos[present]
    keep_auth = ~new["auth"][present].astype(bool)
    for name in ("auth", "key", "addr_div", "diversity"):
        new[name][present] = np.where(keep_auth, ptrs[name][old], new[name][present])
    ptrs[old] = new[present]
    merged = np.concatenate([ptrs, new[~present]])
    bound.pointers = merged[np.argsort(merged["location"], kind="stable")]


class CacheExports(ExportIndex):
    """The export index of the bind pass: resolved exports as cache addresses."""

    dylibs: Sequence[CacheDylib]

    def __init__(self, dylibs: Sequence[CacheDylib]) -> None:
        super().__init__(dylibs)

    def _target(self, found: Found) -> BindTarget:
        index, e = found
        d = self.dylibs[index]
        if e.is_absolute:
            return BindTarget(e.address, None, e.name, e.is_weak_def)
        cache = d.cache_address(InputVMAddr(d.image.base_address + e.address))
        return BindTarget(cache, index, e.name, e.is_weak_def)

    def resolve(self, client: int, imp: Import) -> BindTarget | None:
        found = self.resolve_export(client, imp)
        return None if found is None else self._target(found)

    def targets(self, client: int, imports: Sequence[Import]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """:meth:`resolve` of every import in ``imports``, as arrays: the value (a cache address,
        or the absolute value), the dylib that defines it (-1: an absolute value, -2: nothing
        exports it), and the name of each export found (the import's own name when none)."""
        where, which = self.resolve_many(client, imports)
        value = np.zeros(len(imports), dtype=np.uint64)
        dylib = np.where(where >= 0, where, -2)
        names = [imp.name for imp in imports]
        for j in np.unique(where[where >= 0]).tolist():
            sel = np.flatnonzero(where == j)
            d = self.dylibs[j]
            table = d.exports
            at = which[sel]
            address = table.address[at]
            absolute = (table.flags[at] & np.uint64(C.EXPORT_SYMBOL_FLAGS_KIND_MASK)) == np.uint64(
                C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE
            )
            value[sel] = np.where(
                absolute, address, d.cache_addresses(address + np.uint64(d.image.base_address))
            )
            dylib[sel[absolute]] = -1
            for k, i in zip(sel.tolist(), at.tolist(), strict=True):
                names[k] = table.name(i)
        return value, dylib, names


def _check_rebase_targets(
    dylib: CacheDylib, addrs: np.ndarray, targets: np.ndarray, moved: np.ndarray
) -> None:
    """Every moved rebase target must lie in one of the dylib's cached segments (or at its end).

    ld64's split seg info names the section each pointer targets; when a pointer's target lies
    elsewhere (the two disagree), moving it by that section's slide would leave a pointer into
    no mapping, which dyld would slide into garbage. Such a dylib is evicted, not cached.
    """
    spans = [
        (s.cache_vmaddr, s.cache_vmaddr + s.cache_size)
        for s in dylib.segments
        if s.chunk is not None and s.kind is not None
    ]
    if not spans:
        return
    spans.sort()
    lo = np.array([a for a, _ in spans], dtype=np.uint64)
    hi = np.array([b for _, b in spans], dtype=np.uint64)
    # segments do not overlap: the last one starting at or below a target is the only candidate
    # (a target at one's end and the next one's start is inside either way)
    at = np.searchsorted(lo, moved, side="right") - 1
    inside = (at >= 0) & (moved <= hi[np.maximum(at, 0)])
    if inside.all():
        return
    bad = np.flatnonzero(~inside)
    i = int(bad[0])
    raise BuildError(
        f"{dylib.install_name}: the rebase at {int(addrs[i]):#x} targets {int(targets[i]):#x}, "
        f"which its split seg info moves to {int(moved[i]):#x}, outside the dylib's cached segments "
        f"({len(bad)} such pointer{'s' if len(bad) != 1 else ''}): split seg info and fixups disagree"
    )


def bind_dylib(dylib: CacheDylib, index: CacheExports, slides: PointerSlides) -> BindResult:
    """Every fixup of ``dylib`` as a cache pointer (see module docstring)."""
    fx = dylib.image.fixups
    recs = fx.records
    name = dylib.install_name
    input_addrs = recs["address"]
    locations = dylib.cache_addresses(input_addrs)
    kinds = recs["kind"]
    # one plain array per field while pointers are worked out; the result is gathered at the end
    target = np.zeros(len(recs), dtype=np.uint64)
    high8 = recs["high8"].copy()
    auth = ((kinds == FixupKind.AUTH_REBASE) | (kinds == FixupKind.AUTH_BIND)).astype(np.uint8)
    keep = np.ones(len(recs), dtype=bool)
    result = BindResult(np.zeros(0, dtype=CACHE_POINTER_FIELDS))

    # rebases: the target moves with the section split seg info names for this location
    rb = np.flatnonzero((kinds == FixupKind.REBASE) | (kinds == FixupKind.AUTH_REBASE))
    if len(rb):
        addrs = input_addrs[rb]
        pos = np.searchsorted(slides.input_addrs, addrs)
        pos_c = np.clip(pos, 0, max(len(slides.input_addrs) - 1, 0))
        found = (pos < len(slides.input_addrs)) & (
            slides.input_addrs[pos_c] == addrs if len(slides.input_addrs) else np.zeros(len(rb), bool)
        )
        targets = recs["target"][rb]
        moved = np.empty(len(rb), dtype=np.uint64)
        if len(slides.input_addrs):
            moved[found] = (targets[found].astype(np.int64) + slides.target_slides[pos_c[found]]).astype(
                np.uint64
            )
        # no split seg entry (not written by ld64 for this pointer): use the segment holding the target
        moved[~found] = dylib.cache_addresses(targets[~found])
        _check_rebase_targets(dylib, addrs, targets, moved)
        target[rb] = moved

    # binds: resolve each import once, then apply to every pointer at once
    bd = np.flatnonzero((kinds == FixupKind.BIND) | (kinds == FixupKind.AUTH_BIND))
    if len(bd):
        uniq, inv = np.unique(recs["bind"][bd], return_inverse=True)
        n = len(uniq)
        imports = [fx.imports[k] for k in uniq.tolist()]
        t_value, t_dylib, names = index.targets(dylib.index, imports)
        t_weak = np.fromiter((imp.weak for imp in imports), dtype=np.uint8, count=n)
        result.use_names = names
        missing = np.flatnonzero((t_dylib == -2) & (t_weak == 0))
        if len(missing):  # phase 1 evicts every dylib with such a bind
            lost = imports[int(missing[0])].name
            raise BuildError(f"internal: {name}: bind to {lost} did not resolve in the bind pass")
        tdy = t_dylib[inv]
        addends = recs["addend"][bd].astype(np.uint64)
        value = t_value[inv] + addends  # wraps like the C arithmetic
        value[tdy == -2] = 0  # a missing weak import is null, whatever its addend
        plain = tdy < 0
        result.absolute_locations = locations[bd[plain]]
        result.absolute_values = value[plain]
        keep[bd[plain]] = False
        img = bd[~plain]
        v = value[~plain]
        top = (v >> np.uint64(56)).astype(np.uint8)
        target[img] = v & np.uint64(0x00FFFFFFFFFFFFFF)
        high8[img] = np.where(top != 0, top, high8[img])
        cross = ~plain & (tdy != dylib.index)
        uses = np.zeros(int(np.count_nonzero(cross)), dtype=USE_DTYPE)
        sel = bd[cross]
        uses["target_dylib"] = tdy[cross]
        uses["export_addr"] = t_value[inv][cross]
        uses["name"] = inv[cross]
        uses["location"] = locations[sel]
        uses["addend"] = addends[cross] & np.uint64(0x00FFFFFFFFFFFFFF)
        uses["high8"] = high8[sel]
        uses["auth"] = auth[sel]
        uses["key"] = recs["key"][sel]
        uses["addr_div"] = recs["addr_div"][sel]
        uses["diversity"] = recs["diversity"][sel]
        uses["weak"] = t_weak[inv][cross]
        result.uses = uses

    # opcode weak binds: coalesce to the definition dyld would pick
    for wb in fx.weak_binds:
        if wb.address is None:
            continue
        t = index.resolve(dylib.index, Import(wb.name, C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP))
        if t is None or t.dylib is None:
            continue
        loc = dylib.cache_address(InputVMAddr(wb.address))
        hit = np.flatnonzero(locations == loc)
        if len(hit):
            target[hit] = t.value + wb.addend
    chosen = np.flatnonzero(keep)
    if len(result.absolute_locations):
        # a location bound to a plain value (e.g. a missing weak lazy import) is not slid
        chosen = chosen[~np.isin(locations[chosen], result.absolute_locations)]
    # a lazy pointer is rebased to its stub helper and lazily bound too: like dyld-1162 (binds
    # after rebases), the bind wins. The records list rebases before binds, so after a stable
    # sort by location the last record of each location is the one dyld leaves in memory.
    if len(chosen) > 1:
        chosen = chosen[np.argsort(locations[chosen], kind="stable")]
        at = locations[chosen]
        chosen = chosen[np.r_[at[1:] != at[:-1], True]]
    out = np.zeros(len(chosen), dtype=CACHE_POINTER_FIELDS)
    out["location"] = locations[chosen]
    out["target"] = target[chosen]
    out["high8"] = high8[chosen]
    out["auth"] = auth[chosen]
    out["key"] = recs["key"][chosen]
    out["addr_div"] = recs["addr_div"][chosen]
    out["diversity"] = recs["diversity"][chosen]
    result.pointers = out
    return result
