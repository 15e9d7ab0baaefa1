"""Slide info decoding: every pointer a mapping's slide info describes, walked out of the raw
bytes (``docs/cache-format.md`` §2; the encoders and the format's summary are in
:mod:`.slide_info`).

The chains of a blob are followed page by page in lockstep: one numpy step per chain link,
never one Python step per pointer. Every chain must stay inside its page and the mapping and
may not overlap another; a problem raises :class:`CacheFormatError` at an absolute file offset
inside the blob.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from ..errors import CacheFormatError
from .format import (
    DYLD_CACHE_SLIDE_PAGE_ATTR_END,
    DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA,
    DYLD_CACHE_SLIDE_PAGE_ATTR_NO_REBASE,
    DYLD_CACHE_SLIDE_PAGE_VALUE,
    SlideInfo1,
    SlideInfo2,
    SlideInfo3,
    SlideInfo5,
)
from .slide_info import CACHE_POINTER_DTYPE, byte_view, delta_mask_shift, page_count, words64

_U64 = np.uint64
_LOW56 = (1 << 56) - 1
#: mappings up to this size are decoded with a flag per 4 or 8 bytes (a quarter of the size at most)
_MARKED_WALK_LIMIT = 64 << 20


class _Ctx:
    """What a decoder needs to report a problem: the file, where the blob is, the mapping."""

    __slots__ = ("address", "base", "mapping_len", "path", "version")

    def __init__(self, path: str, base: int, address: int, mapping_len: int, version: int) -> None:
        self.path = path
        self.base = base
        self.address = address
        self.mapping_len = mapping_len
        self.version = version

    def error(self, blob_offset: int, message: str) -> CacheFormatError:
        return CacheFormatError(self.path, self.base + blob_offset, f"slide info v{self.version}: {message}")


def _read_header(ctx: _Ctx, blob: memoryview, cls: Any) -> Any:
    if len(blob) < cls.SIZE:
        raise ctx.error(0, f"header ({cls.SIZE} bytes) does not fit in the blob ({len(blob)} bytes)")
    return cls.unpack_from(blob, 0)


def _check_decode_page_size(ctx: _Ctx, page_size: int, count: int) -> None:
    if page_size < 0x400 or page_size > 0x10000 or page_size & (page_size - 1):
        raise ctx.error(4, f"page size {page_size:#x} is not a power of two in [0x400, 0x10000]")
    expected = page_count(ctx.mapping_len, page_size)
    if count != expected:
        raise ctx.error(
            8 if ctx.version in (3, 5) else 12,
            f"{count} page starts for a mapping of {ctx.mapping_len:#x} bytes "
            f"({expected} pages of {page_size:#x})",
        )


def _u16_array(ctx: _Ctx, blob: memoryview, offset: int, count: int, what: str, at: int) -> np.ndarray:
    if offset < 0 or offset + 2 * count > len(blob):
        raise ctx.error(
            at, f"{what} ({offset:#x}+{2 * count:#x}) extend past the end of the blob ({len(blob):#x})"
        )
    return np.frombuffer(blob, dtype="<u2", count=count, offset=offset)


def _walk(
    ctx: _Ctx,
    mapping: memoryview,
    starts: np.ndarray,
    page_end: np.ndarray,
    origin: np.ndarray,
    step: Any,
    *,
    stride: int,
    single: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Follow every chain at once; returns (pointer offsets, raw words) sorted by offset.

    ``starts`` are mapping offsets of each chain's first pointer (multiples of ``stride``, 4
    or 8), ``page_end`` where its page (or the mapping) ends, ``origin`` the blob offset of
    the entry that started it (for errors). ``step(raw)`` gives the distance to the next
    pointer in units of ``stride`` (0 ends the chain). Each link advances at least 8 bytes
    inside one page, so the loop runs at most page_size / 8 times. ``single``: the chains are
    in page order, one per page: they cannot overlap, and (in a mapping of up to
    _MARKED_WALK_LIMIT bytes) each pointer is marked in a flag per stride of the mapping, so
    that the flags give them sorted with no sort.
    """
    cur = starts.astype(np.int64)
    last = page_end.astype(np.int64) - 8  # the last offset a pointer of the chain may have
    bad = (cur < 0) | (cur > last)
    if bad.any():
        i = int(np.argmax(bad))
        raise ctx.error(
            int(origin[i]), f"chain starts at {ctx.address + int(cur[i]):#x}, outside its page or the mapping"
        )
    # the loop counts in strides: cur indexes the words, delta is what the chain holds
    shift = stride.bit_length() - 1
    if stride == 8:
        words = np.frombuffer(mapping, dtype="<u8", count=len(mapping) // 8)
    else:
        words = words64(mapping)
    cur, last = cur >> shift, last >> shift
    chain = np.arange(cur.size)
    marked = np.zeros(words.size, dtype=bool) if single and len(mapping) <= _MARKED_WALK_LIMIT else None
    visits: list[np.ndarray] = []
    while cur.size:
        raw = words[cur]
        if marked is not None:
            marked[cur] = True
        else:
            visits.append(cur)
        delta = step(raw).view(np.int64)
        nxt = cur + delta
        bad = nxt > last
        if stride < 8:
            bad |= delta == 1  # 4 bytes on: into the pointer itself
        if bad.any():
            _walk_error(ctx, origin[chain], cur << shift, delta << shift, nxt << shift, last << shift)
        live = np.count_nonzero(delta)
        if marked is not None and live > 0 and 2 * live >= delta.size:
            cur = nxt  # a chain that ended stays on its last pointer, marked again
        else:
            more = delta.nonzero()[0]
            cur, last, chain = nxt[more], last[more], chain[more]
    if marked is not None:
        slots = marked.nonzero()[0]
    else:
        slots = np.sort(np.concatenate(visits)) if visits else np.zeros(0, np.int64)
        if not single and slots.size > 1:
            close = (slots[1:] - slots[:-1]) << shift < 8
            if close.any():
                at = int(slots[1:][np.argmax(close)]) << shift
                raise ctx.error(0, f"chains overlap at {ctx.address + at:#x}")
    return slots.astype(np.int64) << shift, words[slots]


def _walk_error(
    ctx: _Ctx, origin: np.ndarray, cur: np.ndarray, delta: np.ndarray, nxt: np.ndarray, last: np.ndarray
) -> NoReturn:
    """The error of one step of :func:`_walk` (byte offsets): a link shorter than a pointer
    first, else the first chain leaving its page."""
    short = (delta > 0) & (delta < 8)
    if short.any():
        i = int(np.argmax(short))
        raise ctx.error(
            int(origin[i]),
            f"pointer at {ctx.address + int(cur[i]):#x} links {int(delta[i])} bytes on, into itself",
        )
    i = int(np.argmax(nxt > last))
    raise ctx.error(int(origin[i]), f"chain leaves its page at {ctx.address + int(nxt[i]):#x}")


def _result(off: np.ndarray, target: np.ndarray, **fields: np.ndarray) -> np.ndarray:
    """The pointers (sorted by offset) as one CACHE_POINTER_DTYPE array."""
    out = np.zeros(off.size, dtype=CACHE_POINTER_DTYPE)
    out["offset"] = off
    out["target"] = target
    for name, values in fields.items():
        out[name] = values
    return out


def _words(mapping: memoryview) -> np.ndarray:
    return np.frombuffer(mapping, dtype="<u4", count=len(mapping) // 4)


def _page_ends(pages: np.ndarray, page_size: int, mapping_len: int) -> np.ndarray:
    return np.minimum((pages.astype(np.int64) + 1) * page_size, mapping_len)


def _decode_v1(ctx: _Ctx, blob: memoryview, mapping: memoryview) -> np.ndarray:
    h = _read_header(ctx, blob, SlideInfo1)
    if h.entries_size != 128:
        raise ctx.error(20, f"entries_size {h.entries_size} is not 128")
    expected = page_count(ctx.mapping_len, 4096)
    if h.toc_count != expected:
        raise ctx.error(
            8, f"{h.toc_count} toc entries for a mapping of {ctx.mapping_len:#x} bytes ({expected} pages)"
        )
    toc = _u16_array(ctx, blob, h.toc_offset, h.toc_count, "toc", 4).astype(np.intp)
    if h.entries_offset + 128 * h.entries_count > len(blob):
        raise ctx.error(
            12, f"bitmaps ({h.entries_offset:#x}+{128 * h.entries_count:#x}) extend past the blob"
        )
    if toc.size and int(toc.max()) >= h.entries_count:
        page = int(np.flatnonzero(toc >= h.entries_count)[0])
        raise ctx.error(
            h.toc_offset + 2 * page, f"page {page} uses bitmap {int(toc[page])} of {h.entries_count}"
        )
    bitmaps = np.frombuffer(blob, dtype=np.uint8, count=128 * h.entries_count, offset=h.entries_offset)
    # unpack each distinct bitmap once, then give every page the word indexes of its bitmap
    bits = np.unpackbits(bitmaps.reshape(-1, 128), axis=1, bitorder="little")
    per_entry = bits.sum(axis=1, dtype=np.int64)
    word = np.nonzero(bits)[1].astype(np.int64)  # grouped by bitmap, ascending within each
    entry_first = np.cumsum(per_entry) - per_entry
    counts = per_entry[toc]
    total = int(counts.sum())
    page_first = np.cumsum(counts) - counts
    idx = np.repeat(entry_first[toc] - page_first, counts) + np.arange(total)
    off = np.repeat(np.arange(toc.size, dtype=np.int64), counts) * 4096 + word[idx] * 4
    bad = off + 4 > ctx.mapping_len
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ctx.error(
            h.toc_offset + 2 * (int(off[i]) // 4096),
            f"bitmap marks {ctx.address + int(off[i]):#x}, past the mapping",
        )
    target = _words(mapping)[off >> 2].astype(_U64)
    return _result(off, target)  # in page and word order: sorted


def _decode_v2(ctx: _Ctx, blob: memoryview, mapping: memoryview, null_links: bool) -> np.ndarray:
    h = _read_header(ctx, blob, SlideInfo2)
    _check_decode_page_size(ctx, h.page_size, h.page_starts_count)
    try:
        shift = delta_mask_shift(h.delta_mask)
    except ValueError as exc:
        raise ctx.error(24, str(exc)) from None
    starts = _u16_array(ctx, blob, h.page_starts_offset, h.page_starts_count, "page starts", 8).astype(
        np.int64
    )
    extras = (
        _u16_array(ctx, blob, h.page_extras_offset, h.page_extras_count, "page extras", 16).astype(np.int64)
        if h.page_extras_count
        else np.zeros(0, np.int64)
    )
    pages = np.arange(starts.size, dtype=np.int64)
    plain = (starts != DYLD_CACHE_SLIDE_PAGE_ATTR_NO_REBASE) & (
        (starts & DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA) == 0
    )
    chain_page = [pages[plain]]
    chain_start = [starts[plain] * 4]
    chain_origin = [h.page_starts_offset + 2 * pages[plain]]
    with_extras = np.flatnonzero((starts & DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA) != 0)
    if with_extras.size:
        first = starts[with_extras] & DYLD_CACHE_SLIDE_PAGE_VALUE
        ends = np.flatnonzero(extras & DYLD_CACHE_SLIDE_PAGE_ATTR_END)
        pos = np.searchsorted(ends, first)
        bad = (first >= extras.size) | (pos >= ends.size)
        if bad.any():
            pg = int(with_extras[np.flatnonzero(bad)[0]])
            raise ctx.error(
                h.page_starts_offset + 2 * pg, f"page {pg}'s extras run off the end of page_extras"
            )
        last = ends[pos]
        counts = last - first + 1
        # chains may not overlap, so no mapping can hold more chains than pointer slots
        if int(counts.sum()) > ctx.mapping_len // 8:
            raise ctx.error(
                h.page_starts_offset,
                f"page extras describe {int(counts.sum())} chains, more than the mapping can hold",
            )
        total = int(counts.sum())
        idx = np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(total)
        chain_page.append(np.repeat(with_extras, counts))
        chain_start.append((extras[idx] & DYLD_CACHE_SLIDE_PAGE_VALUE) * 4)
        chain_origin.append(h.page_extras_offset + 2 * idx)
    cp = np.concatenate(chain_page)
    begin = cp * h.page_size + np.concatenate(chain_start)
    ends_ = _page_ends(cp, h.page_size, ctx.mapping_len)
    # a start past its page cannot be told apart from a chain leaving it: both are errors
    bad = np.concatenate(chain_start) >= h.page_size
    origin = np.concatenate(chain_origin)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ctx.error(
            int(origin[i]),
            f"chain start {int(np.concatenate(chain_start)[i]):#x} is outside page {int(cp[i])}",
        )
    mask = _U64(h.delta_mask)
    dshift = _U64(shift)
    off, raw = _walk(
        ctx,
        mapping,
        begin,
        ends_,
        origin,
        lambda r: (r & mask) >> dshift,
        stride=4,
        single=not with_extras.size,  # the chains of pages without extras, in page order
    )
    value = raw & ~mask
    keep = value != 0  # zero links are in the chain but never slid
    if keep.all():
        target = (value & _U64(_LOW56)) + _U64(h.value_add)
    else:
        target = np.where(keep, (value & _U64(_LOW56)) + _U64(h.value_add), _U64(0))
        if not null_links:
            value, target, off = value[keep], target[keep], off[keep]
    return _result(off, target, high8=(value >> _U64(56)).astype(np.uint8))


def _decode_v3_or_v5(ctx: _Ctx, blob: memoryview, mapping: memoryview) -> np.ndarray:
    cls = SlideInfo3 if ctx.version == 3 else SlideInfo5
    h = _read_header(ctx, blob, cls)
    _check_decode_page_size(ctx, h.page_size, h.page_starts_count)
    starts = _u16_array(ctx, blob, cls.SIZE, h.page_starts_count, "page starts", 8).astype(np.int64)
    pages = np.flatnonzero(starts != 0xFFFF)
    begin_in_page = starts[pages]
    origin = cls.SIZE + 2 * pages
    bad = (begin_in_page % 8 != 0) | (begin_in_page >= h.page_size)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ctx.error(
            int(origin[i]),
            f"page {int(pages[i])} start {int(begin_in_page[i]):#x} is unaligned or outside the page",
        )
    begin = pages * h.page_size + begin_in_page
    next_shift = _U64(51 if ctx.version == 3 else 52)
    off, raw = _walk(
        ctx,
        mapping,
        begin,
        _page_ends(pages, h.page_size, ctx.mapping_len),
        origin,
        lambda r: (r >> next_shift) & _U64(0x7FF),
        stride=8,
        single=True,  # one chain per page, in page order
    )
    auth = (raw >> _U64(63)).astype(np.uint8)
    is_auth = auth != 0
    if ctx.version == 3:
        bind = (raw >> _U64(62)) & _U64(1) != 0
        if bind.any():
            i = int(np.flatnonzero(bind)[0])
            raise ctx.error(0, f"pointer at {ctx.address + int(off[i]):#x} has bit 62 (bind) set")
        v51 = raw & _U64((1 << 51) - 1)
        target = np.where(
            is_auth, (raw & _U64(0xFFFFFFFF)) + _U64(h.auth_value_add), v51 & _U64((1 << 43) - 1)
        )
        high8 = np.where(is_auth, _U64(0), (v51 >> _U64(43)) & _U64(0xFF))
        diversity = np.where(is_auth, (raw >> _U64(32)) & _U64(0xFFFF), _U64(0))
        addr_div = np.where(is_auth, (raw >> _U64(48)) & _U64(1), _U64(0))
        key = np.where(is_auth, (raw >> _U64(49)) & _U64(3), _U64(0))
    else:
        target = (raw & _U64((1 << 34) - 1)) + _U64(h.value_add)
        high8 = np.where(is_auth, _U64(0), (raw >> _U64(34)) & _U64(0xFF))
        diversity = np.where(is_auth, (raw >> _U64(34)) & _U64(0xFFFF), _U64(0))
        addr_div = np.where(is_auth, (raw >> _U64(50)) & _U64(1), _U64(0))
        key = np.where(is_auth, ((raw >> _U64(51)) & _U64(1)) * _U64(2), _U64(0))
    return _result(
        off,
        target,
        high8=high8.astype(np.uint8),
        auth=auth,
        key=key.astype(np.uint8),
        addr_div=addr_div.astype(np.uint8),
        diversity=diversity.astype(np.uint16),
    )


def decode_slide_info(
    blob: bytes | memoryview,
    mapping_bytes: bytes | memoryview,
    mapping_address: int,
    path: str,
    base_offset: int,
    *,
    null_links: bool = False,
) -> tuple[int, np.ndarray]:
    """Every pointer a slide info blob describes: (version, CACHE_POINTER_DTYPE array by offset).

    ``blob`` is the slide info (at file offset ``base_offset`` of ``path``), ``mapping_bytes``
    the mapping it describes, which starts at ``mapping_address``. The chains are walked in the
    raw bytes; every chain must stay inside its page and the mapping and may not overlap
    another. Zero-valued v2 links (never slid) are reported (with target 0) only with
    ``null_links``: whoever rewrites the chains as plain pointers must clear them too. Problems raise
    :class:`CacheFormatError` at an absolute file offset inside the blob.
    """
    blob_mv = byte_view(blob)
    mapping = byte_view(mapping_bytes)
    if len(blob_mv) < 4:
        raise CacheFormatError(
            path, base_offset, f"slide info ({len(blob_mv)} bytes) is too short for a version"
        )
    version = int.from_bytes(blob_mv[:4], "little")
    ctx = _Ctx(path, base_offset, mapping_address, len(mapping), version)
    if version == 1:
        return 1, _decode_v1(ctx, blob_mv, mapping)
    if version == 2:
        return 2, _decode_v2(ctx, blob_mv, mapping, null_links)
    if version in (3, 5):
        return version, _decode_v3_or_v5(ctx, blob_mv, mapping)
    raise CacheFormatError(path, base_offset, f"unsupported slide info version {version}")
