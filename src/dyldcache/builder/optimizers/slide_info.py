"""Slide info: for every data region of every file, the chains (v2/v3) or page starts (v5) that
let dyld slide each pointer the bind pass left (``docs/cache-format.md`` §4; the seed's
calculateSlideInfoSize in phase 3 and computeSlideInfo in phase 6).

Phase 5 checks each dylib's pointers and computes the word each holds in the cache (all the
format's rules but the chains), so that a dylib with a pointer the format cannot express is
evicted instead of failing the whole cache, then writes (location, word) pairs to the build's
scratch files, sorted and cut by data region. Phase 6 chains each region one window of pages
at a time, from the pieces that fall in the window, and joins the windows' page starts (and
v2 page extras): memory stays bounded by a window's pointers whatever the cache size.
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
    chain_slide_info_v2,
    chain_slide_info_v3,
    chain_slide_info_v5,
    check_layout,
    slide_info_size,
    slide_values_v2,
    slide_values_v3,
    slide_values_v5,
)
from ...errors import BuildError
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
#: a bound pointer once checked: its cache address and the word slide info chains there
SLID_POINTER_DTYPE = np.dtype([("location", "<u8"), ("value", "<u8")])
#: the same in the scratch files, 12 bytes: the location as an offset from the piece's first
_SPILLED_DTYPE = np.dtype([("offset", "<u4"), ("value", "<u8")])
#: how phase 5's messages name a pointer: by its cache address
_AT = "pointer at"
_MAPPING_OFFSET = re.compile(r"pointer at mapping offset (0x[0-9a-f]+)")
_MAPPING_SIZE = re.compile(r"does not fit in the mapping \((0x[0-9a-f]+) bytes\)")


def slide_values(cfg: CacheConfig, pointers: np.ndarray, where: np.ndarray, label: str) -> np.ndarray:
    """The word each pointer (CACHE_POINTER_FIELDS) holds in the config's slide info, chain
    bits still clear; ValueError names the first it cannot hold by ``label`` and ``where``."""
    if cfg.slide_info_version == 2:
        value_add = cfg.base_address if cfg.arch.name == "x86_64" else 0
        return slide_values_v2(pointers, where, value_add=value_add, label=label)
    if cfg.slide_info_version == 3:
        return slide_values_v3(pointers, where, auth_value_add=cfg.base_address, label=label)
    return slide_values_v5(pointers, where, value_add=cfg.base_address, label=label)


def chain_slide_info(cfg: CacheConfig, mapping: memoryview, off: np.ndarray, value: np.ndarray) -> bytes:
    """The config's slide info blob for ``mapping``, each ``value`` (of :func:`slide_values`)
    written and chained at its offset ``off`` (sorted, laid out as check_layout wants)."""
    page = cfg.slide_page_size
    if cfg.slide_info_version == 2:
        value_add = cfg.base_address if cfg.arch.name == "x86_64" else 0
        return chain_slide_info_v2(mapping, off, value, value_add=value_add, page_size=page)
    if cfg.slide_info_version == 3:
        return chain_slide_info_v3(mapping, off, value, auth_value_add=cfg.base_address, page_size=page)
    return chain_slide_info_v5(mapping, off, value, value_add=cfg.base_address, page_size=page)


def slid_pointers(cfg: CacheConfig, pointers: np.ndarray) -> np.ndarray:
    """Bound pointers (CACHE_POINTER_FIELDS) as SLID_POINTER_DTYPE, sorted by location: each
    with the word it holds in the cache (chain bits clear). ValueError names the cache address
    of the first pointer slide info could not hold: one not aligned, crossing a page,
    overlapping another, or with a value the format cannot express."""
    locations = pointers["location"]
    if len(locations) > 1 and not bool((locations[1:] >= locations[:-1]).all()):
        pointers = pointers[np.argsort(locations, kind="stable")]
        locations = pointers["location"]
    locations = np.ascontiguousarray(locations)
    # cache data regions start on a page: page offsets of addresses are those of mapping offsets
    check_layout(locations, None, cfg.slide_page_size, 4 if cfg.slide_info_version == 2 else 8, _AT)
    out = np.empty(len(locations), dtype=SLID_POINTER_DTYPE)
    out["location"] = locations
    out["value"] = slide_values(cfg, pointers, locations, _AT)
    return out


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
        try:
            slid = slid_pointers(self.config, pointers)
        except ValueError as exc:
            raise BuildError(f"a pointer cannot be slid: {exc}") from None
        # to the scratch files, cut by region; the result keeps where they are
        result.extras[self.name] = self._spill(buffers, slid)
        result.bound.pointers = pointers[:0]

    def _spill(self, buffers: CacheBuffers, slid: np.ndarray) -> SpilledPointers:
        """``slid`` (SLID_POINTER_DTYPE, sorted) written to this process's scratch file, one
        piece per data region."""
        assert buffers.scratch is not None
        locations = slid["location"]
        pieces: list[tuple[int, ScratchArray, int, int]] = []
        inside = np.zeros(len(slid), dtype=bool)
        for k, (sub, kind) in enumerate(self.chunks):
            region = sub.regions[kind]
            lo = int(np.searchsorted(locations, region.vm_addr))
            hi = int(np.searchsorted(locations, region.vm_end))
            if hi > lo:
                first, last = int(locations[lo]), int(locations[hi - 1])
                if last - first >> 32:
                    raise BuildError(f"internal: pointers {first:#x}-{last:#x} of one dylib span 4 GiB")
                piece = np.empty(hi - lo, dtype=_SPILLED_DTYPE)
                piece["offset"] = locations[lo:hi] - np.uint64(first)
                piece["value"] = slid["value"][lo:hi]
                pieces.append((k, buffers.scratch.write(piece), first, last))
                inside[lo:hi] = True
        outside = None if inside.all() else int(locations[np.flatnonzero(~inside)[0]])
        return SpilledPointers(pieces, outside)

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        """Encode every data region's pointers (after every step that writes pointers).

        Pointers an earlier optimizer's emit added to a result after this optimizer's dylib
        pass (global chunks of phase 6, e.g. the canonical ObjC protocols) are checked and
        spilled here too.
        """
        cfg = model.config
        spilled = [r.extras[self.name] for r in results if self.name in r.extras]
        late = [r.bound.pointers for r in results if r.bound is not None and len(r.bound.pointers)]
        try:
            spilled += [self._spill(buffers, slid_pointers(cfg, pointers)) for pointers in late]
        except ValueError as exc:
            raise BuildError(f"slide info: {exc}") from None
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
                return _encode_window(cfg, buffers, w, by_region.get(w.region_index, [])), None
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
    offs, values = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
    for piece, first, last in pieces:  # in cache order, as the pointers were bound
        if first < hi and last >= lo:
            spilled = piece.load()
            at = spilled["offset"].astype(np.int64) + (first - lo)  # offsets in the window
            a, b = np.searchsorted(at, [0, hi - lo])
            offs.append(at[a:b])
            values.append(spilled["value"][a:b])
    off, value = np.concatenate(offs).view(np.uint64), np.concatenate(values)
    if len(off) > 1 and not bool((off[1:] >= off[:-1]).all()):
        order = np.argsort(off, kind="stable")
        off, value = off[order], value[order]
    file_at = region.file_offset + start
    mapping = buffers.of(w.sub)[file_at : file_at + length].data
    try:
        check_layout(off, length, cfg.slide_page_size, 4 if cfg.slide_info_version == 2 else 8)
        return chain_slide_info(cfg, mapping, off, value)
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
