"""Where an address of a linked image lies: its segment and its split-seg section.

Split seg info names a location or a target as (section index, offset in that section), with
section 0 standing for the mach header and 1..N for the sections in load-command order (as
nlist ``n_sect``). What the cache builder does with an entry depends only on the segments of
its two ends: it moves each segment as a whole, so a reference whose ends lie in one segment
never changes. This module turns VM addresses into those (section, offset, segment) triples,
vectorized, and builds SPLIT_SEG_DTYPE records from (kind, location, target) arrays.

Attribution rules (the builder's ``cache_addresses`` uses the same): an address belongs to the
segment whose VM range holds it, so the first byte of a segment is that segment's even when it
is also one past the end of the previous segment; within its segment, to the last section that
starts at or below it (padding after a section counts as that section's; every section of a
segment moves by the same amount). An address in __TEXT before the first section is the mach
header's (section 0). An address in another segment before that segment's first section has no
section that can name it with a non-negative offset: such a target is refused.

One-past-the-end: a reference to ``end(S)`` where S is the last section of a segment that ends
exactly there (no padding) cannot be told from a reference to the first byte of the next segment.
Compilers form one-past-the-end addresses of arrays (loop bounds), so for every such boundary
the image is refused, except when S is a section nothing takes the end of (unwind metadata,
located through the load commands, never through symbols).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SplitSegSynthesisError
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE

#: sections nothing forms a one-past-the-end address of (see the module docstring)
_END_NEVER_TAKEN = frozenset({"__unwind_info", "__eh_frame"})

_I64 = np.int64


@dataclass(slots=True)
class ImageMap:
    """Sections (index 0 = mach header) and segments of one image, as arrays."""

    path: str
    #: VM address of the mach header
    base: int
    #: per split-seg section index: start address, end address, segment index, "SEG,sect" name
    sect_addr: np.ndarray
    sect_end: np.ndarray
    sect_seg: np.ndarray
    sect_names: list[str]
    #: per segment index: VM start and end, name
    seg_start: np.ndarray
    seg_end: np.ndarray
    seg_names: list[str]
    #: section indexes sorted by (address, index), and their addresses, for lookups
    _order: np.ndarray
    _order_addr: np.ndarray
    #: addresses that are both a segment start and the exact end of the previous segment's last
    #: section (see the module docstring), with that section's index
    ambiguous: dict[int, int]

    @classmethod
    def of(cls, image: MachOFile) -> ImageMap:
        base = image.base_address
        header_seg = next(
            (s.index for s in image.segments if s.vmaddr <= base < s.vmaddr + max(s.vmsize, 1)), 0
        )
        addr = [base] + [s.addr for s in image.sections]
        end = [base] + [s.addr + s.size for s in image.sections]
        seg = [header_seg] + [s.segment_index for s in image.sections]
        names = ["mach header"] + [s.full_name for s in image.sections]
        sect_addr = np.array(addr, dtype=_I64)
        order = np.lexsort((np.arange(len(addr)), sect_addr))
        seg_start = np.array([s.vmaddr for s in image.segments], dtype=_I64)
        seg_end = np.array([s.vmaddr + s.vmsize for s in image.segments], dtype=_I64)
        ambiguous: dict[int, int] = {}
        for s in image.segments:
            if not s.sections or s.vmsize == 0:
                continue
            last = max(s.sections, key=lambda x: (x.addr + x.size, x.index))
            boundary = s.vmaddr + s.vmsize
            if last.addr + last.size != boundary or last.sectname in _END_NEVER_TAKEN:
                continue
            if any(o.vmaddr == boundary and o.vmsize for o in image.segments if o is not s):
                ambiguous[boundary] = last.index
        return cls(
            image.path,
            base,
            sect_addr,
            np.array(end, dtype=_I64),
            np.array(seg, dtype=_I64),
            names,
            seg_start,
            seg_end,
            [s.name for s in image.segments],
            order,
            sect_addr[order],
            ambiguous,
        )

    # -- lookups --------------------------------------------------------------------------------

    def segment_of(self, addrs: np.ndarray) -> np.ndarray:
        """Segment index holding each address, -1 where none does."""
        a = np.asarray(addrs, dtype=_I64)
        inside = (a[:, None] >= self.seg_start[None, :]) & (a[:, None] < self.seg_end[None, :])
        found = inside.any(axis=1)
        return np.where(found, inside.argmax(axis=1), -1)

    def section_of(self, addrs: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """Split-seg section index naming each address (whose segment is given), -1 if none can."""
        a = np.asarray(addrs, dtype=_I64)
        k = np.searchsorted(self._order_addr, a, side="right") - 1
        sect = np.where(k >= 0, self._order[np.maximum(k, 0)], -1)
        ok = (sect >= 0) & (self.sect_seg[np.maximum(sect, 0)] == segments)
        return np.where(ok & (segments >= 0), sect, -1)

    def name(self, section: int) -> str:
        return self.sect_names[section]

    def where(self, addr: int) -> tuple[str | None, int | None]:
        """(section name, offset in it) of an address, for messages."""
        seg = self.segment_of(np.array([addr]))
        sect = int(self.section_of(np.array([addr]), seg)[0])
        if sect < 0:
            return None, None
        return self.sect_names[sect], addr - int(self.sect_addr[sect])

    def error(self, addr: int, message: str) -> SplitSegSynthesisError:
        """A refusal located at ``addr`` (named by its section and offset)."""
        section, offset = self.where(addr)
        if section is None:
            return SplitSegSynthesisError(self.path, None, None, f"{message} (at {addr:#x})")
        return SplitSegSynthesisError(self.path, section, offset, message)

    # -- entries --------------------------------------------------------------------------------

    def entries(
        self,
        kind: int | np.ndarray,
        from_addrs: np.ndarray,
        to_addrs: np.ndarray,
        *,
        cross_segment_only: bool = True,
        what: str = "reference",
    ) -> np.ndarray:
        """SPLIT_SEG_DTYPE records for references at ``from_addrs`` to ``to_addrs``.

        Targets outside every segment are dropped (nothing in the image moves them); with
        ``cross_segment_only``, so are references within one segment. A target that no
        section can name, or an ambiguous one-past-the-end target, is refused.
        """
        f = np.asarray(from_addrs, dtype=_I64)
        t = np.asarray(to_addrs, dtype=_I64)
        kinds = np.broadcast_to(np.asarray(kind, dtype=np.uint8), f.shape)
        if f.size == 0:
            return np.zeros(0, dtype=SPLIT_SEG_DTYPE)
        f_seg = self.segment_of(f)
        f_sect = self.section_of(f, f_seg)
        if np.any(f_sect <= 0):
            bad = int(f[np.flatnonzero(f_sect <= 0)[0]])
            raise self.error(bad, f"{what} location is in no section")
        t_seg = self.segment_of(t)
        keep = t_seg >= 0
        if cross_segment_only:
            keep &= t_seg != f_seg
        f, t, kinds, f_seg, f_sect, t_seg = (
            f[keep],
            t[keep],
            kinds[keep],
            f_seg[keep],
            f_sect[keep],
            t_seg[keep],
        )
        if self.ambiguous and t.size:
            amb = np.isin(t, np.fromiter(self.ambiguous, dtype=_I64))
            amb &= t_seg != f_seg
            if np.any(amb):
                i = int(np.flatnonzero(amb)[0])
                end_of = self.sect_names[self.ambiguous[int(t[i])]]
                raise self.error(
                    int(f[i]),
                    f"{what} to {int(t[i]):#x} may mean the end of {end_of} or the start of "
                    f"{self.seg_names[int(t_seg[i])]}; they move apart in the cache",
                )
        t_sect = self.section_of(t, t_seg)
        if np.any(t_sect < 0):
            i = int(np.flatnonzero(t_sect < 0)[0])
            raise self.error(
                int(f[i]),
                f"{what} to {int(t[i]):#x} lies in {self.seg_names[int(t_seg[i])]} before its first section",
            )
        out = np.zeros(f.size, dtype=SPLIT_SEG_DTYPE)
        out["kind"] = kinds
        out["from_section"] = f_sect
        out["to_section"] = t_sect
        out["from_offset"] = (f - self.sect_addr[f_sect]).astype(np.uint64)
        out["to_offset"] = (t - self.sect_addr[t_sect]).astype(np.uint64)
        return out

    def moving_segments(self) -> int:
        """How many segments with content the builder may move apart (all but __LINKEDIT)."""
        return sum(
            1
            for name, start, end in zip(self.seg_names, self.seg_start, self.seg_end, strict=True)
            if end > start and name != "__LINKEDIT"
        )
