"""dyld4 PrebuiltLoader's: this builder writes none, so dyld builds its loaders at run time. dyld
still dereferences ``dylibsPBLSetAddr``: it gets 16 bytes of readable zeros, whose magic is not
'sp4d' (the seed's estimateCacheLoadersSize and emitCacheDylibsPrebuiltLoaders)."""

from __future__ import annotations

from typing import ClassVar

from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind
from ..model import CacheModel
from .base import Optimizer

#: bytes reserved where the PrebuiltLoaderSet would be
_PLACEHOLDER_SIZE = 16


class PrebuiltLoaders(Optimizer):
    name: ClassVar[str] = "dyld4 PrebuiltLoader's"

    def __init__(self) -> None:
        self.chunk: Chunk | None = None

    def place(self, model: CacheModel) -> None:
        le = model.mapped_files()[-1].region(RegionKind.LINKEDIT)
        self.chunk = le.add(Chunk("prebuilt loaders", ChunkKind.PREBUILT_LOADERS, _PLACEHOLDER_SIZE, 8))

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        if sub.kind is SubCacheKind.MAIN and self.chunk is not None:
            fields.values["dylibs_pbl_set_addr"] = self.chunk.vm_addr
