"""The narrower records phase 1 keeps in the scratch files (builder/fixup_facts.py): a fixup
record or a split seg entry read back is the one written, whether or not its values fit the
narrow form (then the full record is kept)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.builder.fixup_facts import (
    NARROW_FIXUP_DTYPE,
    NARROW_SPLIT_SEG_DTYPE,
    narrowed_fixups,
    narrowed_split_seg,
    widened_fixups,
    widened_split_seg,
)
from dyldcache.macho.fixups import FIXUP_DTYPE
from dyldcache.macho.split_seg import SPLIT_SEG_DTYPE, SPLIT_SEG_V1_DTYPE

_BASE = 0x1_8000_0000
_u64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(_BASE, _BASE + 2**32 + 5), st.just(0))


def _fixup(addr: int, target: int, addend: int, bind: int, seg: int, small: int) -> tuple[int, ...]:
    kind, key = small & 3, small >> 2 & 3
    return (addr, target, addend, bind, seg, small & 0xFFFF, kind, small >> 3 & 0xFF, key, small & 1, 0)


_record = st.builds(
    _fixup,
    st.one_of(st.integers(_BASE, _BASE + 2**32 - 1), _u64),
    _u64,
    st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1)),
    st.integers(-1, 2**31 - 1),
    st.one_of(st.integers(0, 255), st.integers(0, 2**16 - 1)),
    st.integers(0, 2**16 - 1),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_record, max_size=40))
def test_fixup_records_come_back_as_written(rows: list[tuple[int, ...]]) -> None:
    recs = np.array(rows, dtype=FIXUP_DTYPE)
    stored = narrowed_fixups(recs, _BASE)
    back = widened_fixups(stored.copy(), _BASE)
    assert back.dtype == FIXUP_DTYPE
    assert back.tobytes() == recs.tobytes()


def test_typical_fixups_are_stored_narrow() -> None:
    recs = np.zeros(3, dtype=FIXUP_DTYPE)
    recs["address"] = [_BASE + 0x4000, _BASE + 0x4008, _BASE + 0x4010]
    recs["target"] = [_BASE + 0x100, 0, _BASE + 0xFFFF_FFFE]
    recs["addend"] = [0, -8, 2**31 - 1]
    stored = narrowed_fixups(recs, _BASE)
    assert stored.dtype == NARROW_FIXUP_DTYPE and stored.itemsize < FIXUP_DTYPE.itemsize
    assert widened_fixups(stored, _BASE).tobytes() == recs.tobytes()


_entry = st.tuples(
    st.integers(0, 255),
    st.one_of(st.integers(0, 255), st.integers(0, 2**16 - 1)),
    st.one_of(st.integers(0, 255), st.integers(0, 2**16 - 1)),
    st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_entry, max_size=40))
def test_split_seg_entries_come_back_as_written(rows: list[tuple[int, ...]]) -> None:
    entries = np.array(rows, dtype=SPLIT_SEG_DTYPE)
    stored = narrowed_split_seg(entries)
    fits = all(r[1] <= 255 and r[2] <= 255 and r[3] < 2**32 and r[4] < 2**32 for r in rows)
    assert (stored.dtype == NARROW_SPLIT_SEG_DTYPE) == (fits and bool(rows))
    back = widened_split_seg(stored.copy())
    assert back.dtype == SPLIT_SEG_DTYPE and back.tobytes() == entries.tobytes()


def test_v1_entries_are_kept_as_they_are() -> None:
    v1 = np.array([(1, 0x40), (2, 0x1000)], dtype=SPLIT_SEG_V1_DTYPE)
    assert narrowed_split_seg(v1) is v1 and widened_split_seg(v1) is v1
