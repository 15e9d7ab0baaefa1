"""Walking many forward chains at once by pointer doubling, without a Python step per node.

A chain is a jump table over nodes ``0..N-1``: node ``x`` is followed by ``table[x]``. The last
node, :attr:`JumpTable.end`, is absorbing (``table[end] == end``) and stands for "the walk
stopped" (a chain end or a failure, as the caller defines it). The LINKEDIT decoders build such
tables for every position at once (split seg v2: where the record after a given position would
start; chained fixups: where the pointer at a slot says the next one is) and then need the nodes
of a few walks through them.

Level ``l`` of the table is the table applied ``2**l`` times (``levels[l+1] = levels[l][levels[l]]``).
Levels up to ``top`` are kept; a walk of ``k`` steps is cut into pieces of at most ``2**top``
steps (one vectorized step per piece over all walks), and the nodes of every piece are then
listed by halving the pieces level by level.

When the walks run to their ends, every jump goes forward and the nodes no walk passes seldom
lead into each other for long, :func:`forward_reach` finds the walked nodes without doubling.
"""

from __future__ import annotations

import numpy as np


def index_dtype(size: int) -> type[np.signedinteger]:
    """The narrowest signed integer type that holds node numbers below ``size``."""
    return np.int32 if size < 1 << 31 else np.int64


class JumpTable:
    """Powers of one jump table (see the module docstring)."""

    __slots__ = ("_levels", "end", "top")

    def __init__(self, table: np.ndarray, top: int) -> None:
        #: the absorbing node
        self.end = len(table) - 1
        #: the highest level kept (pieces have at most 2**top steps)
        self.top = top
        self._levels = [table]

    def level(self, index: int) -> np.ndarray:
        """The table applied ``2**index`` times (``index <= top``)."""
        while len(self._levels) <= index:
            last = self._levels[-1]
            self._levels.append(last.take(last))
        return self._levels[index]

    def advance(self, nodes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Where each walk from ``nodes`` is after ``steps`` steps (element-wise; any ``steps`` >= 0)."""
        x = np.asarray(nodes).astype(self._levels[0].dtype, copy=True)
        k = np.asarray(steps, dtype=np.int64)
        most = int(k.max()) if k.size else 0
        table = self._levels[0]
        if most <= 1 << self.top:
            # few steps (a kind group count): one step at a time, the walks with the most steps
            # first, so that each step is over a prefix (the end absorbs the walks that stop)
            # (a stable sort of small integers is a radix sort)
            order = np.argsort(k.astype(np.int8 if most < 1 << 7 else np.int64), kind="stable")[::-1]
            at = x[order]
            # the walks with more than ``step`` steps
            moving = k.size - np.cumsum(np.bincount(k, minlength=most + 1))
            for step in range(most):
                walks = int(moving[step])
                at[:walks] = table.take(at[:walks])
            x[order] = at
            return x
        # only the walks still moving are looked at
        todo = np.flatnonzero((k > 0) & (x != self.end))
        at, left = x[todo], k[todo]
        bit = 0
        while todo.size:
            table = self.level(bit) if bit <= self.top else table.take(table)
            now = np.flatnonzero(left & 1)
            at[now] = table.take(at[now])
            left >>= 1
            bit += 1
            done = (left == 0) | (at == self.end)
            if done.any():
                x[todo[done]] = at[done]
                busy = ~done
                todo, at, left = todo[busy], at[busy], left[busy]
        return x

    def pieces(self, nodes: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cut the walks of ``steps`` nodes from ``nodes`` into pieces of at most ``2**top`` nodes.

        Returns the first node of each piece, the number of nodes in it and the walk it belongs
        to. Pieces that start at :attr:`end` may be left out.
        """
        x = np.asarray(nodes).astype(self._levels[0].dtype, copy=True)
        k = np.asarray(steps, dtype=np.int64).copy()
        chunk = 1 << self.top
        firsts, counts, walks = [x.copy()], [np.minimum(k, chunk)], [np.arange(x.size)]
        live = np.flatnonzero((k > chunk) & (x != self.end))
        if live.size:
            top = self.level(self.top)
        while live.size:
            x[live] = top.take(x[live])
            k[live] -= chunk
            firsts.append(x[live])
            counts.append(np.minimum(k[live], chunk))
            walks.append(live)
            live = live[(k[live] > chunk) & (x[live] != self.end)]
        return np.concatenate(firsts), np.concatenate(counts), np.concatenate(walks)

    def walk(self, node: int, steps: int) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`pieces` of one walk, with one Python step a piece, and where the walk ends."""
        chunk = 1 << self.top
        top = self.level(self.top)
        firsts, left = [node], steps
        while left > chunk and node != self.end:
            node = int(top[node])
            left -= chunk
            firsts.append(node)
        counts = np.minimum(left + chunk * np.arange(len(firsts) - 1, -1, -1, dtype=np.int64), chunk)
        # the rest of the last piece, bit by bit
        for bit in range(min(left, chunk).bit_length()):
            if left >> bit & 1:
                node = int(self.level(bit)[node])
        return np.array(firsts, dtype=np.int64), counts, node

    def members(self, firsts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every node of the pieces from :meth:`pieces` (``counts`` at most ``2**top``) except
        :attr:`end`, and the index of the piece each comes from; in no particular order."""
        x = np.asarray(firsts)
        k = np.asarray(counts, dtype=np.int64)
        live = (k > 0) & (x != self.end)
        owner = np.flatnonzero(live)
        x, k = x[live], k[live]
        if not x.size:
            return x, owner
        # one row a piece, its nodes in order: the second half of every run of 2**(bit+1)
        # columns is level ``bit`` of the first, filled from the widest halves down
        width = 1 << int(k.max() - 1).bit_length()
        grid = np.empty((x.size, width), dtype=x.dtype)
        grid[:, 0] = x
        for bit in reversed(range(width.bit_length() - 1)):
            half = 1 << bit
            grid[:, half :: 2 * half] = self.level(bit).take(grid[:, :: 2 * half])
        keep = (np.arange(width) < k[:, None]) & (grid != self.end)
        return grid[keep], np.broadcast_to(owner[:, None], grid.shape)[keep]

    def last(self, node: int) -> int:
        """The last node before :attr:`end` on the walk from ``node`` (``node`` itself when its
        successor is the end; ``node`` must not be the end)."""
        top = self.level(self.top)
        while int(top[node]) != self.end:
            node = int(top[node])
        for bit in reversed(range(self.top)):
            after = int(self.level(bit)[node])
            if after != self.end:
                node = after
        return node


def forward_reach(table: np.ndarray, heads: np.ndarray, rounds: int) -> np.ndarray | None:
    """The nodes the walks from ``heads`` pass through (a bool mask over ``table`` without its
    absorbing last node), when every jump goes forward (``table[x] > x``) and no node is reached
    twice; None when that cannot be settled in ``rounds`` rounds or a node is reached twice.

    Without doubling: start from every node and, round by round, drop the nodes that are not a
    head and have no predecessor left. The reached nodes are never dropped; once a round drops
    nothing, every survivor is a head or has a surviving predecessor, so a survivor that no walk
    reaches would have an unreached survivor before it, down to a first one: there is none. The
    rounds needed are the length of the longest run of unreached nodes leading into each other,
    so this suits tables where such runs are short (a caller that knows nodes no walk can pass
    should make them stop the walk).
    """
    end = len(table) - 1
    is_head = np.zeros(end + 1, dtype=bool)
    is_head[heads] = True
    alive = np.ones(end + 1, dtype=bool)
    alive[end] = False
    live = end
    for _ in range(rounds):
        reached = is_head.copy()
        reached[table[alive]] = True
        alive &= reached
        alive[end] = False
        now = int(np.count_nonzero(alive))
        if now == live:
            break
        live = now
    else:
        return None
    # every survivor is a head or has a surviving predecessor, so each is reached once exactly
    # when the heads and the jumps of survivors that do not end add up to the survivors
    if int(np.count_nonzero(table[alive] != end)) + int(np.count_nonzero(is_head)) != live:
        return None
    return alive[:end]
