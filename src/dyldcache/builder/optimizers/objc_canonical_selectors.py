"""ObjC Canonical Selector References: one string per selector name for the whole cache (the
seed's findCanonicalObjCSelectors in phase 2 and emitObjCSelectorStrings in phase 4).

The strings go to one chunk in the file that holds libobjc, the magic selector first (the base
every relative method list with direct selectors counts from), then every selector of every
optimized image in cache order: its __objc_methname strings, then any other string its
selector references and method lists name. Each name is there once; the selector table
(objc_hash_tables.py) and every rewritten reference (objc_selector_refs.py) point at it.
"""

from __future__ import annotations

from typing import ClassVar

from ...cache.objc_format import LIBOBJC_PATH
from ..buffers import CacheBuffers
from ..layout import Chunk, ChunkKind, RegionKind
from ..model import CacheModel
from ..types import CacheVMAddr, vm_add
from .base import Optimizer
from .objc_input import ObjCInputs

#: the selector every relative method list offset is taken from (an emoji nobody uses)
MAGIC_SELECTOR = "\U0001f92f".encode()


class ObjCCanonicalSelectors(Optimizer):
    name: ClassVar[str] = "ObjC Canonical Selector References"

    def __init__(self, objc: ObjCInputs) -> None:
        self.objc = objc
        #: selector name -> offset of its string in the chunk
        self.offsets: dict[bytes, int] = {}
        #: the names in chunk order
        self.names: list[bytes] = []
        self.size = 0
        self.chunk: Chunk | None = None

    def estimate(self, model: CacheModel) -> None:
        if not self.objc.active:
            return
        self._add(MAGIC_SELECTOR)
        for _, _, meta in self.objc.optimized():
            for name in meta.selectors():
                if name not in self.offsets:
                    self._add(name)

    def _add(self, name: bytes) -> None:
        self.offsets[name] = self.size
        self.names.append(name)
        self.size += len(name) + 1

    def place_at(self, fixed: dict[bytes, int]) -> None:
        """Lay the strings out again with those of ``fixed`` at the given offsets (the IMP caches'
        selector placement, objc_imp_caches.py; before the chunk is placed): the magic selector
        stays at 0, every other string goes to the first gap it fits in, in ``names`` order,
        then after the last string. ``names`` keeps its order (the selector table hashes it)."""
        taken = sorted([(0, len(MAGIC_SELECTOR) + 1)] + [(o, o + len(n) + 1) for n, o in fixed.items()])
        gaps: list[list[int]] = []
        end = 0
        for start, stop in taken:
            assert start >= end, "fixed selector strings overlap"
            if start > end:
                gaps.append([end, start])
            end = stop
        offsets = {MAGIC_SELECTOR: 0, **fixed}
        for name in self.names:
            if name in offsets:
                continue
            need = len(name) + 1
            gap = next((g for g in gaps if g[1] - g[0] >= need), None)
            if gap is None:
                offsets[name] = end
                end += need
            else:
                offsets[name] = gap[0]
                gap[0] += need
                if gap[0] == gap[1]:
                    gaps.remove(gap)
        self.offsets = {n: offsets[n] for n in self.names}
        self.size = end

    def place(self, model: CacheModel) -> None:
        sub = model.text_subcache(LIBOBJC_PATH)
        if sub is not None and self.objc.active:
            text = sub.region(RegionKind.TEXT)
            self.chunk = text.add(Chunk("objc selector strings", ChunkKind.OBJC_READ_ONLY, self.size, 8))

    def pre_dylib_emit(self, model: CacheModel, buffers: CacheBuffers) -> None:
        # the seed emits the strings before the dylib passes, which point into them
        if self.chunk is not None:
            out = bytearray(self.size)  # gaps (after place_at) stay zero
            for name in self.names:
                at = self.offsets[name]
                out[at : at + len(name)] = name
            buffers.put(self.chunk, bytes(out))

    def address(self, name: bytes) -> CacheVMAddr:
        """The cache address of the canonical string of ``name``."""
        assert self.chunk is not None
        return vm_add(self.chunk.vm_addr, self.offsets[name])
