"""ObjC Hash Tables: the perfect-hash selector table and the class and protocol multimaps
libobjc looks names up in (the seed's estimateObjCHashTableSizes in phase 2 and
emitObjCHashTables in phase 6; ``docs/cache-format.md`` §5.2).

Every table is a StringHashTable (objc4/dyld ``objc-shared-cache.h``): header, scramble[256],
tab[mask+1], a check byte and an int32 offset (from the table to the string) per slot. The
class and protocol tables add one ObjectData word per slot (bit 0 clear, bits 1-47 the
object's offset from the cache base, bits 48-63 its image's objc index; a name defined more
than once has bit 0 set, the index of its first duplicate and their count instead), a u32
duplicate count and the duplicates. The perfect hash of each key set is found in phase 2
(``cache/perfect_hash.py``), so every chunk has its exact size before layout.

Selector names are the canonical strings (objc_canonical_selectors.py); class and protocol
names get their own string chunks, next to their tables as in dyld-1162. Only the images the
optimizers rewrite contribute classes and protocols.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...cache.objc_format import (
    LIBOBJC_PATH,
    OBJECT_DATA_DUPLICATE,
    OBJECT_DATA_INDEX_SHIFT,
    OBJECT_DATA_OFFSET_SHIFT,
    STRING_TABLE_FIXED,
    StringHashHeader,
)
from ...cache.perfect_hash import PerfectHash, check_bytes, make_perfect_hash
from ...errors import BuildError
from ..buffers import CacheBuffers
from ..layout import Chunk, ChunkKind, RegionKind
from ..model import CacheModel
from ..types import CacheVMAddr, InputVMAddr
from .base import DylibResult, Optimizer
from .objc_canonical_selectors import ObjCCanonicalSelectors
from .objc_input import ObjCInputs

#: a table with no keys: dyld-1162 zeroes its header; tab[1] follows the scramble
EMPTY_STRING_TABLE = STRING_TABLE_FIXED + 1
#: ObjectHashTable with no keys: the string table and a u32 duplicate count
EMPTY_OBJECT_TABLE = EMPTY_STRING_TABLE + 4
_OBJECT = 8
_DUP_COUNT = struct.Struct("<I")


def string_table_size(ph: PerfectHash | None) -> int:
    if ph is None:
        return EMPTY_STRING_TABLE
    return STRING_TABLE_FIXED + ph.mask + 1 + 5 * ph.capacity


def encode_string_table(
    ph: PerfectHash | None, keys: Sequence[bytes], addresses: np.ndarray, at: int
) -> bytearray:
    """A StringHashTable at address ``at`` for ``keys``, whose strings lie at ``addresses``."""
    if ph is None:
        return bytearray(EMPTY_STRING_TABLE)
    out = bytearray(string_table_size(ph))
    StringHashHeader(0, ph.capacity, len(keys), ph.shift, ph.mask, 0, ph.salt).pack_into(out, 0)
    out[32:STRING_TABLE_FIXED] = ph.scramble.astype("<u4").tobytes()
    tab_end = STRING_TABLE_FIXED + ph.mask + 1
    out[STRING_TABLE_FIXED:tab_end] = ph.tab.tobytes()
    checks = np.zeros(ph.capacity, dtype=np.uint8)
    checks[ph.key_slots] = check_bytes(keys)
    offsets = np.zeros(ph.capacity, dtype="<i4")
    delta = addresses.astype(np.int64) - np.int64(at)
    if len(delta) and (delta.max() >= 2**31 or delta.min() < -(2**31)):
        raise BuildError("internal: an ObjC name string is out of an int32 offset's reach of its table")
    offsets[ph.key_slots] = delta
    out[tab_end : tab_end + ph.capacity] = checks.tobytes()
    out[tab_end + ph.capacity :] = offsets.tobytes()
    return out


def _object_data(offsets: np.ndarray, indexes: np.ndarray) -> np.ndarray:
    return (offsets.astype(np.uint64) << np.uint64(OBJECT_DATA_OFFSET_SHIFT)) | (
        indexes.astype(np.uint64) << np.uint64(OBJECT_DATA_INDEX_SHIFT)
    )


@dataclass(slots=True)
class ObjectMap:
    """The names of a class or protocol multimap and the objects of each name."""

    #: distinct names, in string-chunk order, and each one's offset in the chunk
    names: list[bytes] = field(default_factory=list)
    name_offsets: dict[bytes, int] = field(default_factory=dict)
    strings_size: int = 0
    #: (name, objc index, input address) of every object, in image order
    objects: list[tuple[bytes, int, int]] = field(default_factory=list)
    hash: PerfectHash | None = None

    def add_name(self, name: bytes) -> None:
        if name not in self.name_offsets:
            self.name_offsets[name] = self.strings_size
            self.names.append(name)
            self.strings_size += len(name) + 1

    @property
    def duplicates(self) -> int:
        counts: dict[bytes, int] = {}
        for name, _, _ in self.objects:
            counts[name] = counts.get(name, 0) + 1
        return sum(c for c in counts.values() if c > 1)

    def size(self) -> int:
        if self.hash is None:
            return EMPTY_OBJECT_TABLE
        return string_table_size(self.hash) + _OBJECT * self.hash.capacity + 4 + _OBJECT * self.duplicates

    def encode(self, strings_at: int, at: int, base: int, cache_offsets: list[int]) -> bytes:
        """The table at ``at``; names at ``strings_at``; ``cache_offsets`` of every object."""
        if self.hash is None:
            return bytes(EMPTY_OBJECT_TABLE)
        addrs = np.array([strings_at + self.name_offsets[n] for n in self.names], dtype=np.uint64)
        out = encode_string_table(self.hash, self.names, addrs, at)
        slot_of = dict(zip(self.names, self.hash.key_slots.tolist(), strict=True))
        by_name: dict[bytes, list[tuple[int, int]]] = {}
        for (name, index, _), off in zip(self.objects, cache_offsets, strict=True):
            by_name.setdefault(name, []).append((off, index))
        entries = np.zeros(self.hash.capacity, dtype="<u8")
        dups: list[tuple[int, int]] = []
        for name, objs in by_name.items():
            slot = slot_of[name]
            if len(objs) == 1:
                entries[slot] = _object_data(np.array([objs[0][0]]), np.array([objs[0][1]]))[0]
            else:
                first = len(dups)
                dups += objs
                entries[slot] = (
                    OBJECT_DATA_DUPLICATE
                    | (first << OBJECT_DATA_OFFSET_SHIFT)
                    | (len(objs) << OBJECT_DATA_INDEX_SHIFT)
                )
        dup_words = _object_data(np.array([o for o, _ in dups]), np.array([i for _, i in dups]))
        return bytes(out) + entries.tobytes() + _DUP_COUNT.pack(len(dups)) + dup_words.astype("<u8").tobytes()


@dataclass(eq=False, slots=True)
class HashTableChunks:
    selectors: Chunk
    class_names: Chunk
    classes: Chunk
    protocol_names: Chunk
    protocols: Chunk


class ObjCHashTables(Optimizer):
    name: ClassVar[str] = "ObjC Hash Tables"

    def __init__(self, objc: ObjCInputs, selectors: ObjCCanonicalSelectors) -> None:
        self.objc = objc
        self.selectors = selectors
        self.selector_hash: PerfectHash | None = None
        self.classes = ObjectMap()
        self.protocols = ObjectMap()
        self.chunks: HashTableChunks | None = None
        #: cache address of a protocol -> where the table points for it (its canonical copy,
        #: set by objc_canonical_protocols.py before the dylib passes)
        self.protocol_addresses: dict[int, int] = {}

    def estimate(self, model: CacheModel) -> None:
        if not self.objc.active:
            return
        for index, _, meta in self.objc.optimized():
            for c in meta.classes:
                self.classes.add_name(c.name)
                if not c.is_meta:
                    self.classes.objects.append((c.name, index, c.address))
            for p in meta.protocols:
                self.protocols.add_name(p.name)
                self.protocols.objects.append((p.name, index, p.address))
        # the seed's tables hold the magic selector too; an empty key set gets a zeroed header
        if self.selectors.names:
            self.selector_hash = make_perfect_hash(self.selectors.names)
        for m in (self.classes, self.protocols):
            m.hash = make_perfect_hash(m.names) if m.names else None

    def place(self, model: CacheModel) -> None:
        sub = model.text_subcache(LIBOBJC_PATH)
        if sub is None or not self.objc.active:
            return
        text = sub.region(RegionKind.TEXT)

        def ro(name: str, size: int) -> Chunk:
            return text.add(Chunk(name, ChunkKind.OBJC_READ_ONLY, max(size, 1), 8))

        self.chunks = HashTableChunks(
            ro("objc selector table", string_table_size(self.selector_hash)),
            ro("objc class name strings", self.classes.strings_size),
            ro("objc class table", self.classes.size()),
            ro("objc protocol name strings", self.protocols.strings_size),
            ro("objc protocol table", self.protocols.size()),
        )

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        c = self.chunks
        if c is None:
            return
        sel = self.selectors
        addrs = np.array([sel.address(n) for n in sel.names], dtype=np.uint64)
        buffers.put(
            c.selectors, bytes(encode_string_table(self.selector_hash, sel.names, addrs, c.selectors.vm_addr))
        )
        base = model.config.base_address
        for names, table, m in (
            (c.class_names, c.classes, self.classes),
            (c.protocol_names, c.protocols, self.protocols),
        ):
            buffers.put(names, b"".join(n + b"\0" for n in m.names))
            redirect = self.protocol_addresses if m is self.protocols else {}
            addresses = [int(self.objc.dylibs[i].cache_address(InputVMAddr(a))) for _, i, a in m.objects]
            offsets = [redirect.get(a, a) - base for a in addresses]
            buffers.put(table, m.encode(names.vm_addr, table.vm_addr, base, offsets))

    def table_addresses(self) -> tuple[CacheVMAddr, CacheVMAddr, CacheVMAddr] | None:
        """Selector, class and protocol table addresses (None without tables)."""
        if self.chunks is None:
            return None
        c = self.chunks
        return c.selectors.vm_addr, c.classes.vm_addr, c.protocols.vm_addr
