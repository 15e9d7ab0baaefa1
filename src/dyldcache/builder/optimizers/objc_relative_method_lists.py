"""ObjC Relative Method Lists Conversion: the selector field of every relative method list entry
of an optimized image becomes the offset of its canonical selector string from the start of the
selector strings (phase 5, per dylib, after the selector references and before sorting: the
seed's convertObjCMethodListsToOffsets).

A relative list (objc4's smallMethodListFlag, 12-byte entries) names its selector through an
int32 offset to a selector reference. dyld-1162 rewrites that field to the u32 offset of the
name in the selector strings chunk and sets relativeMethodSelectorsAreDirectFlag in
entsizeAndFlags; libobjc adds the base the optimization header (and libobjc's objc_opt_t) give
as ``relativeMethodSelectorBaseAddressOffset``. The types and IMP fields keep their relative
offsets. Pointer lists are left as pointer lists: dyld-1162 does not turn them into relative
lists (only the linker does), it only sorts them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...cache.objc_format import RELATIVE_SELECTORS_ARE_DIRECT_FLAG, SMALL_METHOD_SIZE
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from .base import DylibResult, Optimizer
from .objc_canonical_selectors import ObjCCanonicalSelectors
from .objc_input import ObjCInputs
from .objc_selector_refs import buffer_offset, set_list_flags


class ObjCRelativeMethodListsConversion(Optimizer):
    name: ClassVar[str] = "ObjC Relative Method Lists Conversion"

    def __init__(self, objc: ObjCInputs, selectors: ObjCCanonicalSelectors) -> None:
        self.objc = objc
        self.selectors = selectors

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        meta = self.objc.image_of(dylib)
        if meta is None or self.selectors.chunk is None:
            return
        lists = [ml for ml in meta.method_lists() if ml.relative]
        if not lists:
            return
        assert dylib.text.chunk is not None
        buf = buffers.holding(dylib.text.chunk)
        with result.timed("objc relative method lists"):
            for ml in lists:
                at = buffer_offset(dylib, ml.first)
                n = len(ml.names)
                if not n:  # an empty list is flagged too, as dyld-1162 does
                    set_list_flags(dylib, buf, ml, RELATIVE_SELECTORS_ARE_DIRECT_FLAG)
                    continue
                words = buf[at : at + SMALL_METHOD_SIZE * n].view("<u4").reshape(n, SMALL_METHOD_SIZE // 4)
                words[:, 0] = np.array([self.selectors.offsets[name] for name in ml.names], dtype="<u4")
                set_list_flags(dylib, buf, ml, RELATIVE_SELECTORS_ARE_DIRECT_FLAG)
