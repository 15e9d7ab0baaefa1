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
(findObjCDylibs .. findObjCCategories)      ``objc_input`` (read in objc_header's estimate)
ObjC header info and opts header           ``objc_header``              warnings, weak superclass
ObjC Canonical Selector References         ``objc_canonical_selectors``
ObjC Hash Tables                           ``objc_hash_tables``
ObjC Canonical Protocols                   ``objc_canonical_protocols`` protocol refs, lists
ObjC Selector References Loading           ``objc_selector_refs``       selrefs, method names
ObjC Relative Method Lists Conversion      ``objc_relative_method_lists``
                                                                        relative lists' selectors
ObjC Method Lists Sorting                  ``objc_method_sorting``      method lists
(emitPreAttachedObjCCategories)            ``objc_categories``          class_ro_t lists
ObjC IMP Caches                            ``objc_imp_caches``          class cache words
Swift Protocol Conformance Hash Table      not yet
Optimize Stubs, GOT uniquing, FIPS Sign    not yet
(calculateSlideInfoSize, computeSlideInfo) ``slide_info``               pointer check
Code Sign                                  ``code_sign``
=========================================  ===========================  =======================
"""

from __future__ import annotations

from ..config import CacheConfig
from ..headers import HeaderFields
from ..objc_optimizations import ObjCOptimizations
from .base import DylibResult, Optimizer
from .binds_to_rebases import ConvertBindsToRebases
from .code_sign import CodeSign
from .dylibs_trie import DylibsTrie
from .objc_canonical_protocols import ObjCCanonicalProtocols
from .objc_canonical_selectors import ObjCCanonicalSelectors
from .objc_categories import ObjCPreAttachedCategories
from .objc_hash_tables import ObjCHashTables
from .objc_header import ObjCHeader
from .objc_imp_caches import ObjCIMPCaches
from .objc_input import ObjCInputs
from .objc_method_sorting import ObjCMethodListsSorting
from .objc_relative_method_lists import ObjCRelativeMethodListsConversion
from .objc_selector_refs import ObjCSelectorReferencesLoading
from .pack_segments import PackSegments
from .patch_table import PatchTable
from .prebuilt_loaders import PrebuiltLoaders
from .remove_unused_linkedit import RemoveUnusedLinkedit
from .slide_info import SlideInfo
from .symbol_strings import DeduplicateSymbolStrings
from .unmapped_locals import UnmapLocalSymbols

__all__ = ["DylibResult", "HeaderFields", "Optimizer", "optimizers_for"]


def optimizers_for(
    config: CacheConfig,
    preattached_categories: bool = False,
    objc_optimizations: ObjCOptimizations | None = None,
) -> list[Optimizer]:
    """Every optimizer of a build, in the order the phase driver calls each step.

    ``preattached_categories`` adds objc_categories (dyld-1162 always runs it). It is off by
    default: DyldExtractor's ObjC fixer, which the ObjC caches must pass, reads a class_ro_t's
    tagged list-of-lists as a plain method list. ``objc_optimizations`` (Apple's file; an
    empty one for none; None when no file is given) chooses the classes of objc_imp_caches.

        The order is the seed's, with the constraints between steps: pack_segments creates the
        subcaches; remove_unused_linkedit picks each dylib's LINKEDIT region before symbol_strings
        fills it and unmapped_locals sizes what symbol_strings collected; slide info comes after
        every optimizer that places data chunks or writes pointers, and code signing is last. A new
        optimizer goes before slide_info. The ObjC optimizers share what objc_header reads in its
        estimate (ObjCInputs); objc_header places its chunks first (the seed's order in the
        file: header info, image infos, selector strings, then the tables), and the dylib passes
        that retarget selectors run after the bind pass, sorting last; pre-attached categories place
    their chunk after the other ObjC chunks and decide in phase 4 which images objc_header flags.
    """
    unmapped = UnmapLocalSymbols(config.unmap_local_symbols)
    objc = ObjCInputs()
    selectors = ObjCCanonicalSelectors(objc)
    tables = ObjCHashTables(objc, selectors)
    binds = ConvertBindsToRebases()
    return [
        PackSegments(),
        binds,
        RemoveUnusedLinkedit(),
        DeduplicateSymbolStrings(unmapped.locals),
        unmapped,
        DylibsTrie(),
        PatchTable(),
        PrebuiltLoaders(),
        ObjCHeader(objc, selectors, tables),
        selectors,
        tables,
        ObjCCanonicalProtocols(objc, tables),
        ObjCSelectorReferencesLoading(objc, selectors),
        ObjCRelativeMethodListsConversion(objc, selectors),
        ObjCMethodListsSorting(objc, selectors),
        ObjCIMPCaches(objc, selectors, objc_optimizations),
        *([ObjCPreAttachedCategories(objc, binds)] if preattached_categories else []),
        SlideInfo(),
        CodeSign(),
    ]
