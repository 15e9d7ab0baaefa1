"""The optimizers of dyld-1162's cache builder, one module each, named as in the seed's
``cache-builder-optimizers.md``; the interface they offer the phase driver is ``base.py``.

=========================================  ===========================  =======================
seed optimizer                             module                       per dylib (phase 5)
=========================================  ===========================  =======================
Pack segments                              ``pack_segments``            copy, split seg
Convert binds to rebases                   ``binds_to_rebases``         bind
Remove unused LINKEDIT                     ``remove_unused_linkedit``   LINKEDIT, load commands
Deduplicate LINKEDIT Symbol Strings        ``symbol_strings``
Unmap Local Symbols                        ``unmapped_locals``
(calculateCacheDylibsTrie)                 ``dylibs_trie``
Patch Table                                ``patch_table``
dyld4 PrebuiltLoader's                     ``prebuilt_loaders`` (none built: a placeholder)
ObjC header info and opts header           ``objc_header``
ObjC IMP Caches, Hash Tables, Canonical    not yet (libobjc does that work at run time)
Selector References, Canonical Protocols,
Relative Method Lists, Method Lists
Sorting, Selector References Loading
Swift Protocol Conformance Hash Table      not yet
Optimize Stubs, GOT uniquing, FIPS Sign    not yet
(calculateSlideInfoSize, computeSlideInfo) ``slide_info``               pointer check
Code Sign                                  ``code_sign``
=========================================  ===========================  =======================
"""

from __future__ import annotations

from ..config import CacheConfig
from ..headers import HeaderFields
from .base import DylibResult, Optimizer
from .binds_to_rebases import ConvertBindsToRebases
from .code_sign import CodeSign
from .dylibs_trie import DylibsTrie
from .objc_header import ObjCHeader
from .pack_segments import PackSegments
from .patch_table import PatchTable
from .prebuilt_loaders import PrebuiltLoaders
from .remove_unused_linkedit import RemoveUnusedLinkedit
from .slide_info import SlideInfo
from .symbol_strings import DeduplicateSymbolStrings
from .unmapped_locals import UnmapLocalSymbols

__all__ = ["DylibResult", "HeaderFields", "Optimizer", "optimizers_for"]


def optimizers_for(config: CacheConfig) -> list[Optimizer]:
    """Every optimizer of a build, in the order the phase driver calls each step.

    The order is the seed's, with the constraints between steps: pack_segments creates the
    subcaches; remove_unused_linkedit picks each dylib's LINKEDIT region before symbol_strings
    fills it and unmapped_locals sizes what symbol_strings collected; slide info comes after
    every optimizer that places data chunks or writes pointers, and code signing is last. A new
    optimizer goes before slide_info.
    """
    unmapped = UnmapLocalSymbols(config.unmap_local_symbols)
    return [
        PackSegments(),
        ConvertBindsToRebases(),
        RemoveUnusedLinkedit(),
        DeduplicateSymbolStrings(unmapped.locals),
        unmapped,
        DylibsTrie(),
        PatchTable(),
        PrebuiltLoaders(),
        ObjCHeader(),
        SlideInfo(),
        CodeSign(),
    ]
