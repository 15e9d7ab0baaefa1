"""The output files of one build while they are written: one zero-filled, mapped byte array per
subcache (allocated at the end of phase 3), and the reads and writes the emit steps make.

Worker processes are forked after the files are mapped (MAP_SHARED), so what a per-dylib pass
writes into its own chunks is what the parent sees.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from .layout import Chunk, SubCache
from .types import CacheVMAddr, file_offset_of_vm


class CacheBuffers:
    def __init__(self) -> None:
        self._arrays: dict[SubCache, np.ndarray] = {}
        self._order: list[SubCache] = []

    def add(self, sub: SubCache, array: np.ndarray) -> None:
        self._arrays[sub] = array
        self._order.append(sub)

    def of(self, sub: SubCache) -> np.ndarray:
        """The whole file ``sub`` as a uint8 array."""
        return self._arrays[sub]

    def holding(self, chunk: Chunk) -> np.ndarray:
        """The whole file that holds ``chunk``."""
        return self._arrays[chunk.subcache]

    def put(self, chunk: Chunk, raw: bytes) -> None:
        """``raw`` at the start of ``chunk`` (which must be large enough)."""
        if len(raw) > chunk.size:
            raise BuildError(f"internal: {chunk.name} ({len(raw)} bytes) outgrew its chunk ({chunk.size})")
        buf = self.holding(chunk)
        buf[chunk.file_offset : chunk.file_offset + len(raw)] = np.frombuffer(raw, dtype=np.uint8)

    def read(self, addr: CacheVMAddr, size: int) -> bytes:
        """``size`` bytes at cache address ``addr`` (inside one mapping)."""
        for sub in self._order:
            for r in sub.mapped_regions():
                if r.vm_addr <= addr and addr + size <= r.vm_addr + r.file_size:
                    off = file_offset_of_vm(addr, r.vm_addr, r.file_offset)
                    return bytes(self._arrays[sub][off : off + size])
        raise BuildError(f"internal: address {addr:#x} is in no mapping")

    def clear(self) -> None:
        """Drop every array (the maps can then be closed)."""
        self._arrays.clear()
        self._order.clear()
