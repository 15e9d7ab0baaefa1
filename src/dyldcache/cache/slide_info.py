"""Slide info: the per-mapping tables that let the kernel and dyld rebase a cache's pointers.

Every DATA-like mapping of a cache file has one blob in that file's LINKEDIT. The blob has a
header and one u16 per page giving where the page's first pointer is; each pointer's spare
high bits hold the distance to the next pointer in the same page, so a page's pointers form a
chain through the data itself. Versions (``dyld_cache_format.h``, ``docs/cache-format.md`` §2):

- v1 (32-bit caches): no chains, a 128-byte bitmap of pointer words per 4 KiB page (decoded only);
- v2 (x86_64, arm64): ``value_add`` + a configurable delta mask, 4-byte delta units, and
  "page extras" for pages whose pointers need several chains;
- v3 (arm64e, caches up to 4 GiB): 8-byte delta units in bits 51-61, plain pointers hold the
  full address, authenticated ones a 32-bit offset from ``auth_value_add`` plus PAC data;
- v5 (arm64e, larger caches, 16 KiB pages): ``DYLD_CHAINED_PTR_ARM64E_SHARED_CACHE`` pointers, a
  34-bit offset from ``value_add``, IA/DA keys only.

Pointers are exchanged as numpy arrays of :data:`CACHE_POINTER_DTYPE`. The encoders write every
chained pointer word into the mapping's bytes and return the blob; the builder also uses their
parts (check_layout, slide_values_vN, chain_slide_info_vN) on their own. Decoding is in
:mod:`.slide_info_decode`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .format import (
    DYLD_CACHE_SLIDE_PAGE_ATTR_END,
    DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA,
    DYLD_CACHE_SLIDE_PAGE_ATTR_NO_REBASE,
    DYLD_CACHE_SLIDE_PAGE_VALUE,
    DYLD_CACHE_SLIDE_V3_PAGE_ATTR_NO_REBASE,
    DYLD_CACHE_SLIDE_V5_PAGE_ATTR_NO_REBASE,
    SlideInfo1,
    SlideInfo2,
    SlideInfo3,
    SlideInfo5,
)

#: one pointer the runtime slides
CACHE_POINTER_DTYPE = np.dtype(
    [
        ("offset", "<u8"),  # byte offset of the pointer within its mapping
        ("target", "<u8"),  # unslid VM address the pointer must hold (without high8)
        ("high8", "u1"),  # top byte (TBI) the pointer carries; plain pointers only
        ("auth", "u1"),  # 1 = arm64e authenticated pointer
        ("key", "u1"),  # ptrauth key: 0 IA, 1 IB, 2 DA, 3 DB
        ("addr_div", "u1"),  # 1 = discriminator blended with the pointer's address
        ("diversity", "<u2"),  # 16-bit constant discriminator
    ]
)
assert CACHE_POINTER_DTYPE.itemsize == 22

#: v2 delta mask of 64-bit caches: bits 40-55 hold (distance to the next pointer) / 4
DEFAULT_DELTA_MASK_V2 = 0x00FFFF0000000000
_U64 = np.uint64
_MASK64 = (1 << 64) - 1
#: v3/v5 chain fields count 8-byte strides in 11 bits
_NEXT11_MAX_BYTES = 0x7FF * 8


# ---------------------------------------------------------------------------------------------
# shared helpers

#: how the encoders name a pointer in their messages (a caller with other offsets names its own)
AT_MAPPING_OFFSET = "pointer at mapping offset"


def _as_pointers(pointers: np.ndarray) -> np.ndarray:
    """``pointers`` sorted by offset, with exactly CACHE_POINTER_DTYPE (fields matched by name):
    the array itself when it already is both (the encoders only read it), else a copy."""
    arr = np.asarray(pointers).reshape(-1)
    if arr.dtype != CACHE_POINTER_DTYPE:
        names = arr.dtype.names or ()
        missing = [n for n in ("offset", "target") if n not in names]
        if missing:
            raise TypeError(f"pointers need fields {missing} (use CACHE_POINTER_DTYPE)")
        out = np.zeros(arr.shape[0], dtype=CACHE_POINTER_DTYPE)
        for name in CACHE_POINTER_DTYPE.names or ():
            if name in names:
                out[name] = arr[name]
        arr = out
    off = arr["offset"]
    if off.size > 1 and not bool((off[1:] >= off[:-1]).all()):
        arr = arr[np.argsort(off, kind="stable")]
    return arr


def _check_page_size(page_size: int, low: int, high: int) -> None:
    if page_size < low or page_size > high or page_size & (page_size - 1):
        raise ValueError(f"page size {page_size:#x} is not a power of two in [{low:#x}, {high:#x}]")


def _first(mask: np.ndarray, where: np.ndarray, label: str) -> str:
    """'<label> 0x..' of the first pointer where ``mask`` holds, for error messages."""
    return f"{label} {int(where[int(np.argmax(mask))]):#x}"


def check_layout(
    off: np.ndarray, mapping_len: int | None, page_size: int, align: int, label: str = AT_MAPPING_OFFSET
) -> None:
    """Sorted pointer offsets (u64) must be aligned, inside the mapping (unless ``mapping_len``
    is None), each inside one page, and must not overlap; ValueError names the first that is
    not by ``label`` and its offset."""
    if off.size == 0:
        return
    bad = (off & _U64(align - 1)) != 0
    if bad.any():
        raise ValueError(f"{_first(bad, off, label)} is not {align}-byte aligned")
    if mapping_len is not None:
        bad = off > _U64(max(mapping_len - 8, 0)) if mapping_len >= 8 else np.ones(off.shape, bool)
        if bad.any():
            raise ValueError(
                f"{_first(bad, off, label)} does not fit in the mapping ({mapping_len:#x} bytes)"
            )
    bad = (off & _U64(page_size - 1)) > _U64(page_size - 8)
    if bad.any():
        raise ValueError(f"{_first(bad, off, label)} crosses a {page_size:#x}-byte page boundary")
    if off.size > 1:
        close = off[1:] - off[:-1] < _U64(8)
        if close.any():
            raise ValueError(f"{_first(close, off[1:], label)} overlaps the previous pointer")


def _laid_out(
    mapping: memoryview, pointers: np.ndarray, page_size: int, align: int
) -> tuple[memoryview, np.ndarray, np.ndarray]:
    """An encoder's input checked by :func:`check_layout`: the mapping's bytes, the pointers
    sorted (:func:`_as_pointers`) and their offsets."""
    mapping = byte_view(mapping)
    p = _as_pointers(pointers)
    off = p["offset"]
    check_layout(off, len(mapping), page_size, align)
    return mapping, p, off


def _check_plain_fields(p: np.ndarray, where: np.ndarray, label: str) -> None:
    key, addr_div, diversity = p["key"], p["addr_div"], p["diversity"]
    if not (key.any() or addr_div.any() or diversity.any()):
        return
    bad = (p["auth"] == 0) & ((key != 0) | (addr_div != 0) | (diversity != 0))
    if bad.any():
        raise ValueError(f"{_first(bad, where, label)} is not authenticated but has key/diversity data")


def _chains(off: np.ndarray, page_size: int, max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Link sorted pointer offsets into per-page chains.

    Returns (page index, byte distance to the next pointer of the chain or 0, chain-start
    mask). Consecutive pointers link when they share a page and their gap is encodable.
    """
    page = off >> _U64(page_size.bit_length() - 1)
    n = off.size
    gap = np.zeros(n, dtype=_U64)
    start = np.ones(n, dtype=bool)
    if n > 1:
        d = off[1:] - off[:-1]
        link = page[1:] == page[:-1]
        if max_gap < page_size - 8:
            link &= d <= _U64(max_gap)
        np.multiply(d, link, out=gap[:-1])
        start[1:] = ~link
    return page, gap, start


def words64(mapping: memoryview) -> np.ndarray:
    """The 64-bit little-endian word at every 4-byte offset of ``mapping`` (element i at byte
    4 * i: neighbouring elements overlap), as one view of its bytes."""
    count = (len(mapping) - 8) // 4 + 1 if len(mapping) >= 8 else 0
    return np.ndarray((count,), dtype="<u8", buffer=mapping, strides=(4,))


def _store(mapping: memoryview, off: np.ndarray, raw: np.ndarray) -> None:
    """Write 64-bit little-endian words at 4-byte aligned byte offsets of ``mapping``."""
    if off.size == 0:
        return
    if not (off & _U64(7)).any():  # all 8-byte aligned: plain words are quicker to index
        words = np.frombuffer(mapping, dtype="<u8", count=len(mapping) // 8)
        index = (off >> _U64(3)).astype(np.intp)
    else:
        words = words64(mapping)
        index = (off >> _U64(2)).astype(np.intp)
    if not words.flags.writeable:
        raise ValueError("the mapping buffer is read-only")
    words[index] = raw


def byte_view(buf: Any) -> memoryview:
    """A flat byte view of any buffer (so lengths are byte counts whatever its format)."""
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def page_count(mapping_len: int, page_size: int) -> int:
    return -(-mapping_len // page_size)


def _chain_in_strides(
    mapping: memoryview, off: np.ndarray, value: np.ndarray, page_size: int, next_shift: int, no_rebase: int
) -> np.ndarray:
    """Write ``value`` at ``off`` of ``mapping``, each with the 8-byte strides to the next
    pointer of its page in the 11 bits at ``next_shift`` (v3, v5); returns page_starts: the
    byte offset of each page's only chain, or ``no_rebase``."""
    mapping = byte_view(mapping)
    page, gap, start = _chains(off, page_size, _NEXT11_MAX_BYTES)
    npages = page_count(len(mapping), page_size)
    starts = np.full(npages, no_rebase, dtype="<u2")
    si = np.flatnonzero(start)
    if si.size:
        chain_page = page[si].astype(np.intp)
        if si.size > 1 and not bool((chain_page[1:] != chain_page[:-1]).all()):
            per_page = np.bincount(chain_page, minlength=npages)
            pg = int(np.flatnonzero(per_page > 1)[0])
            raise ValueError(
                f"page {pg} needs more than one chain (a gap larger than {_NEXT11_MAX_BYTES:#x} bytes)"
            )
        starts[chain_page] = (off[si] & _U64(page_size - 1)).astype("<u2")
    _store(mapping, off, value | ((gap >> _U64(3)) << _U64(next_shift)))
    return starts


# ---------------------------------------------------------------------------------------------
# v2


def delta_mask_shift(delta_mask: int) -> int:
    """ctz of a contiguous, non-empty delta mask that leaves room for 4-byte units."""
    if delta_mask <= 0 or delta_mask > _MASK64:
        raise ValueError(f"delta mask {delta_mask:#x} is not a non-zero 64-bit value")
    shift = (delta_mask & -delta_mask).bit_length() - 1
    field = delta_mask >> shift
    if field & (field + 1) or shift < 2:
        raise ValueError(f"delta mask {delta_mask:#x} is not one contiguous run of bits above bit 1")
    return shift


def encode_slide_info_v2(
    mapping: memoryview,
    pointers: np.ndarray,
    *,
    value_add: int,
    page_size: int = 4096,
    delta_mask: int = DEFAULT_DELTA_MASK_V2,
) -> bytes:
    """Chain ``pointers`` into ``mapping`` (its writable bytes) and return the v2 blob.

    Each pointer word becomes ``(target - value_add) | high8 << 56`` with the distance to the
    next pointer of its page, in 4-byte units, in the ``delta_mask`` bits. Pages whose pointers
    cannot form one chain get several, listed in page extras.
    """
    _check_page_size(page_size, 0x100, 0x10000)  # page offsets / 4 must fit in 14 bits
    delta_mask_shift(delta_mask)
    mapping, p, off = _laid_out(mapping, pointers, page_size, 4)
    value = slide_values_v2(p, off, value_add=value_add, delta_mask=delta_mask)
    return chain_slide_info_v2(
        mapping, off, value, value_add=value_add, page_size=page_size, delta_mask=delta_mask
    )


def slide_values_v2(
    p: np.ndarray,
    where: np.ndarray,
    *,
    value_add: int,
    delta_mask: int = DEFAULT_DELTA_MASK_V2,
    label: str = AT_MAPPING_OFFSET,
) -> np.ndarray:
    """The word each pointer of ``p`` (fields target, high8, auth, key, addr_div, diversity)
    holds in a v2 chain, delta bits still clear; ValueError names the first pointer v2 cannot
    hold by ``label`` and its ``where``."""
    delta_mask_shift(delta_mask)
    auth = p["auth"]
    if auth.any():
        raise ValueError(
            f"{_first(auth != 0, where, label)} is authenticated: slide info v2 cannot express it"
        )
    _check_plain_fields(p, where, label)
    target = p["target"]
    vadd = _U64(value_add & _MASK64)
    if vadd:
        bad = target < vadd
        if bad.any():
            raise ValueError(
                f"{_first(bad, where, label)} targets {int(target[bad][0]):#x}, "
                f"below value_add {value_add:#x}"
            )
        value = target - vadd
    else:
        value = target.copy()
    bad = (value >> _U64(56)) != 0
    if bad.any():
        raise ValueError(
            f"{_first(bad, where, label)}: target - value_add {int(value[bad][0]):#x} needs more than 56 bits"
        )
    high8 = p["high8"]
    if high8.any():
        value |= high8.astype(_U64) << _U64(56)
    bad = value == 0
    if bad.any():
        raise ValueError(
            f"{_first(bad, where, label)} targets value_add {value_add:#x} itself: "
            "it would store 0, which is never slid"
        )
    bad = (value & _U64(delta_mask)) != 0
    if bad.any():
        raise ValueError(
            f"{_first(bad, where, label)}: value {int(value[bad][0]):#x} collides with the delta mask "
            f"{delta_mask:#x}"
        )
    return value


def chain_slide_info_v2(
    mapping: memoryview,
    off: np.ndarray,
    value: np.ndarray,
    *,
    value_add: int,
    page_size: int = 4096,
    delta_mask: int = DEFAULT_DELTA_MASK_V2,
) -> bytes:
    """Write each ``value`` (of :func:`slide_values_v2`) at its offset ``off`` (sorted, laid
    out as :func:`check_layout` wants) of ``mapping``, linked to the next pointer of its page,
    and return the v2 blob."""
    shift = delta_mask_shift(delta_mask)
    mapping = byte_view(mapping)
    max_gap = (delta_mask >> shift) * 4
    page, gap, start = _chains(off, page_size, max_gap)
    raw = value | ((gap >> _U64(2)) << _U64(shift))
    _store(mapping, off, raw)

    npages = page_count(len(mapping), page_size)
    starts = np.full(npages, DYLD_CACHE_SLIDE_PAGE_ATTR_NO_REBASE, dtype="<u2")
    extras = np.zeros(0, dtype="<u2")
    si = np.flatnonzero(start)
    if si.size:
        chain_page = page[si].astype(np.intp)
        chain_word = ((off[si] & _U64(page_size - 1)) >> _U64(2)).astype("<u2")
        if si.size == 1 or bool((chain_page[1:] != chain_page[:-1]).all()):
            single = np.ones(si.size, dtype=bool)  # one chain per page (the usual case)
        else:
            per_page = np.bincount(chain_page, minlength=npages)
            single = per_page[chain_page] == 1
        starts[chain_page[single]] = chain_word[single]
        multi = ~single
        if multi.any():
            ext_page = chain_page[multi]
            extras = chain_word[multi].copy()
            first = np.flatnonzero(np.r_[True, ext_page[1:] != ext_page[:-1]])
            last = np.r_[ext_page[1:] != ext_page[:-1], True]
            if first[-1] > DYLD_CACHE_SLIDE_PAGE_VALUE:
                raise ValueError(f"page extras index {int(first[-1])} does not fit in 14 bits")
            extras[last] |= DYLD_CACHE_SLIDE_PAGE_ATTR_END
            starts[ext_page[first]] = (first | DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA).astype("<u2")
    header = SlideInfo2(
        version=2,
        page_size=page_size,
        page_starts_offset=SlideInfo2.SIZE,
        page_starts_count=npages,
        # right after the starts even when empty: Apple's builders do so, and some readers
        # (rizin) refuse an extras offset of 0
        page_extras_offset=SlideInfo2.SIZE + 2 * npages,
        page_extras_count=int(extras.size),
        delta_mask=delta_mask,
        value_add=value_add & _MASK64,
    )
    return header.pack() + starts.tobytes() + extras.tobytes()


# ---------------------------------------------------------------------------------------------
# v3


def encode_slide_info_v3(
    mapping: memoryview, pointers: np.ndarray, *, auth_value_add: int, page_size: int = 4096
) -> bytes:
    """Chain ``pointers`` into ``mapping`` and return the v3 blob (arm64e).

    Plain pointers store the full address (43 bits) with high8 in bits 43-50; authenticated ones
    store ``target - auth_value_add`` (32 bits), diversity, address diversity and key. Bits 51-61
    count 8-byte steps to the next pointer; bit 62 stays 0 (the kernel would read it as a bind).
    """
    _check_page_size(page_size, 0x100, 0x4000)  # every in-page gap fits in 11 strides of 8
    mapping, p, off = _laid_out(mapping, pointers, page_size, 8)
    value = slide_values_v3(p, off, auth_value_add=auth_value_add)
    return chain_slide_info_v3(mapping, off, value, auth_value_add=auth_value_add, page_size=page_size)


def _arm64e_fields(p: np.ndarray, where: np.ndarray, label: str) -> tuple[np.ndarray, ...]:
    """(authenticated mask, target, high8 as u64) of pointers whose plain ones carry no
    key or diversity (checked)."""
    _check_plain_fields(p, where, label)
    return p["auth"] != 0, p["target"], p["high8"].astype(_U64)


def slide_values_v3(
    p: np.ndarray, where: np.ndarray, *, auth_value_add: int, label: str = AT_MAPPING_OFFSET
) -> np.ndarray:
    """The word each pointer of ``p`` holds in a v3 chain, next bits still clear (see
    :func:`slide_values_v2`)."""
    auth, target, high8 = _arm64e_fields(p, where, label)
    bad = ~auth & (target >> _U64(43) != 0)
    if bad.any():
        raise ValueError(
            f"{_first(bad, where, label)} targets {int(target[bad][0]):#x}, which needs more than 43 bits"
        )
    bad = auth & (high8 != 0)
    if bad.any():
        raise ValueError(f"{_first(bad, where, label)} is authenticated and cannot carry high8")
    aadd = _U64(auth_value_add & _MASK64)
    bad = auth & ((target < aadd) | (target - aadd > _U64(0xFFFFFFFF)))
    if bad.any():
        raise ValueError(
            f"{_first(bad, where, label)} targets {int(target[bad][0]):#x}, "
            f"not within 4 GiB above auth_value_add {auth_value_add:#x}"
        )
    bad = p["key"] > 3
    if bad.any():
        raise ValueError(f"{_first(bad, where, label)} has key {int(p['key'][bad][0])}, not 0-3")
    plain_raw = target | (high8 << _U64(43))
    auth_raw = (
        ((target - aadd) & _U64(0xFFFFFFFF))
        | (p["diversity"].astype(_U64) << _U64(32))
        | ((p["addr_div"].astype(_U64) & _U64(1)) << _U64(48))
        | (p["key"].astype(_U64) << _U64(49))
        | _U64(1 << 63)
    )
    value: np.ndarray = np.where(auth, auth_raw, plain_raw)
    return value


def chain_slide_info_v3(
    mapping: memoryview, off: np.ndarray, value: np.ndarray, *, auth_value_add: int, page_size: int = 4096
) -> bytes:
    """Write and link the values of :func:`slide_values_v3` (see :func:`chain_slide_info_v2`)
    and return the v3 blob."""
    assert not (value & _U64(1 << 62)).any()  # the kernel would read bit 62 as a bind
    starts = _chain_in_strides(mapping, off, value, page_size, 51, DYLD_CACHE_SLIDE_V3_PAGE_ATTR_NO_REBASE)
    header = SlideInfo3(
        version=3, page_size=page_size, page_starts_count=len(starts), auth_value_add=auth_value_add & _MASK64
    )
    return header.pack() + starts.tobytes()


# ---------------------------------------------------------------------------------------------
# v5


def encode_slide_info_v5(
    mapping: memoryview, pointers: np.ndarray, *, value_add: int, page_size: int = 16384
) -> bytes:
    """Chain ``pointers`` into ``mapping`` and return the v5 blob (arm64e, 16 KiB pages).

    Every pointer stores a 34-bit ``target - value_add``; plain ones add high8 in bits 34-41,
    authenticated ones diversity (34-49), address diversity (50) and "key is DA" (51): the
    format has no B keys. Bits 52-62 count 8-byte steps to the next pointer.
    """
    _check_page_size(page_size, 0x100, 0x4000)
    mapping, p, off = _laid_out(mapping, pointers, page_size, 8)
    value = slide_values_v5(p, off, value_add=value_add)
    return chain_slide_info_v5(mapping, off, value, value_add=value_add, page_size=page_size)


def slide_values_v5(
    p: np.ndarray, where: np.ndarray, *, value_add: int, label: str = AT_MAPPING_OFFSET
) -> np.ndarray:
    """The word each pointer of ``p`` holds in a v5 chain, next bits still clear (see
    :func:`slide_values_v2`)."""
    auth, target, high8 = _arm64e_fields(p, where, label)
    vadd = _U64(value_add & _MASK64)
    bad = (target < vadd) | (target - vadd >= _U64(1 << 34))
    if bad.any():
        raise ValueError(
            f"{_first(bad, where, label)} targets {int(target[bad][0]):#x}, "
            f"not within 16 GiB above value_add {value_add:#x}"
        )
    bad = auth & (high8 != 0)
    if bad.any():
        raise ValueError(f"{_first(bad, where, label)} is authenticated and cannot carry high8")
    bad = auth & (p["key"] != 0) & (p["key"] != 2)
    if bad.any():
        raise ValueError(
            f"{_first(bad, where, label)} uses key {int(p['key'][bad][0])}: "
            "slide info v5 has only IA (0) and DA (2)"
        )
    runtime_offset = target - vadd
    plain_raw = runtime_offset | (high8 << _U64(34))
    auth_raw = (
        runtime_offset
        | (p["diversity"].astype(_U64) << _U64(34))
        | ((p["addr_div"].astype(_U64) & _U64(1)) << _U64(50))
        | ((p["key"] == 2).astype(_U64) << _U64(51))
        | _U64(1 << 63)
    )
    value: np.ndarray = np.where(auth, auth_raw, plain_raw)
    return value


def chain_slide_info_v5(
    mapping: memoryview, off: np.ndarray, value: np.ndarray, *, value_add: int, page_size: int = 16384
) -> bytes:
    """Write and link the values of :func:`slide_values_v5` (see :func:`chain_slide_info_v2`)
    and return the v5 blob."""
    starts = _chain_in_strides(mapping, off, value, page_size, 52, DYLD_CACHE_SLIDE_V5_PAGE_ATTR_NO_REBASE)
    header = SlideInfo5(
        version=5, page_size=page_size, page_starts_count=len(starts), value_add=value_add & _MASK64
    )
    return header.pack() + starts.tobytes()


# ---------------------------------------------------------------------------------------------
# sizes


def slide_info_size(version: int, mapping_size: int, page_size: int, extras: int = 0) -> int:
    """Bytes of a slide info blob for a mapping, for layout estimates.

    ``extras`` is the number of page_extras entries (v2) or of distinct page bitmaps (v1; 0
    means one per page, the worst case).
    """
    pages = page_count(mapping_size, page_size)
    if version == 1:
        bitmaps = extras or pages
        return SlideInfo1.SIZE + 2 * pages + 128 * bitmaps
    if version == 2:
        return SlideInfo2.SIZE + 2 * (pages + extras)
    if version in (3, 5):
        if extras:
            raise ValueError(f"slide info v{version} has no page extras")
        return SlideInfo3.SIZE + 2 * pages
    raise ValueError(f"unsupported slide info version {version}")
