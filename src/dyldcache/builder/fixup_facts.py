"""What the builder keeps of a dylib's decoded fixups and split seg info between phase 1 and
phase 5: the imports, which of them binds use, the bind count, the segments with authenticated
pointers, and where the decoded arrays lie in the build's scratch files.

The decoded fixups (one record per pointer) and split seg info (one entry per reference) are
the bulk of a dylib's decoded LINKEDIT, about 1.6 times its file size for the benchmark corpus.
Phase 1's workers decode them (to check eligibility), write the arrays to their scratch file and
send back only these facts; each per-dylib pass (phase 5) reads its dylib's arrays back and
drops them when the dylib is done (``docs/architecture.md``, "Memory"). Nothing is decoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..macho.file import MachOFile
from ..macho.fixups import FIXUP_DTYPE, FixupKind, Fixups, Import, WeakBind
from ..macho.split_seg import SPLIT_SEG_DTYPE, SplitSegInfo
from .scratch import ScratchArray, ScratchFiles

_BIND_KINDS = (int(FixupKind.BIND), int(FixupKind.AUTH_BIND))
_AUTH_KINDS = (int(FixupKind.AUTH_REBASE), int(FixupKind.AUTH_BIND))


@dataclass(frozen=True, slots=True)
class FixupFacts:
    #: every import of the dylib, in import-table order
    imports: list[Import]
    #: indexes into ``imports`` that at least one bind uses (sorted, unique)
    bound: np.ndarray
    #: number of bind records (pointers bound to an import)
    bind_count: int
    #: indexes of the segments holding an authenticated rebase or bind
    auth_segments: frozenset[int]
    #: the rest of the decoded Fixups, and its records in the scratch files
    records: ScratchArray
    source: str
    pointer_formats: dict[int, int]
    weak_binds: list[WeakBind]
    #: the split seg info (the linker's or synthesized): version and entries, or None
    split_seg: tuple[int, ScratchArray] | None
    #: what the stored records' addresses are relative to (narrowed_fixups)
    base: int = 0

    @property
    def bound_imports(self) -> list[Import]:
        return [self.imports[k] for k in self.bound.tolist()]

    def restore(self, image: MachOFile, *, last: bool = False) -> None:
        """Give ``image`` its decoded fixups and split seg info back (read from scratch); with
        ``last``, nothing reads them again and their scratch space is given back."""
        image.__dict__["fixups"] = Fixups(
            widened_fixups(self.records.load(), self.base),
            self.imports,
            self.source,
            self.pointer_formats,
            self.weak_binds,
        )
        split = (
            None
            if self.split_seg is None
            else SplitSegInfo(self.split_seg[0], widened_split_seg(self.split_seg[1].load()))
        )
        image.__dict__["split_seg"] = split
        if last:
            self.records.release()
            if self.split_seg is not None:
                self.split_seg[1].release()


def fixup_facts(image: MachOFile, scratch: ScratchFiles) -> FixupFacts:
    """The facts of ``image``'s fixups and split seg info (decoded if that was not done yet),
    their arrays written to ``scratch``."""
    fx = image.fixups
    recs = fx.records
    kinds = recs["kind"]
    binds = np.isin(kinds, _BIND_KINDS)
    auth = np.isin(kinds, _AUTH_KINDS)
    auth_segments: set[int] = set()
    if np.any(auth):
        addrs = recs["address"][auth]
        for seg in image.segments:
            if np.any((addrs >= seg.vmaddr) & (addrs < seg.vmaddr + seg.vmsize)):
                auth_segments.add(seg.index)
    info = image.split_seg
    base = image.base_address
    return FixupFacts(
        list(fx.imports),
        np.unique(recs["bind"][binds]).astype(np.int32),
        int(np.count_nonzero(binds)),
        frozenset(auth_segments),
        scratch.write(narrowed_fixups(recs, base)),
        fx.source,
        dict(fx.pointer_formats),
        list(fx.weak_binds),
        None if info is None else (info.version, scratch.write(narrowed_split_seg(info.entries))),
        base,
    )


# The scratch files hold the decoded arrays in narrower records when every value fits (which is
# all but pathological dylibs): they are written once, read once, and their size is most of what
# the build writes besides the cache itself (issue 12). Values that do not fit keep the full records.

#: a fixup record with its addresses as offsets from the image's base (target: 0, or offset + 1)
NARROW_FIXUP_DTYPE = np.dtype(
    [
        ("address", "<u4"),
        ("target", "<u4"),
        ("addend", "<i4"),
        ("bind", "<i4"),
        ("segment", "u1"),
        ("diversity", "<u2"),
        ("kind", "u1"),
        ("high8", "u1"),
        ("key", "u1"),
        ("addr_div", "u1"),
        ("flags", "u1"),
    ]
)
#: a v2 split seg entry with one-byte section indexes and four-byte offsets
NARROW_SPLIT_SEG_DTYPE = np.dtype(
    [
        ("kind", "u1"),
        ("from_section", "u1"),
        ("to_section", "u1"),
        ("from_offset", "<u4"),
        ("to_offset", "<u4"),
    ]
)
_U32_MAX = 0xFFFFFFFF
_SAME_FIELDS = ("bind", "diversity", "kind", "high8", "key", "addr_div", "flags")


def narrowed_fixups(recs: np.ndarray, base: int) -> np.ndarray:
    """``recs`` (FIXUP_DTYPE) as NARROW_FIXUP_DTYPE records when every value fits, else as is."""
    if not len(recs):
        return recs
    b = np.uint64(base)
    address, target, addend = recs["address"], recs["target"], recs["addend"]
    live = target != 0
    fits = (
        int(address.min()) >= base
        and int(address.max()) - base <= _U32_MAX
        and (
            not live.any() or (int(target[live].min()) >= base and int(target[live].max()) - base < _U32_MAX)
        )
        and int(addend.min()) >= -(1 << 31)
        and int(addend.max()) < (1 << 31)
        and int(recs["segment"].max()) <= 0xFF
    )
    if not fits:
        return recs
    out = np.empty(len(recs), dtype=NARROW_FIXUP_DTYPE)
    out["address"] = address - b
    out["target"] = np.where(live, target - b + np.uint64(1), np.uint64(0))
    out["addend"] = addend
    out["segment"] = recs["segment"]
    for name in _SAME_FIELDS:
        out[name] = recs[name]
    return out


def widened_fixups(stored: np.ndarray, base: int) -> np.ndarray:
    """The FIXUP_DTYPE records :func:`narrowed_fixups` stored."""
    if stored.dtype != NARROW_FIXUP_DTYPE:
        return stored
    b = np.uint64(base)
    out = np.empty(len(stored), dtype=FIXUP_DTYPE)
    out["address"] = stored["address"].astype(np.uint64) + b
    target = stored["target"].astype(np.uint64)
    with np.errstate(over="ignore"):  # modulo 2**64, as the values were (a base of 0, say)
        out["target"] = np.where(target != 0, target + (b - np.uint64(1)), np.uint64(0))
    out["addend"] = stored["addend"]
    out["segment"] = stored["segment"]
    for name in _SAME_FIELDS:
        out[name] = stored[name]
    return out


def narrowed_split_seg(entries: np.ndarray) -> np.ndarray:
    """v2 entries (SPLIT_SEG_DTYPE) as NARROW_SPLIT_SEG_DTYPE when every value fits, else as is."""
    if entries.dtype != SPLIT_SEG_DTYPE or not len(entries):
        return entries
    if (
        int(entries["from_section"].max()) > 0xFF
        or int(entries["to_section"].max()) > 0xFF
        or int(entries["from_offset"].max()) > _U32_MAX
        or int(entries["to_offset"].max()) > _U32_MAX
    ):
        return entries
    return entries.astype(NARROW_SPLIT_SEG_DTYPE)


def widened_split_seg(stored: np.ndarray) -> np.ndarray:
    """The entries :func:`narrowed_split_seg` stored."""
    return stored.astype(SPLIT_SEG_DTYPE) if stored.dtype == NARROW_SPLIT_SEG_DTYPE else stored
