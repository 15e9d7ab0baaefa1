"""Per-architecture facts shared by the reader, the linker and the builder.

Cache layout constants (base address, region sizes, slide info versions) are
platform dependent and live in :mod:`dyldcache.builder.config`; this module holds
what depends on the instruction set alone. The code each arch's linker writes (relocation
appliers, stubs) is in :mod:`.arm64` and :mod:`.x86_64`, under the contracts of
:mod:`.relocation` and :mod:`.stubs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import UsageError
from ..macho import constants as C
from ..macho.cpu import arch_name
from . import arm64, x86_64
from .relocation import RelocKind, RelocRule
from .stubs import StubCode

__all__ = ["ARCHS", "ARM64", "ARM64E", "X86_64", "Arch", "arch_for", "arch_name", "arch_named"]


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
    #: the body of a stand-in function that nobody should call (a trap)
    trap: bytes
    #: compact unwind mode meaning "see the FDE in __eh_frame"
    unwind_dwarf_mode: int
    #: compact unwind modes whose rows ld64 never merges with their neighbours
    unwind_unmerged_modes: frozenset[int]
    #: how the linker applies each instruction relocation kind of this arch
    relocations: Mapping[RelocKind, RelocRule] = field(compare=False)
    #: the linker's stubs and stub helper
    stubs: StubCode = field(compare=False)

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
    trap=arm64.TRAP.to_bytes(4, "little"),
    unwind_dwarf_mode=C.UNWIND_ARM64_MODE_DWARF,
    unwind_unmerged_modes=frozenset({C.UNWIND_ARM64_MODE_DWARF}),
    relocations=arm64.RELOCATIONS,
    stubs=arm64.STUBS,
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
    trap=arm64.TRAP.to_bytes(4, "little"),
    unwind_dwarf_mode=C.UNWIND_ARM64_MODE_DWARF,
    unwind_unmerged_modes=frozenset({C.UNWIND_ARM64_MODE_DWARF}),
    relocations=arm64.RELOCATIONS,
    stubs=arm64.STUBS,
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
    trap=x86_64.TRAP,
    unwind_dwarf_mode=C.UNWIND_X86_64_MODE_DWARF,
    unwind_unmerged_modes=frozenset({C.UNWIND_X86_64_MODE_DWARF, C.UNWIND_X86_64_MODE_STACK_IND}),
    relocations=x86_64.RELOCATIONS,
    stubs=x86_64.STUBS,
)

ARCHS: dict[str, Arch] = {a.name: a for a in (ARM64, ARM64E, X86_64)}


def arch_named(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise UsageError(f"unsupported architecture {name!r} (expected one of {', '.join(ARCHS)})") from None


def arch_for(cputype: int, cpusubtype: int) -> Arch | None:
    """The supported Arch for a mach header's cpu pair, or None."""
    return ARCHS.get(arch_name(cputype, cpusubtype))
