"""Pack segments: every dylib segment becomes a chunk in the region of its permissions, in the
subcache that holds the dylib's __TEXT (phase 3, the seed's computeSubCaches and
SubCache::addDylib); each dylib's segments are copied there and every reference its split seg
info names is moved to the new addresses (phase 5, per dylib: copyRawSegments and
applySplitSegInfo; the adjustments themselves are ``builder/adjust.py``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...errors import BuildError
from ..adjust import apply_split_seg
from ..buffers import CacheBuffers
from ..cache_dylib import REGION_OF_KIND, CacheDylib, segment_alignment
from ..layout import Chunk, ChunkKind, SubCache, SubCacheKind
from ..model import CacheModel
from .base import DylibResult, Optimizer


def copy_segments(dylib: CacheDylib, buf: np.ndarray) -> None:
    """Copy every segment's bytes into its chunk; the rest of a chunk is zero (zerofill)."""
    src = np.frombuffer(dylib.input.mapped.data, dtype=np.uint8)
    base = dylib.image.file_offset
    for seg in dylib.segments:
        if seg.chunk is None or seg.copy_size == 0:
            continue
        start = base + seg.input_fileoff
        if start + seg.copy_size > len(src):
            raise BuildError(f"{dylib.install_name}: segment {seg.name} extends past the end of the file")
        dst = seg.cache_fileoff
        buf[dst : dst + seg.copy_size] = src[start : start + seg.copy_size]


class PackSegments(Optimizer):
    name: ClassVar[str] = "Pack segments"

    def place(self, model: CacheModel) -> None:
        """The main file and its subcaches: a new one whenever __TEXT would pass the limit."""
        subs = [SubCache(SubCacheKind.MAIN)]
        text_size = 0
        for d in model.dylibs:
            size = sum(s.cache_size for s in d.segments if s.kind is ChunkKind.DYLIB_TEXT)
            if text_size and text_size + size > model.config.subcache_text_limit:
                subs.append(SubCache(SubCacheKind.SUB, index=len(subs)))
                text_size = 0
            text_size += size
            sub = subs[-1]
            sub.dylibs.append(d.index)
            for seg in d.segments:
                if seg.kind is None:  # __LINKEDIT: its pieces are placed by remove_unused_linkedit
                    continue
                region = sub.region(REGION_OF_KIND[seg.kind])
                seg.chunk = region.add(
                    Chunk(
                        f"{d.install_name} {seg.name}",
                        seg.kind,
                        seg.cache_size,
                        segment_alignment(seg),
                        dylib=d.index,
                    )
                )
        model.subcaches = subs

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        assert dylib.text.chunk is not None
        buf = buffers.holding(dylib.text.chunk)
        with result.timed("copy segments"):
            copy_segments(dylib, buf)
        with result.timed("apply split seg"):
            result.slides = apply_split_seg(dylib, buf)
