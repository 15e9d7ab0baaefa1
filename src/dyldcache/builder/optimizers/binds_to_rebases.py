"""Convert binds to rebases: every fixup of a dylib becomes a cache pointer (phase 5, per
dylib: the seed's calculateBindTargets and bind). The resolution itself is
``builder/bind.py``; this pass writes the plain values (absolute symbols, missing weak imports)
and leaves the pointers for slide info and the uses for the patch table on the dylib's result.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...byteviews import words_at
from ...errors import BuildError
from ..bind import BindResult, CacheExports, bind_dylib
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..model import CacheModel
from .base import DylibResult, Optimizer


def write_absolutes(dylib: CacheDylib, buf: np.ndarray, bound: BindResult) -> None:
    """Store the locations bound to plain values (they are not slid)."""
    locs = bound.absolute_locations
    if not len(locs):
        return
    offsets = np.full(len(locs), -1, dtype=np.int64)
    for s in dylib.segments:
        if s.chunk is None:
            continue
        inside = (locs >= s.chunk.vm_addr) & (locs < s.chunk.vm_end)
        offsets[inside] = s.chunk.file_offset + (locs[inside] - np.uint64(s.chunk.vm_addr)).astype(np.int64)
    if np.any(offsets < 0):
        bad = int(locs[np.flatnonzero(offsets < 0)[0]])
        raise BuildError(f"fixup at {bad:#x} is outside the dylib's segments")
    words_at(buf)[offsets] = bound.absolute_values


class ConvertBindsToRebases(Optimizer):
    name: ClassVar[str] = "Convert binds to rebases"

    def __init__(self) -> None:
        self.exports: CacheExports | None = None

    def pre_dylib_emit(self, model: CacheModel, buffers: CacheBuffers) -> None:
        # the tries of the input dylibs, which never change; addresses are converted on lookup
        self.exports = CacheExports(model.dylibs)

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        assert self.exports is not None and result.slides is not None and dylib.text.chunk is not None
        with result.timed("bind"):
            bound = bind_dylib(dylib, self.exports, result.slides)
            write_absolutes(dylib, buffers.holding(dylib.text.chunk), bound)
        result.bound = bound
