"""The DYLD_CHAINED_PTR_* formats of chained fixups (``<mach-o/fixup-chains.h>``): the facts
of each format, and its bit layout, decoded from and encoded into whole arrays of 64-bit
pointer values at once (the chains and the blob around them are
:mod:`dyldcache.macho.chained_fixups`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import constants as C
from .fixups import FIXUP_FLAG_32BIT, FixupKind, empty_fixups

_U64 = np.uint64


@dataclass(frozen=True, slots=True)
class PointerFormat:
    """Facts about one DYLD_CHAINED_PTR_* value."""

    value: int
    name: str
    #: bytes per unit of ``next``
    stride: int
    #: bytes of one chained pointer (8, or 4 for the 32-bit formats)
    size: int
    #: position and width of the ``next`` field
    next_shift: int
    next_bits: int


POINTER_FORMATS: dict[int, PointerFormat] = {
    f.value: f
    for f in (
        PointerFormat(C.DYLD_CHAINED_PTR_ARM64E, "DYLD_CHAINED_PTR_ARM64E", 8, 8, 51, 11),
        PointerFormat(C.DYLD_CHAINED_PTR_64, "DYLD_CHAINED_PTR_64", 4, 8, 51, 12),
        PointerFormat(C.DYLD_CHAINED_PTR_32, "DYLD_CHAINED_PTR_32", 4, 4, 26, 5),
        PointerFormat(C.DYLD_CHAINED_PTR_32_CACHE, "DYLD_CHAINED_PTR_32_CACHE", 4, 4, 30, 2),
        PointerFormat(C.DYLD_CHAINED_PTR_32_FIRMWARE, "DYLD_CHAINED_PTR_32_FIRMWARE", 4, 4, 26, 6),
        PointerFormat(C.DYLD_CHAINED_PTR_64_OFFSET, "DYLD_CHAINED_PTR_64_OFFSET", 4, 8, 51, 12),
        PointerFormat(C.DYLD_CHAINED_PTR_ARM64E_KERNEL, "DYLD_CHAINED_PTR_ARM64E_KERNEL", 4, 8, 51, 11),
        PointerFormat(C.DYLD_CHAINED_PTR_64_KERNEL_CACHE, "DYLD_CHAINED_PTR_64_KERNEL_CACHE", 4, 8, 51, 12),
        PointerFormat(C.DYLD_CHAINED_PTR_ARM64E_USERLAND, "DYLD_CHAINED_PTR_ARM64E_USERLAND", 8, 8, 51, 11),
        PointerFormat(C.DYLD_CHAINED_PTR_ARM64E_FIRMWARE, "DYLD_CHAINED_PTR_ARM64E_FIRMWARE", 4, 8, 51, 11),
        PointerFormat(
            C.DYLD_CHAINED_PTR_X86_64_KERNEL_CACHE, "DYLD_CHAINED_PTR_X86_64_KERNEL_CACHE", 1, 8, 51, 12
        ),
        PointerFormat(
            C.DYLD_CHAINED_PTR_ARM64E_USERLAND24, "DYLD_CHAINED_PTR_ARM64E_USERLAND24", 8, 8, 51, 11
        ),
        PointerFormat(
            C.DYLD_CHAINED_PTR_ARM64E_SHARED_CACHE, "DYLD_CHAINED_PTR_ARM64E_SHARED_CACHE", 8, 8, 52, 11
        ),
    )
}

_ARM64E_FAMILY = frozenset(
    {
        C.DYLD_CHAINED_PTR_ARM64E,
        C.DYLD_CHAINED_PTR_ARM64E_KERNEL,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND,
        C.DYLD_CHAINED_PTR_ARM64E_FIRMWARE,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND24,
    }
)
#: arm64e formats whose plain (non-auth) rebase target is a VM address, not an offset
_ARM64E_VMADDR_TARGET = frozenset({C.DYLD_CHAINED_PTR_ARM64E, C.DYLD_CHAINED_PTR_ARM64E_FIRMWARE})
#: the formats a linker writes, and so the ones :func:`encode_chained_fixups` supports
ENCODABLE_FORMATS = frozenset(
    {
        C.DYLD_CHAINED_PTR_64,
        C.DYLD_CHAINED_PTR_64_OFFSET,
        C.DYLD_CHAINED_PTR_ARM64E,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND24,
    }
)

#: inline bind addend range by pointer format (non-auth binds; auth binds never inline)
INLINE_ADDEND = {
    C.DYLD_CHAINED_PTR_64: (0, 255),
    C.DYLD_CHAINED_PTR_64_OFFSET: (0, 255),
    C.DYLD_CHAINED_PTR_ARM64E: (-(1 << 18), (1 << 18) - 1),
    C.DYLD_CHAINED_PTR_ARM64E_USERLAND: (-(1 << 18), (1 << 18) - 1),
    C.DYLD_CHAINED_PTR_ARM64E_USERLAND24: (-(1 << 18), (1 << 18) - 1),
}


def pointer_format_name(value: int) -> str:
    fmt = POINTER_FORMATS.get(value)
    return fmt.name if fmt else f"pointer format {value}"


def _field(values: np.ndarray, shift: int, bits: int) -> np.ndarray:
    """Bits [shift, shift+bits) of every uint64 in ``values``."""
    return (values >> _U64(shift)) & _U64((1 << bits) - 1)


class Fail(Protocol):
    """Raises for the records where ``mask`` is set, with ``message`` formatted per record."""

    def __call__(self, mask: np.ndarray, message: str) -> None: ...


def decode_pointers(fmt: PointerFormat, v: np.ndarray, base: int, max_valid_pointer: int) -> np.ndarray:
    """FIXUP_DTYPE records (address and segment left unset) for chained pointer values ``v``."""
    n = len(v)
    out = empty_fixups(n)
    base_u = _U64(base)
    f = fmt.value
    if f in _ARM64E_FAMILY:
        is_bind = _field(v, 62, 1).astype(bool)
        is_auth = _field(v, 63, 1).astype(bool)
        ordinal_bits = 24 if f == C.DYLD_CHAINED_PTR_ARM64E_USERLAND24 else 16
        # plain rebase: target 43 bits (VM address or offset), high8 at 43
        plain = _field(v, 0, 43)
        if f not in _ARM64E_VMADDR_TARGET:
            plain = plain + base_u
        # auth rebase: target 32 bits, always an offset from the mach header
        auth_target = _field(v, 0, 32) + base_u
        out["target"] = np.where(is_bind, _U64(0), np.where(is_auth, auth_target, plain))
        out["high8"] = np.where(is_bind | is_auth, 0, _field(v, 43, 8))
        addend19 = _field(v, 32, 19).astype(np.int64)
        addend19[addend19 >= 1 << 18] -= 1 << 19
        out["addend"] = np.where(is_bind & ~is_auth, addend19, 0)
        out["bind"] = np.where(is_bind, _field(v, 0, ordinal_bits).astype(np.int64), -1)
        out["diversity"] = np.where(is_auth, _field(v, 32, 16), 0)
        out["addr_div"] = np.where(is_auth, _field(v, 48, 1), 0)
        out["key"] = np.where(is_auth, _field(v, 49, 2), 0)
        out["kind"] = is_bind.astype(np.uint8) + 2 * is_auth.astype(np.uint8)
    elif f in (C.DYLD_CHAINED_PTR_64, C.DYLD_CHAINED_PTR_64_OFFSET):
        is_bind = _field(v, 63, 1).astype(bool)
        target = _field(v, 0, 36)
        if f == C.DYLD_CHAINED_PTR_64_OFFSET:
            target = target + base_u
        out["target"] = np.where(is_bind, _U64(0), target)
        out["high8"] = np.where(is_bind, 0, _field(v, 36, 8))
        out["addend"] = np.where(is_bind, _field(v, 24, 8).astype(np.int64), 0)
        out["bind"] = np.where(is_bind, _field(v, 0, 24).astype(np.int64), -1)
        out["kind"] = np.where(is_bind, FixupKind.BIND, FixupKind.REBASE)
    elif f in (C.DYLD_CHAINED_PTR_64_KERNEL_CACHE, C.DYLD_CHAINED_PTR_X86_64_KERNEL_CACHE):
        # rebases only: target 30 bits from the collection's base; cacheLevel (bits 30-31)
        # names another kernel collection, which FIXUP_DTYPE cannot express (flagged 0x80)
        is_auth = _field(v, 63, 1).astype(bool)
        out["target"] = _field(v, 0, 30) + base_u
        out["flags"] = np.where(_field(v, 30, 2) != 0, 0x80, 0)
        out["diversity"] = np.where(is_auth, _field(v, 32, 16), 0)
        out["addr_div"] = np.where(is_auth, _field(v, 48, 1), 0)
        out["key"] = np.where(is_auth, _field(v, 49, 2), 0)
        out["kind"] = np.where(is_auth, FixupKind.AUTH_REBASE, FixupKind.REBASE)
    elif f == C.DYLD_CHAINED_PTR_ARM64E_SHARED_CACHE:
        # rebases only; runtimeOffset (34 bits) is taken relative to ``base``; only the A
        # keys exist (keyIsData: 0 = IA, 1 = DA)
        is_auth = _field(v, 63, 1).astype(bool)
        out["target"] = _field(v, 0, 34) + base_u
        out["high8"] = np.where(is_auth, 0, _field(v, 34, 8))
        out["diversity"] = np.where(is_auth, _field(v, 34, 16), 0)
        out["addr_div"] = np.where(is_auth, _field(v, 50, 1), 0)
        out["key"] = np.where(is_auth, 2 * _field(v, 51, 1), 0)
        out["kind"] = np.where(is_auth, FixupKind.AUTH_REBASE, FixupKind.REBASE)
    elif f == C.DYLD_CHAINED_PTR_32:
        is_bind = _field(v, 31, 1).astype(bool)
        target = _field(v, 0, 26)
        out["target"] = np.where(is_bind, _U64(0), target)
        out["addend"] = np.where(is_bind, _field(v, 20, 6).astype(np.int64), 0)
        out["bind"] = np.where(is_bind, _field(v, 0, 20).astype(np.int64), -1)
        # values above max_valid_pointer are non-pointers threaded into the chain
        non_pointer = ~is_bind & (target > _U64(max_valid_pointer))
        out["kind"] = np.where(non_pointer, 0xFF, np.where(is_bind, FixupKind.BIND, FixupKind.REBASE))
        out["flags"] = FIXUP_FLAG_32BIT
    elif f == C.DYLD_CHAINED_PTR_32_CACHE:
        # rebases only; the 30-bit target is an offset from ``base``
        out["target"] = _field(v, 0, 30) + base_u
        out["kind"] = FixupKind.REBASE
        out["flags"] = FIXUP_FLAG_32BIT
    elif f == C.DYLD_CHAINED_PTR_32_FIRMWARE:
        out["target"] = _field(v, 0, 26)
        out["kind"] = FixupKind.REBASE
        out["flags"] = FIXUP_FLAG_32BIT
    else:  # pragma: no cover - POINTER_FORMATS and this function list the same formats
        raise AssertionError(f"unhandled pointer format {f}")
    return out


def encode_pointers(
    r: np.ndarray,
    fmt: PointerFormat,
    nxt: np.ndarray,
    table_index: np.ndarray,
    inline: np.ndarray,
    base: int,
    fail: Fail,
) -> np.ndarray:
    """The 64-bit chained pointer for every record (``next`` included)."""
    kind = r["kind"]
    target = r["target"].astype(_U64)
    high8 = r["high8"].astype(_U64)
    ordinal = table_index.astype(_U64)
    is_rebase = kind == FixupKind.REBASE
    is_bind = kind == FixupKind.BIND
    is_auth_rebase = kind == FixupKind.AUTH_REBASE
    is_auth_bind = kind == FixupKind.AUTH_BIND
    is_auth = is_auth_rebase | is_auth_bind
    f = fmt.value
    # unsigned subtraction would wrap below the mach header, so check first
    below_base = target < _U64(base)
    offset = target - _U64(base)
    if f in (C.DYLD_CHAINED_PTR_64, C.DYLD_CHAINED_PTR_64_OFFSET):
        fail(is_auth, f"{fmt.name} cannot hold an authenticated pointer")
        if f == C.DYLD_CHAINED_PTR_64_OFFSET:
            fail(is_rebase & below_base, "rebase target {rec[target]:#x} is below the mach header")
            stored = offset
        else:
            stored = target
        fail(
            is_rebase & (stored >= _U64(1 << 36)),
            f"rebase target {{rec[target]:#x}} does not fit {fmt.name} (36 bits)",
        )
        rebase = stored | (high8 << _U64(36))
        bind = ordinal | (inline.astype(_U64) << _U64(24)) | _U64(1 << 63)
        values: np.ndarray = np.where(is_bind, bind, rebase) | (nxt << _U64(51))
        return values
    # arm64e family
    fail((is_auth_rebase | is_auth_bind) & (r["key"] > 3), "ptrauth key {rec[key]} is not 0..3")
    fail((is_auth_rebase | is_auth_bind) & (r["addr_div"] > 1), "addr_div {rec[addr_div]} is not 0 or 1")
    fail(is_auth_rebase & (high8 != 0), "an authenticated rebase cannot carry high8 {rec[high8]:#x}")
    fail(
        is_auth_rebase & (below_base | (offset >= _U64(1 << 32))),
        "authenticated rebase target {rec[target]:#x} is not within 4 GiB above the mach header",
    )
    if f == C.DYLD_CHAINED_PTR_ARM64E:
        stored = target
    else:
        fail(is_rebase & below_base, "rebase target {rec[target]:#x} is below the mach header")
        stored = offset
    fail(
        is_rebase & (stored >= _U64(1 << 43)),
        f"rebase target {{rec[target]:#x}} does not fit {fmt.name} (43 bits)",
    )
    auth_bits = (
        (r["diversity"].astype(_U64) << _U64(32))
        | (r["addr_div"].astype(_U64) << _U64(48))
        | (r["key"].astype(_U64) << _U64(49))
        | _U64(1 << 63)
    )
    rebase = stored | (high8 << _U64(43))
    auth_rebase = (offset & _U64(0xFFFFFFFF)) | auth_bits
    bind = ordinal | ((inline.astype(_U64) & _U64(0x7FFFF)) << _U64(32)) | _U64(1 << 62)
    auth_bind = ordinal | auth_bits | _U64(1 << 62)
    values = np.select(
        [is_rebase, is_auth_rebase, is_bind, is_auth_bind],
        [rebase, auth_rebase, bind, auth_bind],
        default=_U64(0),
    )
    values |= nxt << _U64(51)
    return values
