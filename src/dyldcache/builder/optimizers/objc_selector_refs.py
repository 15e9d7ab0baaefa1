"""ObjC Selector References Loading: every selector reference of an optimized image, and the
name field of every pointer method list entry, points at the canonical selector string
(phase 5, per dylib: the seed's updateObjCSelectorReferences). Relative method lists name
their selectors through the selector references, so only their flags change.

The pointers are the bind pass's (binds_to_rebases.py): this pass changes their targets, and
slide info (later) writes them. Every method list is marked uniqued (flag bit 0 of
entsizeAndFlags), as dyld-1162 marks them.
"""

from __future__ import annotations

import struct
from typing import ClassVar

import numpy as np

from ...cache.objc_format import BIG_METHOD_SIZE
from ...errors import BuildError
from ..bind import BindResult
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..types import InputVMAddr
from .base import DylibResult, Optimizer
from .objc_canonical_selectors import ObjCCanonicalSelectors
from .objc_input import MethodListInput, ObjCImageInput, ObjCInputs

#: method_list_t flag bits dyld-1162 sets (entsizeAndFlags, low bits)
METHOD_LIST_UNIQUED = 0x1
METHOD_LIST_SORTED = 0x2
_U32 = struct.Struct("<I")


def buffer_offset(dylib: CacheDylib, addr: int) -> int:
    """Offset in the file holding the dylib of the cache copy of input address ``addr``."""
    seg = dylib.segment_for_input_address(InputVMAddr(addr))
    if seg is None or seg.chunk is None:
        raise BuildError(f"internal: ObjC metadata at {addr:#x} is outside the cached segments")
    return seg.cache_fileoff + (addr - seg.input_vmaddr)


def set_list_flags(dylib: CacheDylib, buf: np.ndarray, ml: MethodListInput, bits: int) -> None:
    at = buffer_offset(dylib, ml.address)
    (word,) = _U32.unpack(bytes(buf[at : at + 4]))
    buf[at : at + 4] = np.frombuffer(_U32.pack(word | bits), dtype=np.uint8)


def retarget(bound: BindResult, locations: np.ndarray, targets: np.ndarray, what: str) -> None:
    """Point the bound pointers at ``locations`` (cache addresses) at ``targets``."""
    if not len(locations):
        return
    ptrs = bound.pointers
    pos = np.searchsorted(ptrs["location"], locations)
    pos_c = np.clip(pos, 0, max(len(ptrs) - 1, 0))
    if not len(ptrs) or np.any(ptrs["location"][pos_c] != locations):
        raise BuildError(f"internal: a {what} has no pointer fixup")
    ptrs["target"][pos_c] = targets
    ptrs["high8"][pos_c] = 0


def method_name_fields(meta: ObjCImageInput) -> tuple[np.ndarray, list[bytes]]:
    """Input addresses of the name fields of every pointer method list entry, and the names."""
    addrs: list[int] = []
    names: list[bytes] = []
    for ml in meta.method_lists():
        if not ml.relative:
            addrs += range(ml.first, ml.first + BIG_METHOD_SIZE * len(ml.names), BIG_METHOD_SIZE)
            names += ml.names
    return np.array(addrs, dtype=np.uint64), names


class ObjCSelectorReferencesLoading(Optimizer):
    name: ClassVar[str] = "ObjC Selector References Loading"

    def __init__(self, objc: ObjCInputs, selectors: ObjCCanonicalSelectors) -> None:
        self.objc = objc
        self.selectors = selectors

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        meta = self.objc.image_of(dylib)
        if meta is None or result.bound is None or self.selectors.chunk is None:
            return
        with result.timed("objc selector references"):
            sel = self.selectors
            fields, names = method_name_fields(meta)
            for locs, labels, what in (
                (meta.selref_locations, meta.selref_names, "selector reference"),
                (fields, names, "method name"),
            ):
                targets = np.array([sel.address(n) for n in labels], dtype=np.uint64)
                retarget(result.bound, dylib.cache_addresses(locs), targets, what)
            buf = buffers.holding(dylib.text.chunk) if dylib.text.chunk is not None else None
            assert buf is not None
            for ml in meta.method_lists():
                set_list_flags(dylib, buf, ml, METHOD_LIST_UNIQUED)
