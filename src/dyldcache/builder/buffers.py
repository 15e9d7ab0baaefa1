"""The output files of one build while they are written: one zero-filled, mapped byte array per
subcache (allocated at the end of phase 3), and the reads and writes the emit steps make.

Worker processes are forked after the files are mapped (MAP_SHARED), so what a per-dylib pass
writes into its own chunks is what the parent sees. Pages written or read count in the resident
set of the process that touched them until :meth:`CacheBuffers.release_pages` drops them (they
stay in the page cache, owned by the file): the builder does that after each dylib's passes and
after each phase, so no process holds a whole 2 GB cache.
"""

from __future__ import annotations

import mmap

import numpy as np

from ..errors import BuildError
from ..macho.file import release_pages
from .layout import Chunk, SubCache
from .scratch import ScratchFiles
from .types import CacheVMAddr, file_offset_of_vm


class CacheBuffers:
    def __init__(self) -> None:
        self._arrays: dict[SubCache, np.ndarray] = {}
        self._order: list[SubCache] = []
        self._maps: list[mmap.mmap] = []
        #: the build's scratch files (set once the staging folder exists)
        self.scratch: ScratchFiles | None = None

    def add(self, sub: SubCache, mapped: mmap.mmap) -> None:
        """``sub``'s output file, mapped shared and writable."""
        self._arrays[sub] = np.frombuffer(mapped, dtype=np.uint8)
        self._order.append(sub)
        self._maps.append(mapped)

    def release_pages(self) -> None:
        """Drop every file's pages from this process's resident set (nothing is lost)."""
        for mm in self._maps:
            release_pages(mm)

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
        """Drop every array (the maps can then be closed); close the scratch files."""
        self._arrays.clear()
        self._order.clear()
        self._maps.clear()
        if self.scratch is not None:
            self.scratch.close()
