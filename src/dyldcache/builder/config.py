"""Layout constants per architecture and platform: the one place they are written down.

Values follow ``docs/cache-format.md`` §2.8, §6 and §7.1 (dyld-1162's BuilderConfig with
the xnu-10063 shared-region constants).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import Arch, arch_named
from ..errors import UsageError
from ..macho import constants as C
from .install_names import InstallNameMap
from .types import CacheVMAddr

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

PLATFORMS = {"macos": C.PLATFORM_MACOS, "ios": C.PLATFORM_IOS}

#: every region starts and ends on 16 KiB in the file and in VM, even on x86_64
REGION_ALIGNMENT = 0x4000
#: dylib __TEXT chunks are aligned to this (machHeaderAlignment)
MACH_HEADER_ALIGNMENT = 0x1000
#: bytes of a cache file that a serial step (slide info, code signing) works on at once before
#: it releases their pages: what bounds the builder's resident output pages (a multiple of every
#: slide and code-sign page size)
MEMORY_WINDOW = 8 << 20
#: VM reserved after the last LINKEDIT for dyld's dynamic data (dyld_cache_dynamic_data_header)
DYNAMIC_CONFIG_SIZE = 0x4000


@dataclass(frozen=True, slots=True)
class CacheConfig:
    arch: Arch
    platform: int
    #: unslid address of the first mapping (SHARED_REGION_BASE_*)
    base_address: CacheVMAddr
    #: size of the shared region the cache must fit in (SHARED_REGION_SIZE_*)
    cache_size: int
    #: "contiguous" (all arm64 variants: 32 MiB padding) or "discontiguous" (x86_64: 1 GiB regions)
    layout: str
    #: padding between regions of different page-table sharing (contiguous layout)
    region_padding: int
    #: alignment of regions whose write permission differs (discontiguous layout)
    discontiguous_alignment: int
    #: a subcache is started when __TEXT would pass this
    subcache_text_limit: int
    #: cap on maxSlide (contiguous layouts)
    max_slide_cap: int | None
    #: all dylib LINKEDIT goes into the last subcache (regions of 4 GiB or less)
    all_linkedit_in_last_subcache: bool
    slide_info_version: int
    slide_page_size: int
    code_sign_page_size: int
    #: locals move to a .symbols file (embedded platforms)
    unmap_local_symbols: bool
    #: image_info inode/mtime are meaningful (dylibs stay on disk)
    dylibs_expected_on_disk: bool
    #: apply Apple's OS-build policy rules too, not only what the format and dyld require
    apple_rules: bool = False
    #: explicit install-name renames (--install-name-map)
    install_names: InstallNameMap | None = field(default=None, compare=False)

    @property
    def arch_name(self) -> str:
        return self.arch.name

    @property
    def platform_name(self) -> str:
        return C.PLATFORM_NAMES[self.platform]

    @property
    def cache_type(self) -> int:
        """0 development: every cache this builder writes is a development-kind cache."""
        return 0

    @property
    def code_sign_identifier(self) -> str:
        return (
            "com.apple.dyld.cache."
            + self.arch.name
            + ("" if self.dylibs_expected_on_disk else ".development")
        )


def make_config(
    arch_name: str,
    platform_name: str,
    subcache_text_limit: int | None = None,
    unmap_local_symbols: bool | None = None,
    apple_rules: bool = False,
) -> CacheConfig:
    """The configuration for one (arch, platform) pair, with optional overrides."""
    arch = arch_named(arch_name)
    if platform_name not in PLATFORMS:
        raise UsageError(f"unsupported platform {platform_name!r} (expected macos or ios)")
    platform = PLATFORMS[platform_name]
    embedded = platform != C.PLATFORM_MACOS
    if arch.name == "x86_64":
        if embedded:
            raise UsageError("x86_64 caches exist only for macOS (and simulators)")
        cfg = dict(
            base_address=CacheVMAddr(0x7FF800000000),
            cache_size=0x7FE000000,
            layout="discontiguous",
            region_padding=0,
            discontiguous_alignment=GiB,
            subcache_text_limit=512 * MiB,
            max_slide_cap=None,
            all_linkedit_in_last_subcache=False,
            slide_info_version=2,
            slide_page_size=0x1000,
            code_sign_page_size=0x1000,
        )
    else:
        cache_size = 0x100000000 if embedded else 0x180000000
        if arch.uses_pointer_auth:
            slide_version, slide_page = (3, 0x1000) if cache_size <= 4 * GiB else (5, 0x4000)
        else:
            slide_version, slide_page = 2, 0x1000
        cfg = dict(
            base_address=CacheVMAddr(0x180000000),
            cache_size=cache_size,
            layout="contiguous",
            region_padding=32 * MiB,
            discontiguous_alignment=0,
            subcache_text_limit=1536 * MiB,
            max_slide_cap=512 * MiB,
            all_linkedit_in_last_subcache=cache_size <= 4 * GiB,
            slide_info_version=slide_version,
            slide_page_size=slide_page,
            code_sign_page_size=0x4000 if (arch.uses_pointer_auth or embedded) else 0x1000,
        )
    if subcache_text_limit is not None:
        if subcache_text_limit <= 0:
            raise UsageError("--subcache-text-limit must be positive")
        cfg["subcache_text_limit"] = subcache_text_limit
    return CacheConfig(
        arch=arch,
        platform=platform,
        unmap_local_symbols=embedded if unmap_local_symbols is None else unmap_local_symbols,
        dylibs_expected_on_disk=not embedded,
        apple_rules=apple_rules,
        **cfg,  # type: ignore[arg-type]
    )
