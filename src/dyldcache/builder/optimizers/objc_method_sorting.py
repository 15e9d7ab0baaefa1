"""ObjC Method Lists Sorting: the entries of every method list of an optimized image in
ascending order of their selector's address, which libobjc's binary search (``findMethodInSorted
List``) requires, and the list marked sorted (flag bit 1 of entsizeAndFlags) (phase 5, per
dylib, after the selector references: the seed's sortObjCMethodLists).

Selectors are the canonical strings (objc_canonical_selectors.py), so an entry's key is its
name's offset in the selector strings. The sort is stable (a name listed twice keeps its order).
A pointer list's entries move with their bound pointers (their locations change); a relative
list's int32 offsets are recomputed for their new fields (its selector field is already an
offset from the selector strings, objc_relative_method_lists.py, and stays as it is). A
protocol's extendedMethodTypes array, one type string per method of its four lists, is
permuted with them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...cache.objc_format import ENTSIZE_LIST, RELATIVE_SELECTORS_ARE_DIRECT_FLAG
from ..bind import BindResult
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..types import InputVMAddr
from .base import DylibResult, Optimizer
from .objc_canonical_selectors import ObjCCanonicalSelectors
from .objc_input import MethodListInput, ObjCImageInput, ObjCInputs
from .objc_selector_refs import METHOD_LIST_SORTED, METHOD_LIST_UNIQUED, buffer_offset, set_list_flags

_PTR = 8


def permute_entries(
    dylib: CacheDylib, buf: np.ndarray, bound: BindResult, first: int, entsize: int, order: np.ndarray
) -> None:
    """Move entry ``order[k]`` of the array at input address ``first`` to position k: its bytes
    and the bound pointers inside it."""
    n = len(order)
    at = buffer_offset(dylib, first)
    old = buf[at : at + entsize * n].reshape(n, entsize).copy()
    buf[at : at + entsize * n] = old[order].reshape(-1)
    start = int(dylib.cache_address(InputVMAddr(first)))
    ptrs = bound.pointers
    lo = np.searchsorted(ptrs["location"], start)
    hi = np.searchsorted(ptrs["location"], start + entsize * n)
    if hi > lo:
        rel = ptrs["location"][lo:hi].astype(np.int64) - start
        new_pos = np.empty(n, dtype=np.int64)
        new_pos[order] = np.arange(n)
        moved = start + new_pos[rel // entsize] * entsize + rel % entsize
        ptrs["location"][lo:hi] = moved.astype(np.uint64)
        block = ptrs[lo:hi]
        ptrs[lo:hi] = block[np.argsort(block["location"], kind="stable")]


def fix_relative_offsets(
    buf: np.ndarray, at: int, n: int, order: np.ndarray, entsize: int, direct: bool
) -> None:
    """After entries of a relative list moved (bytes at file offset ``at``), make each int32
    offset reach the same target from its new field; a ``direct`` list's selector field is an
    offset from the selector strings (objc_relative_method_lists.py), which does not move."""
    fields = entsize // 4
    words = buf[at : at + entsize * n].view("<i4").reshape(n, fields).astype(np.int64)
    delta = (order.astype(np.int64) - np.arange(n)) * entsize  # old position - new position
    words[:, 1 if direct else 0 :] += delta[:, None]
    buf[at : at + entsize * n] = words.astype("<i4").view(np.uint8).reshape(-1)


class ObjCMethodListsSorting(Optimizer):
    name: ClassVar[str] = "ObjC Method Lists Sorting"

    def __init__(self, objc: ObjCInputs, selectors: ObjCCanonicalSelectors) -> None:
        self.objc = objc
        self.selectors = selectors

    def _sort(
        self, dylib: CacheDylib, buf: np.ndarray, bound: BindResult, ml: MethodListInput, ext_types: int
    ) -> None:
        keys = np.array([self.selectors.offsets[n] for n in ml.names], dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        if np.any(order != np.arange(len(order))):
            permute_entries(dylib, buf, bound, ml.first, ml.entsize, order)
            if ml.relative:
                at = buffer_offset(dylib, ml.address)
                word = int.from_bytes(bytes(buf[at : at + 4]), "little")
                direct = bool(word & RELATIVE_SELECTORS_ARE_DIRECT_FLAG)
                fix_relative_offsets(buf, at + ENTSIZE_LIST.size, len(order), order, ml.entsize, direct)
            if ext_types:
                permute_entries(dylib, buf, bound, ext_types, _PTR, order)
        set_list_flags(dylib, buf, ml, METHOD_LIST_UNIQUED | METHOD_LIST_SORTED)

    def _lists(self, meta: ObjCImageInput) -> list[tuple[MethodListInput, int]]:
        """Every method list once, with the address of its protocol's extended types (or 0)."""
        out: dict[int, tuple[MethodListInput, int]] = {}
        for c in meta.classes:
            if c.methods is not None:
                out.setdefault(c.methods.address, (c.methods, 0))
        for cat in meta.categories:
            for ml in (cat.instance_methods, cat.class_methods):
                if ml is not None:
                    out.setdefault(ml.address, (ml, 0))
        for p in meta.protocols:
            ext = p.extended_types
            for ml in p.method_lists:
                if ml is None:
                    continue
                out.setdefault(ml.address, (ml, ext))
                if ext:
                    ext += _PTR * len(ml.names)
        return list(out.values())

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        meta = self.objc.image_of(dylib)
        if meta is None or result.bound is None or self.selectors.chunk is None:
            return
        assert dylib.text.chunk is not None
        buf = buffers.holding(dylib.text.chunk)
        with result.timed("objc method list sorting"):
            for ml, ext in self._lists(meta):
                self._sort(dylib, buf, result.bound, ml, ext)
