"""ObjC Canonical Protocols: one protocol_t per protocol name for the whole cache, which every
protocol reference and the protocol table use (the seed's calculateObjCCanonicalProtocolsSize
in phase 2 and emitCanonicalObjCProtocols in phase 6).

For each name of the protocol table, dyld-1162 copies one definition (the first one found, in
objc image order) into a read-write chunk of the file that holds libobjc (AUTH on arm64e,
DATA otherwise), every copy a full 64-bit protocol_t (96 bytes):

- the bytes the definition has (its ``size``), its pointers with the same targets and pointer
  authentication data;
- an isa, when the definition has none: libobjc's Protocol class, as libobjc's
  ``__objc_opt_ptrs`` (objc_opt_pointerlist_t.protocolClass) names it, with that pointer's
  authentication data;
- ``size`` raised to 96 when smaller; ``demangledName``, when unset, pointing at the name;
- flags with PROTOCOL_FIXED_UP_1 (bit 30) and PROTOCOL_IS_CANONICAL (bit 29).

Every entry of the protocol table of that name points at the copy (each entry keeps the objc
index of its image). In every optimized image, the __objc_protorefs words and the entries of the
protocol lists of classes, metaclasses, categories and protocols that point at any definition
are retargeted at the copy (a dylib pass: the copies' addresses are known once laid out);
__objc_protolist keeps pointing at each image's own definitions, as in dyld-1162.

Without libobjc's __objc_opt_ptrs no copy can get its isa: dyld-1162 stops optimizing ObjC
metadata there; this builder only leaves the protocols as linked (libobjc canonicalizes them at
run time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...cache.objc_format import LIBOBJC_PATH, PROTOCOL_T_SIZE_FLAGS, PROTOCOL_T_WORDS
from ...macho.commands import Section
from ..bind import CACHE_POINTER_FIELDS
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..layout import Chunk, ChunkKind, RegionKind
from ..model import CacheModel
from ..types import CacheVMAddr, InputVMAddr
from .base import DylibResult, Optimizer
from .objc_hash_tables import ObjCHashTables
from .objc_input import ObjCInputs

_PTR = 8
#: protocol_t's fields after size and flags: extendedMethodTypes, demangledName, classProperties
PROTOCOL_T_FULL_SIZE = _PTR * PROTOCOL_T_WORDS + PROTOCOL_T_SIZE_FLAGS.size + 3 * _PTR
_SIZE_AT = _PTR * PROTOCOL_T_WORDS
_DEMANGLED_NAME_AT = _SIZE_AT + PROTOCOL_T_SIZE_FLAGS.size + _PTR
_NAME_AT = _PTR
#: protocol_t.flags bits (objc4 objc-runtime-new.h)
PROTOCOL_FIXED_UP_1 = 1 << 30
PROTOCOL_IS_CANONICAL = 1 << 29
#: libobjc's objc_opt_pointerlist_t (its first word: the Protocol class)
OPT_PTRS_SECTION = "__objc_opt_ptrs"


@dataclass(frozen=True, slots=True)
class CanonicalSource:
    """The definition a canonical protocol is copied from."""

    name: bytes
    objc_index: int
    address: int  # input address
    size: int


def _opt_ptrs(lib: CacheDylib) -> Section | None:
    return next(
        (s for s in lib.image.sections if s.sectname == OPT_PTRS_SECTION and s.segname.startswith("__DATA")),
        None,
    )


def _pointers_in(pointers: np.ndarray, start: int, end: int) -> np.ndarray:
    loc = pointers["location"]
    return pointers[np.searchsorted(loc, start) : np.searchsorted(loc, end)]


def _add_pointers(result: DylibResult, new: np.ndarray) -> None:
    assert result.bound is not None
    merged = np.concatenate([result.bound.pointers, new])
    result.bound.pointers = merged[np.argsort(merged["location"], kind="stable")]


class ObjCCanonicalProtocols(Optimizer):
    name: ClassVar[str] = "ObjC Canonical Protocols"

    def __init__(self, objc: ObjCInputs, tables: ObjCHashTables) -> None:
        self.objc = objc
        self.tables = tables
        self.sources: list[CanonicalSource] = []
        self.chunk: Chunk | None = None
        #: cache address of every definition -> cache address of its name's canonical copy
        self.canonical: dict[int, int] = {}
        self._keys = np.zeros(0, dtype=np.uint64)
        self._values = np.zeros(0, dtype=np.uint64)

    def _libobjc(self) -> CacheDylib | None:
        return next((d for d in self.objc.dylibs if d.install_name == LIBOBJC_PATH), None)

    def estimate(self, model: CacheModel) -> None:
        lib = self._libobjc()
        if not self.objc.active or lib is None:
            return
        sect = _opt_ptrs(lib)
        if sect is None or sect.size < _PTR:
            return
        sizes = {(i, p.address): p.size for i, _, meta in self.objc.optimized() for p in meta.protocols}
        first: dict[bytes, tuple[int, int]] = {}
        for name, index, addr in self.tables.protocols.objects:
            first.setdefault(name, (index, addr))
        self.sources = [
            CanonicalSource(n, first[n][0], first[n][1], sizes[first[n]]) for n in self.tables.protocols.names
        ]

    def place(self, model: CacheModel) -> None:
        sub = model.text_subcache(LIBOBJC_PATH)
        if sub is None or not self.sources:
            return
        rw = sub.region(RegionKind.AUTH if model.config.arch.uses_pointer_auth else RegionKind.DATA)
        size = PROTOCOL_T_FULL_SIZE * len(self.sources)
        self.chunk = rw.add(Chunk("objc canonical protocols", ChunkKind.OBJC_READ_WRITE, size, 8))

    def pre_dylib_emit(self, model: CacheModel, buffers: CacheBuffers) -> None:
        if self.chunk is None:
            return
        slot = {s.name: self.chunk.vm_addr + PROTOCOL_T_FULL_SIZE * k for k, s in enumerate(self.sources)}
        for name, index, addr in self.tables.protocols.objects:
            self.canonical[int(self.objc.dylibs[index].cache_address(InputVMAddr(addr)))] = slot[name]
        self.tables.protocol_addresses = self.canonical
        keys = sorted(self.canonical)
        self._keys = np.array(keys, dtype=np.uint64)
        self._values = np.array([self.canonical[k] for k in keys], dtype=np.uint64)

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        if result.bound is None or self.chunk is None:
            return
        self._keep_source_pointers(dylib, result)
        meta = self.objc.image_of(dylib)
        if meta is None or not len(meta.protocol_ref_slots):
            return
        with result.timed("objc canonical protocols"):
            ptrs = result.bound.pointers
            slots = dylib.cache_addresses(meta.protocol_ref_slots)
            pos = np.clip(np.searchsorted(ptrs["location"], slots), 0, max(len(ptrs) - 1, 0))
            at = pos[ptrs["location"][pos] == slots] if len(ptrs) else pos[:0]
            targets = ptrs["target"][at]
            k = np.clip(np.searchsorted(self._keys, targets), 0, max(len(self._keys) - 1, 0))
            hit = self._keys[k] == targets
            ptrs["target"][at[hit]] = self._values[k[hit]]

    def _keep_source_pointers(self, dylib: CacheDylib, result: DylibResult) -> None:
        """Phase 5: the bound pointers emit copies (each canonical source's words; libobjc's
        Protocol class pointer), kept on the result: slide info's pass moves the rest out."""
        assert result.bound is not None and self.chunk is not None
        kept: dict[int, np.ndarray] = {}
        for s in self.sources:
            if self.objc.dylibs[s.objc_index].index == dylib.index:
                src = int(dylib.cache_address(InputVMAddr(s.address)))
                copied = min(s.size, PROTOCOL_T_FULL_SIZE)
                kept[src] = _pointers_in(result.bound.pointers, src, src + copied).copy()
        if dylib.install_name == LIBOBJC_PATH:
            sect = _opt_ptrs(dylib)
            if sect is not None:
                opt_ptr = int(dylib.cache_address(InputVMAddr(sect.addr)))
                kept[opt_ptr] = _pointers_in(result.bound.pointers, opt_ptr, opt_ptr + 1).copy()
        if kept:
            result.extras[self.name] = kept

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        lib = self._libobjc()
        if self.chunk is None or lib is None:
            return
        by_index = {r.index: r for r in results}
        lib_result = by_index.get(lib.index)
        if lib_result is None or lib_result.bound is None:
            return
        sect = _opt_ptrs(lib)
        assert sect is not None
        opt_ptr = int(lib.cache_address(InputVMAddr(sect.addr)))
        lib_kept = lib_result.extras.get(self.name, {})
        assert isinstance(lib_kept, dict)
        isa = lib_kept.get(opt_ptr, np.zeros(0, dtype=CACHE_POINTER_FIELDS))
        out = bytearray(PROTOCOL_T_FULL_SIZE * len(self.sources))
        added: list[np.ndarray] = []
        for k, s in enumerate(self.sources):
            dylib = self.objc.dylibs[s.objc_index]
            kept = by_index[dylib.index].extras[self.name]
            assert isinstance(kept, dict)
            src = int(dylib.cache_address(InputVMAddr(s.address)))
            dst = int(self.chunk.vm_addr) + PROTOCOL_T_FULL_SIZE * k
            copied = min(s.size, PROTOCOL_T_FULL_SIZE)
            # the pointer fields get their values when slide info writes the chunk's pointers
            proto = bytearray(buffers.read(CacheVMAddr(src), copied))
            proto += bytes(PROTOCOL_T_FULL_SIZE - copied)
            ptrs = kept[src].copy()
            ptrs["location"] = ptrs["location"] - np.uint64(src) + np.uint64(dst)
            has = set((ptrs["location"] - np.uint64(dst)).tolist())
            extra: list[np.ndarray] = [ptrs]
            if 0 not in has and len(isa):
                own_isa = isa.copy()
                own_isa["location"] = dst
                extra.append(own_isa)
            if _DEMANGLED_NAME_AT not in has:
                name_ptr = ptrs[ptrs["location"] == dst + _NAME_AT].copy()
                name_ptr["location"] = dst + _DEMANGLED_NAME_AT
                extra.append(name_ptr)
            size, flags = PROTOCOL_T_SIZE_FLAGS.unpack_from(proto, _SIZE_AT)
            flags |= PROTOCOL_FIXED_UP_1 | PROTOCOL_IS_CANONICAL
            PROTOCOL_T_SIZE_FLAGS.pack_into(proto, _SIZE_AT, max(size, PROTOCOL_T_FULL_SIZE), flags)
            out[PROTOCOL_T_FULL_SIZE * k : PROTOCOL_T_FULL_SIZE * (k + 1)] = proto
            added += extra
        buffers.put(self.chunk, bytes(out))
        _add_pointers(lib_result, np.concatenate(added) if added else np.zeros(0, dtype=CACHE_POINTER_FIELDS))
