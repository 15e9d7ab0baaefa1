"""Uniform fixup records: what dyld must do to every pointer of an image.

Whatever encoded them (chained fixups, or rebase/bind/lazy-bind opcodes), an image's
fixups come out as one numpy structured array, :data:`FIXUP_DTYPE`, plus the list of
its imports. The builder, the linker's tests and the CLI all consume this form.

A record describes one pointer-sized location:

- ``REBASE``: the location must hold ``target`` (a VM address as linked) plus the slide,
  with ``high8`` in the top byte;
- ``BIND``: the location must hold the address of ``imports[bind]`` plus ``addend``;
- ``AUTH_REBASE`` / ``AUTH_BIND``: the same, signed with ``key``, ``diversity`` and
  (if ``addr_div``) the location's address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class FixupKind(IntEnum):
    REBASE = 0
    BIND = 1
    AUTH_REBASE = 2
    AUTH_BIND = 3


#: flag bits in FIXUP_DTYPE['flags']
FIXUP_FLAG_LAZY = 0x1  # came from the lazy-bind opcodes
FIXUP_FLAG_32BIT = 0x2  # a 32-bit pointer (DYLD_CHAINED_PTR_32, REBASE_TYPE_TEXT_ABSOLUTE32)

FIXUP_DTYPE = np.dtype(
    [
        ("address", "<u8"),  # VM address of the location, as linked
        ("target", "<u8"),  # rebases: target VM address as linked (no high8); binds: 0
        ("addend", "<i8"),  # binds: addend added to the symbol's address; rebases: 0
        ("bind", "<i4"),  # binds: index into Fixups.imports; rebases: -1
        ("segment", "<u2"),  # index of the segment holding the location
        ("diversity", "<u2"),  # auth: 16-bit discriminator
        ("kind", "u1"),  # FixupKind
        ("high8", "u1"),  # top byte to put back into the pointer (rebases)
        ("key", "u1"),  # auth: ptrauth key (0 IA, 1 IB, 2 DA, 3 DB)
        ("addr_div", "u1"),  # auth: 1 if the location's address is blended in
        ("flags", "u1"),  # FIXUP_FLAG_*
    ]
)


def empty_fixups(count: int = 0) -> np.ndarray:
    arr = np.zeros(count, dtype=FIXUP_DTYPE)
    arr["bind"] = -1
    return arr


@dataclass(frozen=True, slots=True)
class Import:
    """One imported symbol (a chained-fixups import, or a bind opcode's symbol)."""

    name: str
    #: library ordinal: 1-based LC_*_DYLIB index, or 0 self, -1 main executable,
    #: -2 flat lookup, -3 weak lookup
    ordinal: int
    weak: bool = False

    def __reduce__(self) -> tuple[type[Import], tuple[str, int, bool]]:
        # faster than a slotted dataclass's default pickling (see Export.__reduce__)
        return (Import, (self.name, self.ordinal, self.weak))


@dataclass(frozen=True, slots=True)
class WeakBind:
    """One entry of the weak-bind opcodes (coalescing of weak definitions)."""

    name: str
    #: VM address of the location; None for a "strong definition" marker entry
    address: int | None
    addend: int = 0
    #: BIND_SYMBOL_FLAGS_NON_WEAK_DEFINITION was set
    non_weak_definition: bool = False


@dataclass(slots=True)
class Fixups:
    records: np.ndarray  # FIXUP_DTYPE, sorted by address
    imports: list[Import] = field(default_factory=list)
    #: "chained", "opcodes" or "none"
    source: str = "none"
    #: chained fixups only: the pointer format of every segment that has chains
    pointer_formats: dict[int, int] = field(default_factory=dict)
    #: opcodes only: the weak-bind table
    weak_binds: list[WeakBind] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, int]:
        """Number of records of each kind, keyed by kind name in lower case."""
        kinds = np.bincount(self.records["kind"], minlength=len(FixupKind))
        return {k.name.lower(): int(kinds[k]) for k in FixupKind}

    def of_kind(self, *kinds: FixupKind) -> np.ndarray:
        return self.records[np.isin(self.records["kind"], [int(k) for k in kinds])]

    def import_name(self, record: np.void) -> str:
        return self.imports[int(record["bind"])].name
