"""Slide info: for every data region of every file, the chains (v2/v3) or page starts (v5) that
let dyld slide each pointer the bind pass left (``docs/cache-format.md`` §4; the seed's
calculateSlideInfoSize in phase 3 and computeSlideInfo in phase 6).

Phase 5 checks each dylib's pointers on scratch pages first, so that a dylib with a pointer
the format cannot express is evicted instead of failing the whole cache, then writes them to
the build's scratch files, cut by data region. Phase 6 encodes each region one window of
pages at a time, from the pieces that fall in the window, and joins the windows' page starts
(and v2 page extras): memory stays bounded by a window's pointers whatever the cache size.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...cache.format import (
    DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA,
    DYLD_CACHE_SLIDE_PAGE_VALUE,
    SlideInfo2,
    SlideInfo3,
    SlideInfo5,
)
from ...cache.slide_info import (
    CACHE_POINTER_DTYPE,
    encode_slide_info_v2,
    encode_slide_info_v3,
    encode_slide_info_v5,
    slide_info_size,
)
from ...errors import BuildError
from ..bind import CACHE_POINTER_FIELDS
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..config import MEMORY_WINDOW, CacheConfig
from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, Region, RegionKind, SubCache, layout_files
from ..model import CacheModel
from ..scratch import ScratchArray
from ..workers import run_tasks
from .base import DylibResult, Optimizer

_DATA_REGIONS = (RegionKind.DATA_CONST, RegionKind.DATA, RegionKind.AUTH, RegionKind.AUTH_CONST)
#: the fields a slide-info encoder takes from a bound pointer
_POINTER_FIELDS = ("target", "high8", "auth", "key", "addr_div", "diversity")
#: pointers further apart than this are checked in separate scratch buffers
_SCRATCH_GAP = 1 << 20
_MAPPING_OFFSET = re.compile(r"pointer at mapping offset (0x[0-9a-f]+)")
_MAPPING_SIZE = re.compile(r"does not fit in the mapping \((0x[0-9a-f]+) bytes\)")


def encode_slide_info(cfg: CacheConfig, mapping: memoryview, pointers: np.ndarray) -> bytes:
    """Chain ``pointers`` (CACHE_POINTER_DTYPE, sorted) into ``mapping`` in the config's format."""
    if cfg.slide_info_version == 2:
        value_add = cfg.base_address if cfg.arch.name == "x86_64" else 0
        return encode_slide_info_v2(mapping, pointers, value_add=value_add, page_size=cfg.slide_page_size)
    if cfg.slide_info_version == 3:
        return encode_slide_info_v3(
            mapping, pointers, auth_value_add=cfg.base_address, page_size=cfg.slide_page_size
        )
    return encode_slide_info_v5(mapping, pointers, value_add=cfg.base_address, page_size=cfg.slide_page_size)


def _mapping_pointers(bound: np.ndarray, start: int) -> np.ndarray:
    """Bound pointers (CACHE_POINTER_FIELDS) as an encoder's input: offsets from ``start``."""
    p = np.zeros(len(bound), dtype=CACHE_POINTER_DTYPE)
    p["offset"] = bound["location"] - np.uint64(start)
    for f in _POINTER_FIELDS:
        p[f] = bound[f]
    return p


def check_slide_pointers(cfg: CacheConfig, pointers: np.ndarray) -> str | None:
    """Why slide info could not hold one of a dylib's bound pointers (CACHE_POINTER_FIELDS), or
    None: the encoder itself runs on scratch pages laid out like the cache's."""
    if not len(pointers):
        return None
    page = cfg.slide_page_size
    ptrs = pointers[np.argsort(pointers["location"], kind="stable")]
    locs = ptrs["location"].astype(np.int64)
    cuts = np.flatnonzero(np.diff(locs) > _SCRATCH_GAP) + 1
    for lo_i, hi_i in zip([0, *cuts.tolist()], [*cuts.tolist(), len(ptrs)], strict=True):
        lo = int(locs[lo_i]) & ~(page - 1)
        hi = -(-(int(locs[hi_i - 1]) + 8) // page) * page
        try:
            encode_slide_info(cfg, memoryview(bytearray(hi - lo)), _mapping_pointers(ptrs[lo_i:hi_i], lo))
        except ValueError as exc:
            # the encoder names a mapping offset; the user wants the cache address
            message = str(exc)
            m = _MAPPING_OFFSET.search(message)
            if m is not None:
                message = message.replace(m.group(0), f"pointer at {lo + int(m.group(1), 16):#x}")
            return message
    return None


@dataclass(frozen=True, slots=True)
class SpilledPointers:
    """One dylib's bound pointers in the scratch files: (index of the data region, the piece,
    its lowest and highest location) per region, and the lowest location outside every data
    region (an error in phase 6), if any."""

    pieces: list[tuple[int, ScratchArray, int, int]]
    outside: int | None


def join_slide_info(version: int, blobs: list[bytes]) -> bytes:
    """One blob from the blobs of consecutive windows of a mapping (each a whole number of
    pages): their page starts one after the other; v2 page extras too, each window's start
    indexes moved past the extras of the windows before it."""
    if len(blobs) == 1:
        return blobs[0]
    if version == 2:
        headers = [SlideInfo2.unpack_from(b) for b in blobs]
        starts, extras = [], []
        before = 0
        for h, b in zip(headers, blobs, strict=True):
            st = np.frombuffer(b, dtype="<u2", count=h.page_starts_count, offset=h.page_starts_offset).copy()
            has = (st & DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA) != 0
            index = (st[has] & DYLD_CACHE_SLIDE_PAGE_VALUE).astype(np.int64) + before
            if index.size and int(index.max()) > DYLD_CACHE_SLIDE_PAGE_VALUE:
                raise ValueError(f"page extras index {int(index.max())} does not fit in 14 bits")
            st[has] = (index | DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA).astype("<u2")
            starts.append(st)
            extras.append(
                np.frombuffer(b, dtype="<u2", count=h.page_extras_count, offset=h.page_extras_offset)
            )
            before += h.page_extras_count
        npages = sum(h.page_starts_count for h in headers)
        header2 = dataclasses.replace(
            headers[0],
            page_starts_count=npages,
            page_extras_offset=SlideInfo2.SIZE + 2 * npages,
            page_extras_count=before,
        )
        return header2.pack() + np.concatenate(starts).tobytes() + np.concatenate(extras).tobytes()
    record = SlideInfo3 if version == 3 else SlideInfo5
    heads = [record.unpack_from(b) for b in blobs]
    npages = sum(h.page_starts_count for h in heads)
    joined = b"".join(
        b[record.SIZE : record.SIZE + 2 * h.page_starts_count] for h, b in zip(heads, blobs, strict=True)
    )
    return dataclasses.replace(heads[0], page_starts_count=npages).pack() + joined


class SlideInfo(Optimizer):
    name: ClassVar[str] = "slide info"

    def __init__(self) -> None:
        #: (file, data region) -> its slide info chunk
        self.chunks: dict[tuple[SubCache, RegionKind], Chunk] = {}
        #: bytes of each chunk the encoder used (phase 6)
        self.used: dict[Chunk, int] = {}
        self.config: CacheConfig | None = None

    def place(self, model: CacheModel) -> None:
        """A chunk in the file's LINKEDIT per data region (after every other data chunk is placed)."""
        self.config = model.config
        for sub in model.subcaches:
            for kind in _DATA_REGIONS:
                if kind in sub.regions:
                    self.chunks[(sub, kind)] = sub.region(RegionKind.LINKEDIT).add(
                        Chunk(f"slide info {kind.name}", ChunkKind.SLIDE_INFO, 0, 8)
                    )

    def measure(self, model: CacheModel) -> None:
        """Size each chunk from its region's VM size (known once the files are laid out)."""
        cfg = model.config
        layout_files(model.subcaches)
        for (sub, kind), chunk in self.chunks.items():
            region = sub.regions[kind]
            chunk.size = slide_info_size(cfg.slide_info_version, region.vm_size, cfg.slide_page_size)

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        assert self.config is not None and result.bound is not None and buffers.scratch is not None
        pointers = result.bound.pointers
        problem = check_slide_pointers(self.config, pointers)
        if problem is not None:
            raise BuildError(f"a pointer cannot be slid: {problem}")
        # to the scratch files, sorted, cut by region; the result keeps where they are
        result.extras[self.name] = self._spill(buffers, pointers)
        result.bound.pointers = pointers[:0]

    def _spill(self, buffers: CacheBuffers, pointers: np.ndarray) -> SpilledPointers:
        """``pointers`` written to this process's scratch file, sorted, cut by data region."""
        assert buffers.scratch is not None
        pointers = pointers[np.argsort(pointers["location"], kind="stable")]
        locations = pointers["location"]
        spilled = buffers.scratch.write(pointers)
        pieces: list[tuple[int, ScratchArray, int, int]] = []
        inside = np.zeros(len(pointers), dtype=bool)
        for k, (sub, kind) in enumerate(self.chunks):
            region = sub.regions[kind]
            lo = int(np.searchsorted(locations, region.vm_addr))
            hi = int(np.searchsorted(locations, region.vm_end))
            if hi > lo:
                pieces.append((k, spilled.part(lo, hi), int(locations[lo]), int(locations[hi - 1])))
                inside[lo:hi] = True
        outside = None if inside.all() else int(locations[np.flatnonzero(~inside)[0]])
        return SpilledPointers(pieces, outside)

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        """Encode every data region's pointers (after every step that writes pointers).

        Pointers an earlier optimizer's emit added to a result after this optimizer's dylib
        pass (global chunks of phase 6, e.g. the canonical ObjC protocols) are spilled here too.
        """
        spilled = [r.extras[self.name] for r in results if self.name in r.extras]
        late = [r.bound.pointers for r in results if r.bound is not None and len(r.bound.pointers)]
        spilled += [self._spill(buffers, pointers) for pointers in late]
        by_region: dict[int, list[tuple[ScratchArray, int, int]]] = {}
        outside = []
        for s in spilled:
            assert isinstance(s, SpilledPointers)
            for k, piece, lo, hi in s.pieces:
                by_region.setdefault(k, []).append((piece, lo, hi))
            if s.outside is not None:
                outside.append(s.outside)
        # every window of every data region is encoded on its own (in parallel: each writes
        # only its own pages of the output), then each region's windows are joined
        windows = [
            _Window(k, sub, region, start)
            for k, (sub, kind) in enumerate(self.chunks)
            for region in (sub.regions[kind],)
            for start in range(0, max(region.file_end - region.file_offset, 1), MEMORY_WINDOW)
        ]

        def encode(i: int) -> tuple[bytes, str | None]:
            w = windows[i]
            try:
                return _encode_window(model.config, buffers, w, by_region.get(w.region_index, [])), None
            except ValueError as exc:
                return b"", str(exc)
            finally:
                buffers.release_pages()

        encoded = run_tasks(encode, len(windows), model.jobs if len(windows) >= 4 else 1)
        for k, ((_, kind), chunk) in enumerate(self.chunks.items()):
            mine = [e for w, e in zip(windows, encoded, strict=True) if w.region_index == k]
            failed = next((message for _, message in mine if message is not None), None)
            if failed is not None:
                raise BuildError(f"slide info for {kind.name}: {failed}")
            blob = join_slide_info(model.config.slide_info_version, [b for b, _ in mine])
            if len(blob) > chunk.size:
                raise BuildError(
                    f"internal: slide info for {kind.name} ({len(blob)} bytes) outgrew {chunk.size}"
                )
            buffers.put(chunk, blob)
            self.used[chunk] = len(blob)
        if outside:
            raise BuildError(
                f"pointer at {min(outside):#x} is outside every data mapping "
                "(text relocations are not supported)"
            )

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        for (s, kind), chunk in self.chunks.items():
            if s is sub:
                fields.slide_info[kind] = (chunk.file_offset, self.used.get(chunk, 0))


@dataclass(frozen=True, slots=True)
class _Window:
    """One MEMORY_WINDOW of a data region's mapping, whose slide info is encoded on its own."""

    region_index: int
    sub: SubCache
    region: Region
    #: offset of the window in the region's mapping
    start: int


def _encode_window(
    cfg: CacheConfig, buffers: CacheBuffers, w: _Window, pieces: list[tuple[ScratchArray, int, int]]
) -> bytes:
    """The slide info of one window of a region (joined with its neighbours' by the caller);
    ValueError with offsets and sizes as the whole mapping has them."""
    region, start = w.region, w.start
    size = region.file_end - region.file_offset
    length = min(MEMORY_WINDOW, size - start)
    lo = region.vm_addr + start
    # the last window takes every pointer up to the region's end, so that one past
    # the file-backed part fails in the encoder as it would in one piece
    hi = lo + length if start + MEMORY_WINDOW < size else region.vm_end
    parts = []
    for piece, first, last in pieces:  # in cache order, as the pointers were bound
        if first < hi and last >= lo:
            ptrs = piece.load()
            loc = ptrs["location"]
            parts.append(ptrs[np.searchsorted(loc, lo) : np.searchsorted(loc, hi)])
    window = np.concatenate(parts) if parts else np.zeros(0, dtype=CACHE_POINTER_FIELDS)
    window = window[np.argsort(window["location"], kind="stable")]
    at = region.file_offset + start
    mapping = buffers.of(w.sub)[at : at + length].data
    try:
        return encode_slide_info(cfg, mapping, _mapping_pointers(window, lo))
    except ValueError as exc:
        message = str(exc)
        m = _MAPPING_OFFSET.search(message)
        if m is not None:
            offset = start + int(m.group(1), 16)
            message = message.replace(m.group(0), f"pointer at mapping offset {offset:#x}")
        m = _MAPPING_SIZE.search(message)
        if m is not None:
            message = message.replace(m.group(0), f"does not fit in the mapping ({size:#x} bytes)")
        raise ValueError(message) from None
