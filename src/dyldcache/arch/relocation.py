"""The relocations the linker applies, in one arch-neutral vocabulary, and the contract of a
per-arch applier.

The object reader (``dyldcache.link.objects``) decodes ``<mach-o/arm64/reloc.h>`` and
``<mach-o/x86_64/reloc.h>`` entries into :class:`RelocKind`. Pointers and differences are
written the same way on every arch; every other kind patches an instruction field, and each
arch module (:mod:`.arm64`, :mod:`.x86_64`) gives, per kind it knows, a :class:`RelocRule`:
where the value points (:class:`Via`), how the field is encoded, and the split seg entry
(``DYLD_CACHE_ADJ_V2_*``) that lets the cache builder move the target later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class RelocKind(Enum):
    """What the linker must put at a relocation's location."""

    POINTER64 = "pointer64"  # absolute 64-bit address of target + addend
    POINTER32 = "pointer32"  # absolute 32-bit address (rejected for dylibs)
    AUTH_POINTER = "auth_pointer"  # arm64e signed 64-bit pointer
    DELTA = "delta"  # target + addend - minus (SUBTRACTOR pairs), 4 or 8 bytes
    BRANCH26 = "branch26"  # arm64 B/BL imm26
    PAGE21 = "page21"  # arm64 ADRP to target's page
    PAGEOFF12 = "pageoff12"  # arm64 ADD/LDR/STR low 12 bits
    GOT_PAGE21 = "got_page21"  # ADRP to the target's GOT slot
    GOT_PAGEOFF12 = "got_pageoff12"  # LDR of the target's GOT slot
    POINTER_TO_GOT = "pointer_to_got"  # 32-bit pc-relative delta to the GOT slot (arm64)
    X86_PCREL = "x86_pcrel"  # rel32 = target + addend - (P + bias)
    X86_BRANCH = "x86_branch"  # call/jmp rel32 (through a stub for imports)
    X86_GOT_LOAD = "x86_got_load"  # movq GOT slot(%rip)
    X86_GOT = "x86_got"  # other rel32 references to a GOT slot
    TLV = "tlv"  # thread-local variable access (not supported)


class Via(Enum):
    """Where an instruction relocation's value points."""

    #: at the target plus the addend; an imported target is refused
    TARGET = "target"
    #: the same, and a target dyld binds (imported, or an exported weak definition) is refused
    UNBOUND_TARGET = "unbound_target"
    #: a call or jump: at the target, or at its stub when dyld binds the target
    CALL = "call"
    #: at the target's GOT slot (plus the addend)
    GOT = "got"
    #: at a pointer slot for the target: for a personality routine the slot its unwind info
    #: names (the authenticated GOT on arm64e), for anything else its GOT slot
    POINTER_SLOT = "pointer_slot"


#: writes a field: (image buffer, file offset of the field, its address P, the address it
#: must reach, the x86_64 pc bias) -> None; raises ValueError when the field cannot hold it
FieldWriter = Callable[[bytearray, int, int, int, int], None]


@dataclass(frozen=True, slots=True)
class RelocRule:
    """How one arch applies one instruction relocation kind."""

    via: Via
    write: FieldWriter
    #: split seg v2 kind of the field (DYLD_CACHE_ADJ_V2_*)
    split_kind: int
    #: the field gets a split seg entry even when its target is in its own section, if that
    #: section is not code (x86_64); otherwise only references to another section get one
    split_within_data: bool = False
    #: how a refused reference is named in the error ("direct ADRP/ADD", "RIP-relative")
    form: str = ""

    @property
    def goes_through_got(self) -> bool:
        return self.via in (Via.GOT, Via.POINTER_SLOT)
