"""macho/jump_chains.py: walks by pointer doubling, against walking the same table one node at a time."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.macho.jump_chains import JumpTable, forward_reach


@st.composite
def _tables(draw: st.DrawFn) -> tuple[list[int], int]:
    """A forward jump table (each node jumps ahead or to the absorbing last node) and a ``top``."""
    size = draw(st.integers(1, 120))
    end = size  # the absorbing node
    table = []
    for node in range(size):
        ahead = draw(st.integers(1, 6) | st.integers(1, size))
        table.append(min(node + ahead, end) if draw(st.integers(0, 9)) else end)
    return [*table, end], draw(st.integers(0, 4))


def _walk(table: list[int], node: int, steps: int) -> tuple[list[int], int]:
    """The nodes of a walk of ``steps`` nodes (the end left out) and where it ends, one at a time."""
    seen = []
    for _ in range(steps):
        if node == len(table) - 1:
            break
        seen.append(node)
        node = table[node]
    return seen, node


@settings(max_examples=120, deadline=None)
@given(_tables(), st.data())
def test_walks_match_a_step_by_step_walk(case: tuple[list[int], int], data: st.DataObject) -> None:
    table, top = case
    jumps = JumpTable(np.array(table, dtype=np.int32), top)
    size = len(table)
    starts = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=6))
    steps = data.draw(st.lists(st.integers(0, 2 * size), min_size=len(starts), max_size=len(starts)))
    expected = [_walk(table, s, k) for s, k in zip(starts, steps, strict=True)]

    ends = jumps.advance(np.array(starts), np.array(steps))
    assert ends.tolist() == [end for _, end in expected]

    firsts, counts, walks = jumps.pieces(np.array(starts), np.array(steps))
    assert (counts <= 1 << top).all()
    nodes, piece = jumps.members(firsts, counts)
    got = [sorted(nodes[walks[piece] == w].tolist()) for w in range(len(starts))]
    assert got == [sorted(seen) for seen, _ in expected]

    for start, k, (seen, end) in zip(starts, steps, expected, strict=True):
        first, count, last = jumps.walk(start, k)
        one_nodes, _ = jumps.members(first, count)
        assert sorted(one_nodes.tolist()) == sorted(seen) and last == end
        if start != size - 1:
            whole, _ = _walk(table, start, size)
            assert jumps.last(start) == whole[-1]


@settings(max_examples=150, deadline=None)
@given(_tables(), st.data())
def test_forward_reach_matches_a_step_by_step_walk(case: tuple[list[int], int], data: st.DataObject) -> None:
    table, _ = case
    size = len(table)
    heads = data.draw(st.lists(st.integers(0, size - 2), max_size=6, unique=True)) if size > 1 else []
    visits = [0] * (size - 1)
    for head in heads:
        seen, _ = _walk(table, head, size)
        for node in seen:
            visits[node] += 1
    reached = [count > 0 for count in visits]
    twice = any(count > 1 for count in visits)
    array = np.array(table, dtype=np.int32)
    # with enough rounds it settles: the reached nodes, or None when a node is reached twice
    got = forward_reach(array, np.array(heads, dtype=np.int64), size + 1)
    if twice:
        assert got is None
    else:
        assert got is not None and got.tolist() == reached
    # with fewer rounds it may give up, but never answers wrongly
    few = forward_reach(array, np.array(heads, dtype=np.int64), data.draw(st.integers(1, 3)))
    assert few is None or (not twice and few.tolist() == reached)
