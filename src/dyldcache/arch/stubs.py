"""The contract of one arch's stub code: ``__stubs`` entries that jump through a pointer slot,
and the ``__stub_helper`` that binds lazy pointers on first call (``dyld_stub_binder``).

Each arch module (:mod:`.arm64`, :mod:`.x86_64`) gives a :class:`StubCode`: the bytes of each
piece, and which of their fields refer to other sections, so that the linker can list them in
split seg info.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class HelperTarget(Enum):
    """What a field of the stub helper header refers to."""

    #: __dyld_private, the 8 bytes the helper passes to dyld_stub_binder
    DYLD_PRIVATE = "dyld_private"
    #: the GOT slot holding dyld_stub_binder
    BINDER_SLOT = "binder_slot"


@dataclass(frozen=True, slots=True)
class StubCode:
    #: alignment of the stubs section, in bytes
    alignment: int
    #: (stub address, pointer slot address, authenticated) -> the stub's bytes
    stub: Callable[[int, int, bool], bytes]
    #: (split seg kind, offset in the stub) of the fields that refer to the pointer slot
    stub_fields: tuple[tuple[int, int], ...]
    helper_header_size: int
    #: (header address, __dyld_private address, dyld_stub_binder slot address) -> bytes
    helper_header: Callable[[int, int, int], bytes]
    #: (split seg kind, offset in the header, what the field refers to)
    helper_header_fields: tuple[tuple[int, int, HelperTarget], ...]
    helper_entry_size: int
    #: (entry address, header address, offset of the lazy bind record) -> bytes
    helper_entry: Callable[[int, int, int], bytes]
