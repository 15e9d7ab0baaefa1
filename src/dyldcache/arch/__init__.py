"""Per-architecture facts shared by the reader, the linker and the builder.

Cache layout constants (base address, region sizes, slide info versions) are
platform dependent and live in :mod:`dyldcache.builder.config`; this module holds
what depends on the instruction set alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..macho import constants as C


@dataclass(frozen=True, slots=True)
class Arch:
    name: str
    cputype: int
    #: cpusubtype written in a linked image's mach header (arm64e: PTRAUTH_ABI | 2)
    cpusubtype: int
    #: linker segment alignment (ld64: 16 KiB on arm64*, 4 KiB on x86_64)
    segment_alignment: int
    #: page size recorded in dyld_chained_starts_in_segment
    chained_page_size: int
    #: pointer format ld64 uses for chained fixups on macOS 12+/iOS 15+
    chained_pointer_format: int
    #: bytes per stub in __stubs / __auth_stubs
    stub_size: int
    #: name of the stubs section
    stubs_section: str
    #: whether pointers may carry pointer-authentication data
    uses_pointer_auth: bool

    @property
    def is_arm64(self) -> bool:
        return self.cputype == C.CPU_TYPE_ARM64

    @property
    def chained_stride(self) -> int:
        return 8 if self.uses_pointer_auth else 4


ARM64 = Arch(
    name="arm64",
    cputype=C.CPU_TYPE_ARM64,
    cpusubtype=C.CPU_SUBTYPE_ARM64_ALL,
    segment_alignment=0x4000,
    chained_page_size=0x4000,
    chained_pointer_format=C.DYLD_CHAINED_PTR_64_OFFSET,
    stub_size=12,
    stubs_section="__stubs",
    uses_pointer_auth=False,
)
ARM64E = Arch(
    name="arm64e",
    cputype=C.CPU_TYPE_ARM64,
    cpusubtype=C.CPU_SUBTYPE_PTRAUTH_ABI | C.CPU_SUBTYPE_ARM64E,
    segment_alignment=0x4000,
    chained_page_size=0x4000,
    chained_pointer_format=C.DYLD_CHAINED_PTR_ARM64E_USERLAND24,
    stub_size=16,
    stubs_section="__auth_stubs",
    uses_pointer_auth=True,
)
X86_64 = Arch(
    name="x86_64",
    cputype=C.CPU_TYPE_X86_64,
    cpusubtype=C.CPU_SUBTYPE_X86_64_ALL,
    segment_alignment=0x1000,
    chained_page_size=0x1000,
    chained_pointer_format=C.DYLD_CHAINED_PTR_64_OFFSET,
    stub_size=6,
    stubs_section="__stubs",
    uses_pointer_auth=False,
)

ARCHS: dict[str, Arch] = {a.name: a for a in (ARM64, ARM64E, X86_64)}


def arch_named(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise UsageError(f"unsupported architecture {name!r} (expected one of {', '.join(ARCHS)})") from None


def arch_name(cputype: int, cpusubtype: int) -> str:
    """Apple's name for a (cputype, cpusubtype) pair, e.g. 'arm64e'; unknown pairs get a hex name."""
    sub = cpusubtype & ~C.CPU_SUBTYPE_MASK
    if cputype == C.CPU_TYPE_ARM64:
        return {
            C.CPU_SUBTYPE_ARM64_ALL: "arm64",
            C.CPU_SUBTYPE_ARM64_V8: "arm64v8",
            C.CPU_SUBTYPE_ARM64E: "arm64e",
        }.get(sub, f"arm64-{sub:#x}")
    if cputype == C.CPU_TYPE_X86_64:
        return "x86_64h" if sub == C.CPU_SUBTYPE_X86_64_H else "x86_64"
    if cputype == C.CPU_TYPE_ARM64_32:
        return "arm64_32"
    if cputype == C.CPU_TYPE_X86:
        return "i386"
    if cputype == C.CPU_TYPE_ARM:
        return "arm"
    return f"cpu{cputype:#x}-{sub:#x}"


def arch_for(cputype: int, cpusubtype: int) -> Arch | None:
    """The supported Arch for a mach header's cpu pair, or None."""
    return ARCHS.get(arch_name(cputype, cpusubtype))
