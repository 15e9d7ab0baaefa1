"""Reading a prefix trie (export trie, cache path trie) level by level with numpy.

The nodes of one depth are parsed together: terminal size, child count, then every edge of
every node at once (the k-th edge label of a node ends at the k-th NUL from the start of its
edges, since a well-formed child offset ULEB holds no NUL byte). The walk gives per node its
parent and label; pre-order ranks come from subtree sizes, and every terminal's key is gathered
from the labels on its path in one step.

This is the fast path only: on anything it does not expect (malformed data, but also unusual
well-formed data such as a padded ULEB or a very deep trie) it gives up and returns None, and
the caller walks the trie node by node, which names the problem exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .leb128 import uleb_values

#: below this many bytes (a few hundred keys) the node-by-node walk is faster: the numpy steps
#: cost about 0.25 ms a trie whatever its size, the walk about 0.6 us a node (measured on the
#: 0.5 GiB benchmark corpus, where 8 to 12 KiB come out even)
MIN_SIZE = 8 * 1024

#: more levels than this (real tries have a few tens at most) are left to the scalar walk
MAX_LEVELS = 128

#: longest ULEB read here: 9 bytes hold 63 bits, so values stay in int64
_MAX_ULEB = 9


@dataclass(slots=True)
class TrieTerminals:
    """The terminal nodes of a trie, in pre-order (children in stored order)."""

    #: the key of each terminal
    keys: list[bytes]
    #: start and end of each terminal's payload in the trie (int64)
    starts: np.ndarray
    ends: np.ndarray


@dataclass(slots=True)
class _Levels:
    """Per level (the root's first) the nodes found there, in discovery order."""

    #: global index of each node's parent (0, itself, for the root)
    parent: list[np.ndarray]
    #: index of each node among its parent's edges
    edge: list[np.ndarray]
    #: start and length of each node's edge label in the trie
    label_start: list[np.ndarray]
    label_len: list[np.ndarray]
    #: payload start (-1: not terminal) and end of each node
    payload_start: list[np.ndarray]
    payload_end: list[np.ndarray]


def read_terminals(buf: bytes, max_key_length: int) -> TrieTerminals | None:
    """The terminals of the trie ``buf`` (not empty), or None if it is not plainly well formed."""
    levels = _parse_levels(buf, max_key_length)
    if levels is None:
        return None
    order, parent = _preorder_terminals(levels)
    label_start = np.concatenate(levels.label_start)
    label_len = np.concatenate(levels.label_len)
    depth = len(levels.payload_start)
    # per terminal (rows) the labels on its path, the root's side first (shallower terminals
    # have the root's empty label in front), then a NUL byte of the trie (the child count of a
    # leaf, at least) to end the key: keys hold no NUL, so splitting at them parts the keys
    count = order.size
    if count * depth > 8 * len(buf) + (1 << 16):
        return None
    src = np.empty((count, depth + 1), dtype=np.int64)
    size = np.empty((count, depth + 1), dtype=np.int64)
    src[:, depth] = buf.find(b"\0")
    size[:, depth] = 1
    node = order
    for column in range(depth - 1, -1, -1):
        src[:, column] = label_start[node]
        size[:, column] = label_len[node]
        node = parent[node]
    flat_size = size.ravel()
    seg_end = np.cumsum(flat_size)
    total = int(seg_end[-1]) if seg_end.size else 0
    at = np.repeat(src.ravel() - (seg_end - flat_size), flat_size) + np.arange(total)
    keys = np.frombuffer(buf, dtype=np.uint8)[at].tobytes().split(b"\0")[:-1]
    payload_start = np.concatenate(levels.payload_start)
    payload_end = np.concatenate(levels.payload_end)
    return TrieTerminals(keys, payload_start[order], payload_end[order])


def _parse_levels(buf: bytes, max_key_length: int) -> _Levels | None:
    size = len(buf)
    raw = np.frombuffer(buf, dtype=np.uint8)
    # a ULEB ends at the first byte below 0x80 from its start; a label at the next NUL
    low = np.flatnonzero(raw < 0x80)
    nuls = np.flatnonzero(raw == 0)
    seen = np.zeros(size, dtype=bool)
    seen[0] = True
    found = 1
    root = np.zeros(1, dtype=np.int64)
    levels = _Levels([root], [root], [root], [root], [], [])
    nodes, key_len, base = root, root, 0
    while True:
        pos = nodes + 1
        term_size = raw[nodes].astype(np.int64)
        if int(term_size.max()) >= 0x80:
            long = np.flatnonzero(term_size >= 0x80)
            ends = _uleb_ends(low, nodes[long])
            if ends is None:
                return None
            term_size[long] = uleb_values(raw, nodes[long], ends - nodes[long])
            if int(term_size.max()) >= size:  # (so that the sums below cannot overflow)
                return None
            pos[long] = ends
        levels.payload_start.append(np.where(term_size > 0, pos, -1))
        pos += term_size
        levels.payload_end.append(pos)
        # the payload ends before the child count, which is inside the data
        if int(pos.max()) >= size:
            return None
        count = raw[pos]
        edges = int(count.sum())
        if not edges:
            return levels
        if len(levels.payload_start) >= MAX_LEVELS:
            return None
        owner = np.repeat(np.arange(nodes.size), count)
        first = np.cumsum(count, dtype=np.int64)
        first -= count
        edge = np.arange(edges) - first[owner]
        nul_index = np.searchsorted(nuls, pos + 1)[owner] + edge
        if int(nul_index.max()) >= nuls.size:
            return None
        label_end = nuls[nul_index]
        child_at = label_end + 1
        child_end = _uleb_ends(low, child_at)
        if child_end is None:
            return None
        # the first label of a node starts after its child count, the others after the
        # previous edge's child offset; each must end at or after its start
        label_start = np.empty(edges, dtype=np.int64)
        label_start[1:] = child_end[:-1]
        label_start[edge == 0] = pos[count > 0] + 1
        label_len = label_end - label_start
        children = uleb_values(raw, child_at, child_end - child_at)
        child_key_len = key_len[owner] + label_len
        if (
            int(label_len.min()) < 0
            or int(children.min()) == 0
            or int(children.max()) >= size
            or int(child_key_len.max()) > max_key_length
            or seen[children].any()
        ):
            return None
        seen[children] = True
        found += edges
        if np.count_nonzero(seen) != found:  # a node reached twice within this level
            return None
        levels.parent.append(owner + base)
        levels.edge.append(edge)
        levels.label_start.append(label_start)
        levels.label_len.append(label_len)
        base += nodes.size
        nodes, key_len = children, child_key_len


def _uleb_ends(low: np.ndarray, starts: np.ndarray) -> np.ndarray | None:
    """Where the ULEBs at ``starts`` end (one past their last byte); None if one runs past the
    data or is longer than the 63 bits read here."""
    index = np.searchsorted(low, starts)
    if int(index.max()) >= low.size:
        return None
    ends: np.ndarray = low[index] + 1
    if int((ends - starts).max()) > _MAX_ULEB:
        return None
    return ends


def _preorder_terminals(levels: _Levels) -> tuple[np.ndarray, np.ndarray]:
    """The global indices of the terminal nodes in pre-order, and every node's parent."""
    counts = [p.size for p in levels.parent]
    bases = np.cumsum([0, *counts]).tolist()
    # subtree sizes, deepest level first
    subtree = np.ones(bases[-1], dtype=np.int64)
    for d in range(len(counts) - 1, 0, -1):
        above, start, stop = bases[d - 1], bases[d], bases[d + 1]
        sums = np.bincount(levels.parent[d] - above, weights=subtree[start:stop], minlength=start - above)
        subtree[above:start] += sums.astype(np.int64)
    # a node's rank: its parent's, plus one, plus the subtrees of its earlier siblings
    rank = np.zeros(bases[-1], dtype=np.int64)
    for d in range(1, len(counts)):
        start, stop = bases[d], bases[d + 1]
        before = np.cumsum(subtree[start:stop])
        before -= subtree[start:stop]
        first_sibling = np.arange(stop - start) - levels.edge[d]
        rank[start:stop] = rank[levels.parent[d]] + 1 + before - before[first_sibling]
    terminal = np.flatnonzero(np.concatenate(levels.payload_start) >= 0)
    return terminal[np.argsort(rank[terminal])], np.concatenate(levels.parent)
