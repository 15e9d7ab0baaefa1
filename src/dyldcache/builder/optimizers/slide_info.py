"""Slide info: for every data region of every file, the chains (v2/v3) or page starts (v5) that
let dyld slide each pointer the bind pass left (``docs/cache-format.md`` §4; the seed's
calculateSlideInfoSize in phase 3 and computeSlideInfo in phase 6).

Phase 5 checks each dylib's pointers on scratch pages first, so that a dylib with a pointer
the format cannot express is evicted instead of failing the whole cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

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
from ..config import CacheConfig
from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, layout_files
from ..model import CacheModel
from .base import DylibResult, Optimizer, pointers_of

_DATA_REGIONS = (RegionKind.DATA_CONST, RegionKind.DATA, RegionKind.AUTH, RegionKind.AUTH_CONST)
#: the fields a slide-info encoder takes from a bound pointer
_POINTER_FIELDS = ("target", "high8", "auth", "key", "addr_div", "diversity")
#: pointers further apart than this are checked in separate scratch buffers
_SCRATCH_GAP = 1 << 20


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
            m = re.search(r"pointer at mapping offset (0x[0-9a-f]+)", message)
            if m is not None:
                message = message.replace(m.group(0), f"pointer at {lo + int(m.group(1), 16):#x}")
            return message
    return None


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
        assert self.config is not None and result.bound is not None
        problem = check_slide_pointers(self.config, result.bound.pointers)
        if problem is not None:
            raise BuildError(f"a pointer cannot be slid: {problem}")

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        """Encode every data region's pointers (after every step that writes pointers)."""
        arrays = pointers_of(results)
        pointers = np.concatenate(arrays) if arrays else np.zeros(0, dtype=CACHE_POINTER_FIELDS)
        pointers = pointers[np.argsort(pointers["location"], kind="stable")]
        claimed = np.zeros(len(pointers), dtype=bool)
        for (sub, kind), chunk in self.chunks.items():
            region = sub.regions[kind]
            lo = np.searchsorted(pointers["location"], region.vm_addr)
            hi = np.searchsorted(pointers["location"], region.vm_end)
            claimed[lo:hi] = True
            p = _mapping_pointers(pointers[lo:hi], region.vm_addr)
            mapping = buffers.of(sub)[region.file_offset : region.file_end].data
            try:
                blob = encode_slide_info(model.config, mapping, p)
            except ValueError as exc:
                raise BuildError(f"slide info for {kind.name}: {exc}") from None
            if len(blob) > chunk.size:
                raise BuildError(
                    f"internal: slide info for {kind.name} ({len(blob)} bytes) outgrew {chunk.size}"
                )
            buffers.put(chunk, blob)
            self.used[chunk] = len(blob)
        if not np.all(claimed):
            k = int(np.flatnonzero(~claimed)[0])
            raise BuildError(
                f"pointer at {int(pointers['location'][k]):#x} is outside every data mapping "
                "(text relocations are not supported)"
            )

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        for (s, kind), chunk in self.chunks.items():
            if s is sub:
                fields.slide_info[kind] = (chunk.file_offset, self.used.get(chunk, 0))
