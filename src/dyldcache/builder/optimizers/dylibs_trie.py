"""The dylibs trie: install name (and every alias) -> image index, which dyld searches to find a
cache dylib by path (the seed's calculateCacheDylibsTrie in phase 2, emitCacheDylibsTrie in
phase 6; ``docs/cache-format.md`` §1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ...macho.exports_trie import write_trie
from ...macho.leb128 import uleb_encode
from ...names import encode_name
from ..buffers import CacheBuffers
from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind
from ..model import CacheModel
from ..types import align_up
from .base import DylibResult, Optimizer


def dylibs_trie(model: CacheModel) -> bytes:
    """The trie, padded to 8 bytes."""
    entries = [(encode_name(d.install_name), uleb_encode(d.index)) for d in model.dylibs]
    by_name = {d.install_name: d.index for d in model.dylibs}
    entries += [(encode_name(a), uleb_encode(by_name[t])) for a, t in model.aliases.items()]
    raw = write_trie(sorted(entries))
    return raw + bytes(align_up(len(raw), 8) - len(raw))


class DylibsTrie(Optimizer):
    name: ClassVar[str] = "dylibs trie"

    def __init__(self) -> None:
        self.trie = b""
        self.chunk: Chunk | None = None

    def estimate(self, model: CacheModel) -> None:
        # its content depends only on the names and the order: built once, here
        self.trie = dylibs_trie(model)

    def place(self, model: CacheModel) -> None:
        le = model.mapped_files()[-1].region(RegionKind.LINKEDIT)
        self.chunk = le.add(Chunk("dylibs trie", ChunkKind.DYLIBS_TRIE, len(self.trie), 8))

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        assert self.chunk is not None
        buffers.put(self.chunk, self.trie)

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        if sub.kind is SubCacheKind.MAIN and self.chunk is not None:
            fields.values["dylibs_trie_addr"] = self.chunk.vm_addr
            fields.values["dylibs_trie_size"] = self.chunk.size
