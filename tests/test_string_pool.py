"""The builder's string pool (builder/optimizers/string_pool.py) against the rule it implements:
adding strings one at a time to a dictionary, each new one appended with its NUL after the
empty string at offset 0, each repeated one getting its first offset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.builder.optimizers import string_pool
from dyldcache.builder.optimizers.string_pool import StringPool, keys_of, string_keys


def _reference(batches: list[list[bytes]]) -> tuple[bytes, list[list[int]]]:
    offsets: dict[bytes, int] = {b"": 0}
    out = bytearray(b"\0")
    got = []
    for batch in batches:
        row = []
        for s in batch:
            if s not in offsets:
                offsets[s] = len(out)
                out += s + b"\0"
            row.append(offsets[s])
        got.append(row)
    return bytes(out), got


_strings = st.binary(max_size=6).map(lambda b: b.replace(b"\0", b"."))
_batches = st.lists(st.lists(_strings, max_size=30), max_size=8)


@settings(max_examples=200, deadline=None)
@given(_batches)
def test_pool_equals_one_at_a_time(batches: list[list[bytes]]) -> None:
    pool = StringPool()
    got = [pool.add_many(b).tolist() for b in batches]
    want_bytes, want = _reference(batches)
    assert got == want
    assert pool.bytes() == want_bytes and pool.size == len(want_bytes)
    pool.freeze()
    assert pool.bytes() == want_bytes and pool.size == len(want_bytes)


def test_many_strings_grow_the_table() -> None:
    names = [f"_sym{i % 30011}_{i % 7}".encode() for i in range(120_000)]
    batches = [names[i : i + 5000] for i in range(0, len(names), 5000)]
    pool = StringPool()
    got = [pool.add_many(b).tolist() for b in batches]
    want_bytes, want = _reference(batches)
    assert got == want and pool.bytes() == want_bytes


@settings(max_examples=100, deadline=None)
@given(_batches)
def test_colliding_keys_still_give_a_correct_pool(batches: list[list[bytes]]) -> None:
    """Every string in few keys: strings sharing a key are told apart by their bytes. The pool
    may order strings differently then, but it holds each once and every offset names it."""
    pool = StringPool()
    for batch in batches:
        empty = int(keys_of([b""])[0])  # the empty string keeps its own key (it is at 0)
        weak = np.array([len(s) % 3 + 1 if s else empty for s in batch], dtype=np.uint64)
        offsets = pool.add_many(batch, weak).tolist()
        raw = pool.bytes()
        for s, o in zip(batch, offsets, strict=True):
            assert raw[o : o + len(s) + 1] == s + b"\0"
    distinct = {s for b in batches for s in b} | {b""}
    assert pool.size == sum(len(s) + 1 for s in distinct)


def test_keys_of_substrings_equal_keys_of_the_strings() -> None:
    table = b"\0_alpha\0_beta\0_alphabet\0_beta\0"
    arr = np.frombuffer(table, dtype=np.uint8)
    starts = np.array([1, 8, 14, 24, 0])
    ends = np.array([7, 13, 23, 29, 0])
    from_table = string_keys(arr, starts, ends)
    alone = keys_of([table[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)])
    assert from_table.tolist() == alone.tolist()
    assert from_table[1] == from_table[3]  # the same bytes, the same key
    assert len(set(from_table.tolist())) == 4


def test_frozen_pool_refuses_strings() -> None:
    pool = StringPool(("<redacted>",))
    assert pool.add(b"<redacted>") == 1
    pool.freeze()
    with pytest.raises(AssertionError):
        pool.add(b"x")
    assert string_pool.StringPool().bytes() == b"\0"


@settings(max_examples=150, deadline=None)
@given(st.lists(_strings, max_size=40), st.data())
def test_spans_of_a_table_equal_the_strings_themselves(strings: list[bytes], data: st.DataObject) -> None:
    """add_table (spans of a string table, as the symbol planner passes an input's strings) gives
    what adding the same strings one at a time gives, spans in any order, repeated or not."""
    table = b"\0" + b"".join(s + b"\0" for s in strings)
    starts, pos = [], 1
    for s in strings:
        starts.append(pos)
        pos += len(s) + 1
    picks = data.draw(st.lists(st.integers(0, max(len(strings) - 1, 0)), max_size=60)) if strings else []
    a = np.array([starts[i] for i in picks], dtype=np.int64)
    b = np.array([starts[i] + len(strings[i]) for i in picks], dtype=np.int64)
    pool = StringPool()
    got = pool.add_table(np.frombuffer(table, dtype=np.uint8), a, b).tolist()
    want_bytes, want = _reference([[strings[i] for i in picks]])
    assert got == want[0] and pool.bytes() == want_bytes


def test_keys_are_the_same_whether_the_powers_are_kept_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables longer than the kept powers compute their own: the keys do not depend on it."""
    names = [f"_name{i}".encode() for i in range(300)]
    table = np.frombuffer(b"\0".join(names) + b"\0", dtype=np.uint8)
    lengths = np.array([len(n) for n in names])
    ends = np.cumsum(lengths + 1) - 1
    want = keys_of(names).tolist()
    for kept in (1 << 22, 64):
        monkeypatch.setattr(string_pool, "_KEPT_POWERS", kept)
        monkeypatch.setattr(string_pool, "_POWERS", string_pool._Powers())
        assert string_keys(table, ends - lengths, ends).tolist() == want
        assert string_keys(table[:100], np.array([0]), np.array([6])).tolist() == keys_of([names[0]]).tolist()


def test_keys_crowding_the_table_end_wrap_around_also_when_it_grows() -> None:
    """Keys whose home is the table's last slot, now and after it doubles: placing them runs past
    the end to slot 0 and on, and so does moving them to the larger table. The offsets stay
    those of adding the strings one at a time."""
    top = 13  # the home is the top bits of key * _MIX: all ones at 12 bits and at 13
    mix_inverse = pow(int(string_pool._MIX), -1, 1 << 64)
    assert top > string_pool._FIRST_BITS
    crowd = [f"_crowd{i}".encode() for i in range(2000)]
    keys = np.array(
        [((((1 << top) - 1) << (64 - top) | i) * mix_inverse) % (1 << 64) for i in range(len(crowd))],
        dtype=np.uint64,
    )
    more = [f"_more{i}".encode() for i in range(150)]
    pool = StringPool()
    got = [
        pool.add_many(crowd, keys).tolist(),
        pool.add_many(more).tolist(),
        pool.add_many(crowd, keys).tolist(),
    ]
    want_bytes, want = _reference([crowd, more, crowd])
    assert got == want and pool.bytes() == want_bytes
