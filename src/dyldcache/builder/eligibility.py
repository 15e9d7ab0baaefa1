"""The eligibility rules: can one input image go into the cache, and if not, why.

The rules are those of dyld-1162 (``docs/cache-format.md`` §8: ``canBePlacedInDyldCache`` and
the builder's own filters), reported in Apple's wording, plus our own where a later phase
relies on something Apple's builder asserts or trusts; those say why in their message.

Some of Apple's rules are the policy of Apple's OS build, not limits of the format or of dyld:
only paths under ``/usr/lib``, ``/System/Library``, ... may enter a cache (and, on macOS, not
``/usr/local`` and a few others), no debug or profile variants, and split seg info must come
from the linker. By default any path inside the root is eligible and a dylib without split seg
info gets synthesized info (``dyldcache.synth``); ``CacheConfig.apple_rules`` (``--apple-rules``)
applies all of them again.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..macho import constants as C
from ..macho.file import MachOFile, Segment
from ..macho.fixups import FixupKind
from ..macho.split_seg import unsupported_v1_entry, unsupported_v2_entry
from .config import CacheConfig

ELIGIBLE_PREFIXES = (
    "/usr/lib/",
    "/System/Library/",
    "/System/iOSSupport/usr/lib/",
    "/System/iOSSupport/System/Library/",
    "/Library/Apple/usr/lib/",
    "/Library/Apple/System/Library/",
    "/System/DriverKit/",
    "/System/Cryptexes/OS/usr/lib/",
    "/System/Cryptexes/OS/System/Library/",
    "/System/Cryptexes/OS/System/iOSSupport/usr/lib/",
    "/System/Cryptexes/OS/System/iOSSupport/System/Library/",
    "/System/ExclaveKit/usr/lib/",
    "/System/ExclaveKit/System/Library/",
)
_MACOS_EXCLUDED_PREFIXES = (
    "/usr/lib/system/introspection/",
    "/System/Library/QuickTime/",
    "/System/Library/Tcl/",
    "/System/Library/Perl/",
    "/System/Library/MonitorPanels/",
    "/System/Library/Accessibility/",
    "/usr/local/",
    "/usr/lib/pam/",
    "/System/Library/Templates/Data/",
)
_EMBEDDED_EXCLUDED = (
    "/System/Library/Caches/com.apple.xpc/sdk.dylib",
    "/System/Library/Caches/com.apple.xpcd/xpcd_cache.dylib",
)
_EXCLUDED_SUFFIXES = ("_profile.dylib", "_debug.dylib", "_asan.dylib", "_profile", "_debug", "/CoreADI")
SILENT_SKIPS = ("/usr/lib/libobjc-trampolines.dylib", "/usr/lib/libffi-trampolines.dylib")
_ALLOWED_CHAINED_FORMATS = frozenset(
    {
        C.DYLD_CHAINED_PTR_64,
        C.DYLD_CHAINED_PTR_64_OFFSET,
        C.DYLD_CHAINED_PTR_ARM64E,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND24,
        C.DYLD_CHAINED_PTR_32,
    }
)
_RX = C.VM_PROT_READ | C.VM_PROT_EXECUTE
_RW = C.VM_PROT_READ | C.VM_PROT_WRITE
#: no segment of one dylib may be larger than this (a discontiguous cache region)
MAX_SEGMENT_SIZE = 1 << 30


def is_eligible_path(path: str) -> bool:
    return path.startswith(ELIGIBLE_PREFIXES)


def _excluded(path: str, config: CacheConfig) -> bool:
    """Apple's per-platform exclusions (policy: applied with ``apple_rules`` only)."""
    if not config.apple_rules:
        return False
    if config.platform in (C.PLATFORM_MACOS, C.PLATFORM_MACCATALYST):
        return path.startswith(_MACOS_EXCLUDED_PREFIXES) or ".app/" in path or "HelloWorldMacHelper" in path
    return path in _EMBEDDED_EXCLUDED


def _platform_ok(image: MachOFile, config: CacheConfig) -> bool:
    platforms = {bv.platform for bv in image.build_versions}
    if image.version_min is not None:
        platforms.add(image.version_min[0])
    if not platforms:
        return True  # very old dylibs carry none; dyld treats them as the host platform
    if config.platform == C.PLATFORM_MACOS and C.PLATFORM_MACCATALYST in platforms:
        return True
    return config.platform in platforms


def check_eligibility(
    image: MachOFile, path: str, config: CacheConfig, install_name: str | None = None
) -> str | None:
    """The reason ``image`` (installed at ``path``) cannot go into the cache, or None.

    ``install_name``: the name it gets in the cache when that is not its own (renamed by the
    install-name map, or its path in the root for a relative ``LC_ID_DYLIB``).

    Rules in the order of dyld-1162 (cache-format.md §8.1 and §8.2); the first that fails
    is reported. Without ``config.apple_rules`` a dylib without split seg info passes here: the
    caller synthesizes it.
    """
    if image.filetype != C.MH_DYLIB:
        return "Not MH_DYLIB"
    if image.header.cputype != config.arch.cputype or (
        config.arch.uses_pointer_auth != (image.arch == "arm64e")
    ):
        return f"arch {image.arch} is not {config.arch.name}"
    install = install_name or image.install_name
    if image.install_name is None or install is None:
        return "Missing LC_ID_DYLIB"
    if not install.startswith("/"):
        return "install name not an absolute path"
    if install != path:
        return f"install name '{install}' does not match install path '{path}'"
    if "//" in install or "./" in install:
        return "install name contains '//' or './'"
    if _excluded(path, config):
        return "path is excluded from the shared cache on this platform"
    if not image.flags & C.MH_TWOLEVEL:
        return "Not built with two level namespaces"
    if config.apple_rules and path.endswith(_EXCLUDED_SUFFIXES):
        return "Variant image (profile, debug, asan) not placed in the cache"
    if config.apple_rules and image.split_seg_version is None:
        return "Missing split seg info"
    if image.dyld_info_command is None and C.LC_DYLD_EXPORTS_TRIE not in image.linkedit_commands:
        return "Old binary, missing dyld info or exports trie"
    if not _platform_ok(image, config):
        built = ", ".join(bv.platform_name for bv in image.build_versions)
        return f"built for {built}, not {config.platform_name}"
    if config.apple_rules:
        renames = config.install_names
        for dep in image.dylibs:
            name = (renames.rename(dep.path) if renames is not None else None) or dep.path
            if not dep.is_weak and not is_eligible_path(name):
                return f"Depends on dylib '{name}' which is not in a shared cache location"
    for sect in image.sections:
        if sect.type == C.S_INTERPOSING or (
            sect.sectname == "__interpose" and sect.segname.startswith(("__DATA", "__AUTH"))
        ):
            return "Has interposing tuples"
    # (synthesized info is v2)
    if config.arch.uses_pointer_auth and image.split_seg_version == 1:
        return "arm64e dylibs require split seg info v2"
    if image.split_seg_version == 1:
        for seg in image.segments:
            if seg.initprot & C.VM_PROT_WRITE and seg.name != "__DATA":
                return f"split seg v1 dylib has writable segment {seg.name} other than __DATA"
        info = image.split_seg
        assert info is not None
        problem = unsupported_v1_entry(info.entries, image.segments[0].vmsize)
        if problem is not None:
            return problem
    if image.split_seg_version == 2:
        info = image.split_seg
        assert info is not None
        problem = unsupported_v2_entry(info.entries, len(image.sections))
        if problem is not None:
            return problem
    dy = image.dysymtab_command
    if dy is not None and (dy.ntoc or dy.nmodtab or dy.nextrefsyms or dy.nextrel or dy.nlocrel):
        return "LC_DYSYMTAB has a table of contents, module table, external references or relocations"
    for seg in image.segments:
        if seg.name == "__PAGEZERO":
            return "has a __PAGEZERO segment"
        # dyld-1162 sorts segments by their initial protections only (CacheDylib.cpp); ld64 of
        # macOS 10.14 and earlier wrote maxprot rwx, which the builders of that time accepted
        if seg.initprot not in (_RX, _RW, C.VM_PROT_READ):
            return f"segment {seg.name} has unsupported initial permissions {seg.prot_string}"
    return _check_structure(image) or _check_fixups(image, config)


def _check_fixups(image: MachOFile, config: CacheConfig) -> str | None:
    fixups = image.fixups  # may raise FormatError: the caller evicts with the reader's message
    bad_formats = set(fixups.pointer_formats.values()) - _ALLOWED_CHAINED_FORMATS
    if bad_formats:
        return f"unsupported chained fixup pointer format {min(bad_formats)}"
    records = fixups.records
    for imp in fixups.imports:
        if imp.ordinal == C.BIND_SPECIAL_DYLIB_FLAT_LOOKUP:
            return f"has flat-namespace bind to {imp.name}"
        if imp.ordinal == C.BIND_SPECIAL_DYLIB_MAIN_EXECUTABLE:
            return f"binds to the main executable ({imp.name})"
        if imp.ordinal > len(image.dylibs):
            return (
                f"bind to {imp.name} uses library ordinal {imp.ordinal}; there are {len(image.dylibs)} dylibs"
            )
    kinds = records["kind"]
    is_bind = (kinds == FixupKind.BIND) | (kinds == FixupKind.AUTH_BIND)
    if np.any(is_bind):
        bind_addends = records["addend"][is_bind]
        auth = kinds[is_bind] == FixupKind.AUTH_BIND
        addend = bind_addends & np.int64(0x00FFFFFFFFFFFFFF)
        if np.any(~auth & (addend >= (1 << 23))):
            return "bind addend too large for the patch table (>= 2^23)"
        if np.any(auth & (bind_addends >= (1 << 5))):
            return "authenticated bind addend too large for the patch table (>= 2^5)"
    # dyld-1162 checks this on x86_64 only; every arch needs it here, since the cache has no
    # mapping for a target outside the image and the pointer would point at another dylib's bytes
    # (the cache keeps of each segment only the span of its sections: a target in the rest of
    # the segment's VM, or one past it, would point at whatever the cache puts there)
    is_rebase = np.flatnonzero((kinds == FixupKind.REBASE) | (kinds == FixupKind.AUTH_REBASE))
    if len(is_rebase):
        targets = records["target"][is_rebase]
        inside = np.zeros(len(targets), dtype=bool)
        for seg in image.segments:
            if seg.name != "__LINKEDIT":
                inside |= (targets >= seg.vmaddr) & (targets <= seg.vmaddr + segment_content_size(seg))
        bad = np.flatnonzero(~inside)
        if len(bad):
            k = int(bad[0])
            at = int(records["address"][is_rebase[k]])
            return (
                f"rebase target {int(targets[k]):#x} at {at:#x} is outside the "
                "dylib's segments (as the cache keeps them)"
            )
    if config.arch.name == "x86_64":
        addrs = records["address"]
        if np.any(addrs & np.uint64(3)):
            return "pointer fixup not 4-byte aligned"
        if np.any((addrs & np.uint64(0xFFF)) == 0xFFC):
            return "pointer fixup crosses a 4 KiB page"
    return None


def segment_content_size(seg: Segment) -> int:
    """The part of a segment the cache keeps: up to the end of its last section (its whole VM
    size when it has none)."""
    if seg.sections:
        return max(0, max(s.addr + s.size for s in seg.sections) - seg.vmaddr)
    return seg.vmsize


def _check_structure(image: MachOFile) -> str | None:
    """What later phases take for granted about where things are (our rules; dyld-1162 asserts
    them or trusts the linker): segments in VM order without overlap, __TEXT first at file
    offset 0, sections inside their segment in VM and in the file at the same relative offset,
    no segment larger than a cache region, and every fixup inside a writable segment."""
    segs = image.segments
    if not segs or segs[0].name != "__TEXT" or segs[0].fileoff != 0:
        return "the first segment is not __TEXT at file offset 0"
    for a, b in itertools.pairwise(segs):
        if b.vmaddr < a.vmaddr + a.vmsize:
            return f"segment {b.name} ({b.vmaddr:#x}) overlaps or precedes segment {a.name} in VM"
    for seg in segs:
        if seg.vmsize > MAX_SEGMENT_SIZE:
            return f"segment {seg.name} is {seg.vmsize:#x} bytes, more than a cache region holds"
        if seg.filesize > seg.vmsize:
            return f"segment {seg.name} has more file bytes ({seg.filesize:#x}) than VM ({seg.vmsize:#x})"
        for sect in seg.sections:
            if sect.addr < seg.vmaddr or sect.addr + sect.size > seg.vmaddr + seg.vmsize:
                return (
                    f"section {sect.full_name} ({sect.addr:#x}+{sect.size:#x}) lies outside its segment "
                    f"({seg.vmaddr:#x}+{seg.vmsize:#x})"
                )
            if sect.size and not sect.is_zerofill and sect.offset - seg.fileoff != sect.addr - seg.vmaddr:
                return (
                    f"section {sect.full_name} is at file offset {sect.offset:#x} but VM address "
                    f"{sect.addr:#x}: not where its segment maps it"
                )
    recs = image.fixups.records
    if len(recs):
        writable = [s for s in segs if s.initprot & C.VM_PROT_WRITE and s.name != "__LINKEDIT"]
        addrs = recs["address"]
        inside = np.zeros(len(recs), dtype=bool)
        for s in writable:
            inside |= (addrs >= s.vmaddr) & (addrs + 8 <= s.vmaddr + segment_content_size(s))
        bad = np.flatnonzero(~inside)
        if len(bad):
            at = int(addrs[bad[0]])
            holder = image.segment_for_address(at)
            where = f"segment {holder.name}" if holder is not None else "no segment"
            return f"fixup at {at:#x} is in {where}: the cache slides pointers only in its data mappings"
    return None
