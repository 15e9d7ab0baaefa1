"""The export trie (LC_DYLD_EXPORTS_TRIE / dyld_info export_off) and the generic prefix trie it is built on.

Format (``<mach-o/loader.h>``, "export trie" comment): a tree of nodes, the root at offset 0.
Each node is::

    ULEB   terminal size (0: the node ends no key)
    bytes  terminal payload (terminal size bytes)
    u8     child count
    child count times:  NUL-terminated edge label, ULEB offset of the child node from the trie start

A key is the concatenation of the edge labels from the root. The dyld shared cache uses the same
trie for its dylib-path lookup table, with a different payload; exports use::

    ULEB flags (EXPORT_SYMBOL_FLAGS_*)
    REEXPORT:           ULEB dylib ordinal, C string import name ("" = same name)
    STUB_AND_RESOLVER:  ULEB stub offset, ULEB resolver offset
    otherwise:          ULEB address (offset from the mach header; absolute value for ABSOLUTE)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..byteviews import words_at
from ..errors import MachOFormatError
from . import constants as C
from .leb128 import Cursor, uleb_decode, uleb_encode, uleb_encode_array, uleb_sizes
from .trie_levels import MIN_SIZE, TrieTerminals, read_terminals

#: longest key accepted from a file. Real keys are symbol names or install names (C++ and Swift
#: names reach a few KB); the limit also bounds the depth, since every edge label is non-empty.
MAX_KEY_LENGTH = 16384

_U64_MAX = (1 << 64) - 1

#: bytes the trie writer copies per vectorized step
COPY_STEP = 1 << 20


def _walk_trie(
    data: bytes | memoryview, path: str, base_offset: int
) -> tuple[list[bytes], list[int], list[int]]:
    """The key, payload start and payload end of every terminal node, in pre-order.

    Iterative with an explicit stack, and each node may be reached once only, so a malformed
    trie (loops, shared nodes, huge offsets) costs at most one visit per byte of input.
    """
    buf = bytes(data)
    size = len(buf)
    keys: list[bytes] = []
    starts: list[int] = []
    ends: list[int] = []
    if size == 0:
        return keys, starts, ends

    def error(pos: int, message: str) -> MachOFormatError:
        return MachOFormatError(path, base_offset + pos, f"export trie: {message}")

    def uleb(pos: int) -> tuple[int, int]:
        try:
            return uleb_decode(buf, pos)
        except ValueError as exc:
            raise error(pos, str(exc)) from None

    find = buf.find
    add_key, add_start, add_end = keys.append, starts.append, ends.append
    visited = bytearray(size)
    visited[0] = 1
    stack: list[tuple[int, bytes]] = [(0, b"")]
    pop, push = stack.pop, stack.append
    while stack:
        node, key = pop()
        # every node offset is inside the data; one-byte terminal sizes (nearly all) are read inline
        term_size = buf[node]
        pos = node + 1
        if term_size >= 0x80:
            term_size, pos = uleb(node)
        if term_size:
            end = pos + term_size
            if end > size:
                raise error(
                    node, f"terminal payload of {term_size} bytes runs past the end of the trie ({size:#x})"
                )
            add_key(key)
            add_start(pos)
            add_end(end)
            pos = end
        if pos >= size:
            raise error(pos, "node's child count is past the end of the trie")
        count = buf[pos]
        pos += 1
        # children are pushed last first, so the first child is popped first: pre-order, in
        # stored order
        first = len(stack)
        for _ in range(count):
            label_end = find(b"\0", pos)
            if label_end < 0:
                raise error(pos, "edge label is not NUL-terminated")
            # ld64 before ~2019 wrote an empty label for a symbol that is also a prefix of
            # others (llvm-objdump and dyld accept it): the child's key is the parent's
            child_key = key + buf[pos:label_end]
            if len(child_key) > MAX_KEY_LENGTH:
                raise error(pos, f"key longer than {MAX_KEY_LENGTH} bytes")
            pos = label_end + 1
            # offsets below 16 KiB (most) are read inline, the rest by uleb, which checks them
            child = buf[pos] if pos < size else 0x80
            if child < 0x80:
                pos += 1
            else:
                high = buf[pos + 1] if pos + 1 < size else 0x80
                if high < 0x80:
                    child = child & 0x7F | high << 7
                    pos += 2
                else:
                    child, pos = uleb(label_end + 1)
            if child == 0 or child >= size:
                raise error(
                    label_end + 1, f"child node offset {child:#x} is outside the trie (size {size:#x})"
                )
            if visited[child]:
                raise error(label_end + 1, f"node {child:#x} is reached twice (loop or shared node)")
            visited[child] = 1
            push((child, child_key))
        if count > 1:
            stack[first:] = stack[first:][::-1]
    return keys, starts, ends


def _terminals(buf: bytes, path: str, base_offset: int) -> TrieTerminals:
    """The terminals of a trie: read level by level with numpy when it is large, or, when it
    is small or that finds anything unusual, node by node by :func:`_walk_trie`, which names
    any problem."""
    if len(buf) >= MIN_SIZE:
        found = read_terminals(buf, MAX_KEY_LENGTH)
        if found is not None:
            return found
    keys, starts, ends = _walk_trie(buf, path, base_offset)
    return TrieTerminals(keys, np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64))


def read_trie(data: bytes | memoryview, path: str, base_offset: int) -> list[tuple[bytes, bytes]]:
    """(key, terminal payload) for every terminal node, in pre-order.

    ``base_offset`` is the file offset of ``data[0]``; errors name absolute file offsets.
    """
    buf = bytes(data)
    found = _terminals(buf, path, base_offset)
    spans = zip(found.keys, found.starts.tolist(), found.ends.tolist(), strict=True)
    return [(key, buf[start:end]) for key, start, end in spans]


#: one node of a trie as :func:`trie_nodes` gives it: the index of the key that ends at it (-1:
#: none), its parent (-1: the root) and its edge label, bytes ``label_from`` to ``label_from +
#: label_len`` of key ``label_key`` (the root has an empty one). 20 bytes a node, so that the
#: cache builder can keep a shape between phases (builder/rebuilt_exports.py).
TRIE_NODE_DTYPE = np.dtype(
    [
        ("terminal", "<i4"),
        ("parent", "<i4"),
        ("label_key", "<i4"),
        ("label_from", "<i4"),
        ("label_len", "<i4"),
    ]
)


def trie_nodes(keys: Sequence[bytes]) -> np.ndarray:
    """The nodes of the trie of ``keys`` (TRIE_NODE_DTYPE), in pre-order with children in byte
    order of their labels; the root first, and every other node after its parent.

    Built from the sorted keys without a step per key (:func:`_sorted_keys_tree`).
    Raises ValueError for a duplicate key or one that contains NUL.
    """
    if not keys:
        root = np.zeros(1, dtype=TRIE_NODE_DTYPE)
        root["terminal"] = root["parent"] = -1
        return root
    ordered = sorted(keys)
    # per sorted key, its index in keys (a linker writes its trie in key order, so the keys
    # of an export trie come sorted)
    if ordered == keys:
        key_of = np.arange(len(keys), dtype=np.int64)
    else:
        key_of = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    joined = b"".join(ordered)
    if b"\0" in joined:
        bad = next(k for k in keys if b"\0" in k)
        raise ValueError(f"trie key {bad!r} contains a NUL byte")
    key_len = np.fromiter(map(len, ordered), dtype=np.int64, count=len(ordered))
    common = _common_prefixes(key_len, joined)
    # sorted order puts a key's extensions after it: a key as long as its common prefix with
    # the key before it is that key again
    same = np.flatnonzero(common[1:] == key_len[1:])
    if same.size:
        raise ValueError(f"duplicate trie key {ordered[int(same[0]) + 1]!r}")
    depth, first, parent = _sorted_keys_tree(key_len, common)
    nodes = np.zeros(depth.size, dtype=TRIE_NODE_DTYPE)
    # a node is a key's when it is as long as the first key through it
    ends = depth == key_len[first]
    nodes["terminal"] = -1
    nodes["terminal"][ends] = key_of[first[ends]]
    nodes["parent"] = parent
    # a node's label is what the first key through it holds past its parent
    nodes["label_key"] = key_of[first]
    nodes["label_from"][1:] = depth[parent[1:]]
    nodes["label_len"][1:] = depth[1:] - depth[parent[1:]]
    return nodes


class TrieShape:
    """The node structure of a trie for a fixed set of keys.

    Nodes are in pre-order with children in byte order of their labels. Encoding payloads
    into a shape is cheap, so one shape can serve several encodings of the same keys (the
    cache builder sizes a dylib's export trie in phase 1, keeps its nodes, and writes it with
    final addresses in phase 3). Node arrays below are in pre-order; node 0 is the root.

    The payloads of an encoding are per *entry*: key ``i`` is entry ``i``, or, for a shape
    made by :meth:`of_nodes`, whatever entry the nodes name (entries no node names are left out).
    """

    __slots__ = (
        "_child_order",
        "_empty",
        "_fixed",
        "_key_bytes",
        "_key_ends",
        "_label_len",
        "_label_src",
        "_parent",
        "_terminal",
        "entries",
    )

    def __init__(self, keys: Iterable[bytes]) -> None:
        listed = list(map(bytes, keys))
        key_ends = np.cumsum(np.fromiter(map(len, listed), dtype=np.int64, count=len(listed)))
        self._build(trie_nodes(listed), np.frombuffer(b"".join(listed), dtype=np.uint8), key_ends)

    @classmethod
    def of_nodes(cls, nodes: np.ndarray, key_bytes: np.ndarray, key_ends: np.ndarray) -> TrieShape:
        """The shape of :func:`trie_nodes` ``nodes``, whose entries are keys that lie one after
        the other in ``key_bytes`` (uint8): entry ``i`` ends at ``key_ends[i]``."""
        shape = cls.__new__(cls)
        shape._build(nodes, key_bytes, key_ends)
        return shape

    def _build(self, nodes: np.ndarray, key_bytes: np.ndarray, key_ends: np.ndarray) -> None:
        self._key_bytes = key_bytes
        self._key_ends = key_ends
        self.entries = key_ends.size
        #: per node: the entry whose payload it holds, or -1
        self._terminal = nodes["terminal"].astype(np.int64)
        self._empty = not bool(np.any(self._terminal >= 0))
        #: per node but the root: its parent
        self._parent = nodes["parent"][1:].astype(np.int64)
        #: per node but the root: its edge label, as a range of ``_key_bytes``
        self._label_len = nodes["label_len"][1:].astype(np.int64)
        label_key = nodes["label_key"][1:].astype(np.int64)
        self._label_src = (key_ends - _lengths(key_ends))[label_key] + nodes["label_from"][1:]
        #: the nodes but the root grouped by parent (children in order within a group)
        self._child_order = np.argsort(self._parent, kind="stable") + 1
        #: bytes of a node that do not depend on payloads or offsets: child count, labels, NULs
        self._fixed = 1 + _sum_by_parent(self._parent, self._label_len + 1, self._terminal.size)

    def _key(self, entry: int) -> bytes:
        start = int(self._key_ends[entry - 1]) if entry else 0
        return self._key_bytes[start : int(self._key_ends[entry])].tobytes()

    def encode(self, payloads: list[bytes]) -> bytes:
        """The trie with ``payloads[i]`` as the terminal payload of entry ``i``."""
        if len(payloads) != self.entries:
            raise ValueError(f"{len(payloads)} payloads for {self.entries} keys")
        if self._empty:
            return b""
        sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
        return self.encode_packed(np.frombuffer(b"".join(payloads), dtype=np.uint8), sizes)

    def size(self, payload_sizes: np.ndarray) -> int:
        """Length of :meth:`encode_packed`'s result for payloads of these sizes."""
        if self._empty:
            return 0
        offsets, node_size, _ = self._layout(payload_sizes)
        return int(offsets[-1] + node_size[-1])

    def encode_packed(self, payload_bytes: np.ndarray, payload_sizes: np.ndarray) -> bytes:
        """:meth:`encode` with the payloads concatenated in entry order: ``payload_sizes[i]``
        bytes of ``payload_bytes`` (uint8) for entry ``i``."""
        if self._empty:
            return b""
        offsets, node_size, child_uleb = self._layout(payload_sizes)
        out = np.zeros(int(offsets[-1] + node_size[-1]), dtype=np.uint8)
        terminal = self._terminal
        # terminal nodes: ULEB payload size, payload (a node with no entry has a 0 there)
        nodes = np.flatnonzero(terminal >= 0)
        keys = terminal[nodes]
        sizes = payload_sizes[keys]
        size_len = uleb_sizes(sizes)
        _copy_ranges(out, offsets[nodes], uleb_encode_array(sizes, size_len), _starts(size_len), size_len)
        payload_start = _starts(payload_sizes)
        _copy_ranges(out, offsets[nodes] + size_len, payload_bytes, payload_start[keys], sizes)
        count_at = offsets + 1
        count_at[nodes] += size_len + sizes - 1
        # edges are keyed by their first byte, never NUL: at most 255 children
        out[count_at] = np.bincount(self._parent, minlength=offsets.size)
        # each child, grouped by parent: label, NUL, ULEB offset of the child
        kids = self._child_order
        label_len = self._label_len[kids - 1]
        kid_uleb = child_uleb[kids - 1]
        entry = label_len + 1 + kid_uleb
        before = np.cumsum(entry) - entry
        owner = self._parent[kids - 1]
        group_start = np.ones(kids.size, dtype=bool)
        group_start[1:] = owner[1:] != owner[:-1]
        before -= np.maximum.accumulate(np.where(group_start, before, 0))
        entry_at = count_at[owner] + 1 + before
        _copy_ranges(out, entry_at, self._key_bytes, self._label_src[kids - 1], label_len)
        _copy_ranges(
            out,
            entry_at + label_len + 1,
            uleb_encode_array(offsets[kids], kid_uleb),
            _starts(kid_uleb),
            kid_uleb,
        )
        return out.tobytes()

    def _layout(self, payload_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per node: offset and size; per node but the root: ULEB length of its offset."""
        if payload_sizes.size != self.entries:
            raise ValueError(f"{payload_sizes.size} payloads for {self.entries} keys")
        terminal = self._terminal
        is_terminal = terminal >= 0
        sizes = payload_sizes[terminal[is_terminal]]
        if not sizes.all():
            key = self._key(int(terminal[is_terminal][np.argmin(sizes != 0)]))
            raise ValueError(f"trie key {key!r} has an empty payload")
        head = np.ones(terminal.size, dtype=np.int64)
        head[is_terminal] = uleb_sizes(sizes) + sizes
        base = head + self._fixed
        offsets = np.zeros(terminal.size, dtype=np.int64)
        # offsets only grow from one pass to the next (a larger offset never shrinks a ULEB),
        # so this reaches a fixed point, in practice after two or three passes
        while True:
            child_uleb = uleb_sizes(offsets[1:])
            node_size = base + _sum_by_parent(self._parent, child_uleb, terminal.size)
            new = _starts(node_size)
            if np.array_equal(new, offsets):
                return offsets, node_size, child_uleb
            offsets = new


def _sorted_keys_tree(key_len: np.ndarray, common: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nodes of the trie of sorted, distinct keys of lengths ``key_len``, ``common[i]``
    the length of the common prefix of keys ``i - 1`` and ``i`` (``common[0]`` is 0): per
    node its depth, the first key through it and its parent, in pre-order (the root first).

    A node (the root, a key, or the common prefix of keys adjacent in sorted order) is named
    by (first key through it, depth); sorted so, nodes are in pre-order (a prefix, then its
    children in byte order). A key that is not a prefix of the next is a leaf (key, its
    length); the common prefix of keys ``i - 1`` and ``i`` is the node (``p``,
    ``common[i]``), ``p`` the last key before ``i`` with a shorter common prefix than
    ``common[i]``: the keys through a node are a run whose inner common prefixes are at
    least its depth. A node's parent is as deep as the longer of the common prefixes at the
    two ends of that run (the keys just outside it), and its first key is the node's, unless
    that prefix is the one at the run's start; then it is the first key of that prefix's node.
    """
    # past the last key: a common prefix of 0 (the root's run ends there)
    after = np.append(common, 0)
    before, past = _nearest_smaller(common)
    # the common prefixes of adjacent keys (but the root), then the keys that are leaves
    inner = np.flatnonzero(common > 0)
    leaves = np.flatnonzero(key_len > after[1:])
    depth = np.concatenate((common[inner], key_len[leaves]))
    first = np.concatenate((before[inner], leaves))
    run_end = np.concatenate((past[inner], leaves + 1))
    up_depth = np.maximum(common[first], after[run_end])
    up_first = np.where(up_depth > common[first], first, np.maximum(before[first], 0))
    stride = int(key_len.max()) + 1
    # the root is (0, 0) and no other node: a key of length 0 can only be the first, the root's
    names, made = np.unique(np.append(0, first * stride + depth), return_index=True)
    up = up_first[made[1:] - 1] * stride + up_depth[made[1:] - 1]
    parent = np.empty(names.size, dtype=np.int64)
    parent[0] = -1
    parent[1:] = np.searchsorted(names, up)
    return names % stride, names // stride, parent


def _nearest_smaller(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per index of ``values`` (int64, none negative): the nearest index before it with a
    smaller value (-1: none) and the nearest after it (``values.size``: none). One search
    serves both, in -1, the values, -1, the values reversed (every search stops at a -1).
    """
    count = values.size
    edge = np.full(1, -1, dtype=np.int64)
    found = _previous_smaller(np.concatenate((edge, values, edge, values[::-1])))
    return found[1 : count + 1] - 1, 2 * count + 1 - found[: count + 1 : -1]


def _previous_smaller(values: np.ndarray) -> np.ndarray:
    """Per index: the nearest index before it with a smaller value, given that no value is
    smaller than the first (what it gives for an index whose value is the first's is meaningless).
    Binary lifting over a sparse table of range minima: ``minima[j][k]`` is the least of
    ``values[k : k + 2**j]``; from each index, runs of ``2**j`` values that are all at least
    its own are skipped, longest first, so that the index left is just past the answer (a run
    that would start before the first value holds the first, and is never skipped).
    """
    minima = [values]
    while 1 << len(minima) <= values.size:
        half = 1 << (len(minima) - 1)
        minima.append(np.minimum(minima[-1][:-half], minima[-1][half:]))
    # per index, where the run of values at least as large as its own, before it, starts
    start = np.arange(values.size)
    for level in reversed(range(len(minima))):
        jump = start - (1 << level)
        fits = minima[level][np.maximum(jump, 0)] >= values
        start = np.where(fits, jump, start)
    found: np.ndarray = start - 1
    return found


def _common_prefixes(lengths: np.ndarray, joined: bytes) -> np.ndarray:
    """Per key: the length of its common prefix with the key before it (0 for the first);
    ``joined`` holds the keys one after the other, ``lengths`` their lengths.

    Vectorized 8 bytes at a time: the word at any offset of the keys, read little-endian, so
    that in the XOR of two words the first byte that differs holds the lowest bit set, which
    ``x & -x`` keeps alone: a power of two, which a float holds exactly.
    """
    count = lengths.size
    starts = np.cumsum(lengths) - lengths
    padded = joined + bytes(8)
    words = words_at(padded)
    limit = np.minimum(lengths[1:], lengths[:-1])
    out = np.zeros(count, dtype=np.int64)
    todo = np.flatnonzero(limit > 0)
    at = 0
    while todo.size:
        differ = words[starts[todo] + at] ^ words[starts[todo + 1] + at]
        # frexp gives 2**k as 0.5 * 2**(k + 1), and 0 as 0 * 2**0
        bit = np.frexp(differ & (~differ + np.uint64(1)))[1] - 1
        # bytes of the word that are the same, up to the first that differs (or all 8)
        same = np.where(bit >= 0, bit >> 3, 8)
        done = (same < 8) | (at + 8 >= limit[todo])
        out[todo[done] + 1] = np.minimum(at + same[done], limit[todo[done]])
        todo = todo[~done]
        at += 8
    return out


def _sum_by_parent(parent: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """Per node: the sum of ``values`` over its children (int64)."""
    return np.bincount(parent, weights=values, minlength=count).astype(np.int64)


def _lengths(ends: np.ndarray) -> np.ndarray:
    """The sizes of consecutive pieces that end at ``ends``."""
    return np.diff(ends, prepend=0)


def _starts(sizes: np.ndarray) -> np.ndarray:
    """Where each of consecutive pieces of ``sizes`` bytes starts."""
    starts: np.ndarray = np.cumsum(sizes) - sizes
    return starts


def _copy_ranges(
    out: np.ndarray, dst: np.ndarray, src: np.ndarray, src_start: np.ndarray, lengths: np.ndarray
) -> None:
    """``out[dst[i]:][:lengths[i]] = src[src_start[i]:][:lengths[i]]`` for every i.

    Vectorized over about ``COPY_STEP`` bytes at a time, so that the index arrays (8 bytes per
    byte copied) stay small whatever the size of the trie.
    """
    ends = np.cumsum(lengths)
    start, done = 0, 0
    while start < ends.size:
        stop = max(start + 1, int(np.searchsorted(ends, done + COPY_STEP, side="right")))
        count = lengths[start:stop]
        within = np.arange(int(ends[stop - 1]) - done) - np.repeat(_starts(count), count)
        out[np.repeat(dst[start:stop], count) + within] = src[
            np.repeat(src_start[start:stop], count) + within
        ]
        start, done = stop, int(ends[stop - 1])


def write_trie(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encode (key, payload) pairs as a trie; ``b""`` if there are none.

    Nodes are laid out in pre-order with children in byte order of their labels. Node offsets
    are iterated to a fixed point, so every child offset is written in its shortest ULEB form.
    Raises ValueError for a duplicate key, a key containing NUL or an empty payload.
    """
    pairs = [(bytes(k), bytes(p)) for k, p in entries]
    for key, payload in pairs:
        if not payload:
            raise ValueError(f"trie key {key!r} has an empty payload (a terminal size of 0 means 'no entry')")
    shape = TrieShape(k for k, _ in pairs)
    return shape.encode([p for _, p in pairs])


# -- exports ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Export:
    """One exported symbol of an image."""

    name: str
    #: EXPORT_SYMBOL_FLAGS_* (kind in the low two bits)
    flags: int
    #: offset from the mach header (regular, thread-local), the value itself (ABSOLUTE), or the
    #: stub's offset (STUB_AND_RESOLVER); 0 for re-exports
    address: int = 0
    #: STUB_AND_RESOLVER: offset of the resolver function from the mach header
    resolver: int = 0
    #: REEXPORT: 1-based ordinal of the dylib the symbol comes from
    ordinal: int = 0
    #: REEXPORT: the symbol's name in that dylib; "" means the same name
    import_name: str = ""

    def __reduce__(self) -> tuple[type[Export], tuple[str, int, int, int, int, str]]:
        # what a slotted dataclass pickles by default calls dataclasses.fields() per object:
        # four times slower, and phase 1's workers send every export back to the builder
        return (Export, (self.name, self.flags, self.address, self.resolver, self.ordinal, self.import_name))

    @property
    def kind(self) -> int:
        return self.flags & C.EXPORT_SYMBOL_FLAGS_KIND_MASK

    @property
    def is_weak_def(self) -> bool:
        return bool(self.flags & C.EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION)

    @property
    def is_reexport(self) -> bool:
        return bool(self.flags & C.EXPORT_SYMBOL_FLAGS_REEXPORT)

    @property
    def is_resolver(self) -> bool:
        return bool(self.flags & C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER)

    @property
    def is_absolute(self) -> bool:
        return self.kind == C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE

    @property
    def is_thread_local(self) -> bool:
        return self.kind == C.EXPORT_SYMBOL_FLAGS_KIND_THREAD_LOCAL


def _decode_name(raw: bytes) -> str:
    # surrogateescape: a name that is not UTF-8 still encodes back to the same bytes
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    """The trie key of a symbol name (names that are not UTF-8 survive via surrogateescape)."""
    return name.encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class ExportArrays:
    """The exports of one trie as arrays, in trie pre-order: what :func:`read_exports` gives,
    without an object (nor a decoded name) per export. The cache builder reads every dylib's."""

    #: the names as the trie holds them (its keys)
    names: list[bytes]
    #: per export: EXPORT_SYMBOL_FLAGS_* (uint64)
    flags: np.ndarray
    #: per export: :attr:`Export.address` (uint64)
    address: np.ndarray
    #: export index -> resolver offset, for the stub-and-resolver exports (few)
    resolvers: dict[int, int]
    #: export index -> (ordinal, import name), for the re-exports (few)
    reexports: dict[int, tuple[int, str]]

    @classmethod
    def of(cls, exports: Sequence[Export]) -> ExportArrays:
        """The arrays of ``exports`` (whose fields must fit in 64 bits)."""
        return cls(
            [encode_name(e.name) for e in exports],
            np.array([e.flags for e in exports], dtype=np.uint64),
            np.array([e.address for e in exports], dtype=np.uint64),
            {i: e.resolver for i, e in enumerate(exports) if e.resolver},
            {i: (e.ordinal, e.import_name) for i, e in enumerate(exports) if e.ordinal or e.import_name},
        )

    def exports(self) -> list[Export]:
        names = [_decode_name(k) for k in self.names]
        flags, address = self.flags.tolist(), self.address.tolist()
        out = list(map(Export, names, flags, address))
        for i in sorted(self.resolvers.keys() | self.reexports.keys()):
            ordinal, import_name = self.reexports.get(i, _NOT_REEXPORTED)
            out[i] = Export(names[i], flags[i], address[i], self.resolvers.get(i, 0), ordinal, import_name)
        return out


_NOT_REEXPORTED = (0, "")


def read_exports(data: bytes | memoryview, path: str, base_offset: int) -> list[Export]:
    """Every export of a trie, in trie pre-order (``base_offset`` = file offset of ``data[0]``)."""
    return read_export_arrays(data, path, base_offset).exports()


def read_export_arrays(data: bytes | memoryview, path: str, base_offset: int) -> ExportArrays:
    """:func:`read_exports` as arrays."""
    buf = bytes(data)
    found = _terminals(buf, path, base_offset)
    keys, starts = found.keys, found.starts
    count = len(keys)
    raw = np.frombuffer(buf, dtype=np.uint8)
    head = raw[starts]
    flags = head.astype(np.uint64)
    address = np.zeros(count, dtype=np.uint64)
    # the common payload is read vectorized: flags in one byte (not a re-export, nor a
    # stub-and-resolver, nor the kind 3 that does not exist), then the address in at most 9
    # bytes (63 bits); anything else is read by _read_payload, which names any problem
    size = found.ends - starts - 1
    odd = C.EXPORT_SYMBOL_FLAGS_REEXPORT | C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER
    plain = np.flatnonzero(
        (head < 0x80)
        & (head & odd == 0)
        & (head & C.EXPORT_SYMBOL_FLAGS_KIND_MASK != 3)
        & (size >= 1)
        & (size <= 9)
    )
    size, pos = size[plain], starts[plain] + 1
    value = np.zeros(plain.size, dtype=np.uint64)
    ok = np.ones(plain.size, dtype=bool)
    for k in range(int(size.max()) if size.size else 0):
        has = np.flatnonzero(size > k)
        byte = raw[pos[has] + k]
        # the high bit is set in every byte but the last
        ok[has] &= (byte >= 0x80) == (size[has] > k + 1)
        value[has] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    address[plain] = value
    rest = np.ones(count, dtype=bool)
    rest[plain[ok]] = False
    resolvers: dict[int, int] = {}
    reexports: dict[int, tuple[int, str]] = {}
    for i in np.flatnonzero(rest).tolist():
        e = _read_payload(buf, keys[i], int(starts[i]), int(found.ends[i]), path, base_offset)
        flags[i], address[i] = e.flags, e.address
        if e.resolver:
            resolvers[i] = e.resolver
        if e.ordinal or e.import_name:
            reexports[i] = (e.ordinal, e.import_name)
    return ExportArrays(keys, flags, address, resolvers, reexports)


def _read_payload(buf: bytes, key: bytes, start: int, end: int, path: str, base_offset: int) -> Export:
    """The export of one terminal payload, read field by field with bounds checks."""
    cur = Cursor(buf[start:end], path, base_offset + start, f"export {_decode_name(key)!r}")
    flags = cur.uleb()
    if flags & C.EXPORT_SYMBOL_FLAGS_KIND_MASK == 3:
        raise cur.error(f"unknown export kind 3 in flags {flags:#x}", 0)
    address = resolver = ordinal = 0
    import_name = ""
    if flags & C.EXPORT_SYMBOL_FLAGS_REEXPORT:
        ordinal = cur.uleb()
        import_name = _decode_name(cur.cstring())
    elif flags & C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER:
        address = cur.uleb()
        resolver = cur.uleb()
    else:
        address = cur.uleb()
    if not cur.at_end():
        raise cur.error(f"payload is {end - start} bytes but its fields take {cur.pos}")
    if max(flags, address, resolver, ordinal) > _U64_MAX:
        raise cur.error("a payload field does not fit in 64 bits", 0)
    return Export(_decode_name(key), flags, address, resolver, ordinal, import_name)


def export_payload(export: Export) -> bytes:
    """The terminal payload of one export; ValueError if its fields contradict its flags."""
    flags = export.flags
    if flags < 0 or flags & C.EXPORT_SYMBOL_FLAGS_KIND_MASK == 3:
        raise ValueError(f"export {export.name!r}: bad flags {flags:#x}")
    if max(flags, export.address, export.resolver, export.ordinal) > _U64_MAX:
        raise ValueError(f"export {export.name!r}: a field does not fit in 64 bits")
    out = bytearray(uleb_encode(flags))
    if flags & C.EXPORT_SYMBOL_FLAGS_REEXPORT:
        if export.address or export.resolver:
            raise ValueError(f"re-export {export.name!r} cannot have an address or a resolver")
        import_name = encode_name(export.import_name)
        if b"\0" in import_name:
            raise ValueError(f"re-export {export.name!r}: import name contains a NUL byte")
        out += uleb_encode(export.ordinal)
        out += import_name + b"\0"
        return bytes(out)
    if export.ordinal or export.import_name:
        raise ValueError(f"export {export.name!r} has an ordinal or import name but no REEXPORT flag")
    if flags & C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER:
        out += uleb_encode(export.address)
        out += uleb_encode(export.resolver)
        return bytes(out)
    if export.resolver:
        raise ValueError(f"export {export.name!r} has a resolver but no STUB_AND_RESOLVER flag")
    out += uleb_encode(export.address)
    return bytes(out)


def packed_export_payloads(exports: list[Export]) -> tuple[np.ndarray, np.ndarray]:
    """The payloads of ``exports``, concatenated (uint8), and their sizes, for
    :meth:`TrieShape.encode_packed`. ValueError as :func:`export_payload` gives it."""
    fields = ExportPayloads.of(exports)
    if fields is None:
        # one by one, so that export_payload names the first problem
        payloads = [export_payload(e) for e in exports]
        sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
        return np.frombuffer(b"".join(payloads), dtype=np.uint8), sizes
    return fields.encode(), fields.sizes


@dataclass(frozen=True, slots=True)
class ExportPayloads:
    """The payloads of many exports as arrays: ULEB flags, ULEB ordinal (re-exports) or address,
    ULEB resolver (stub-and-resolver only), then the import name and its NUL (re-exports only).
    """

    #: the ULEB fields of every export, one export after the other
    fields: np.ndarray
    #: per export: ULEB bytes of its fields
    uleb_size: np.ndarray
    #: the import names of the re-exports, each with its NUL, one after the other
    names: bytes
    #: per export: bytes of ``names`` that are its (0 if it is not a re-export)
    name_size: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        sizes: np.ndarray = self.uleb_size + self.name_size
        return sizes

    @staticmethod
    def of(exports: list[Export]) -> ExportPayloads | None:
        """None if a field contradicts the flags or does not fit in 64 bits, the cases
        :func:`export_payload` rejects (so that it can name the problem)."""
        try:
            flags = np.array([e.flags for e in exports], dtype=np.uint64)
            ordinal = np.array([e.ordinal for e in exports], dtype=np.uint64)
            address = np.array([e.address for e in exports], dtype=np.uint64)
            resolver = np.array([e.resolver for e in exports], dtype=np.uint64)
        except OverflowError:
            return None
        names = {i: encode_name(e.import_name) for i, e in enumerate(exports) if e.import_name}
        return ExportPayloads.of_arrays(flags, address, resolver, ordinal, names)

    @staticmethod
    def of_arrays(
        flags: np.ndarray,
        address: np.ndarray,
        resolver: np.ndarray,
        ordinal: np.ndarray,
        import_names: dict[int, bytes],
    ) -> ExportPayloads | None:
        """The payloads of exports given as uint64 arrays (``Export``'s fields), the import
        names by export index; None if a field contradicts the flags."""
        reexport = flags & np.uint64(C.EXPORT_SYMBOL_FLAGS_REEXPORT) != 0
        has_resolver = ~reexport & (flags & np.uint64(C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER) != 0)
        name_size = np.zeros(flags.size, dtype=np.int64)
        named = np.fromiter(import_names.keys(), dtype=np.int64, count=len(import_names))
        name_size[named] = np.fromiter(map(len, import_names.values()), dtype=np.int64, count=named.size)
        contradictions = (
            (flags & np.uint64(C.EXPORT_SYMBOL_FLAGS_KIND_MASK) == np.uint64(3))
            | (reexport & ((address != 0) | (resolver != 0)))
            | (~reexport & ((ordinal != 0) | (name_size != 0) | (~has_resolver & (resolver != 0))))
        )
        names = [import_names.get(i, b"") for i in np.flatnonzero(reexport).tolist()]
        if contradictions.any() or any(b"\0" in n for n in names):
            return None
        count = 2 + has_resolver.astype(np.int64)
        first = _starts(count)
        fields = np.empty(int(count.sum()), dtype=np.uint64)
        fields[first] = flags
        fields[first + 1] = np.where(reexport, ordinal, address)
        fields[first[has_resolver] + 2] = resolver[has_resolver]
        uleb_size = np.add.reduceat(uleb_sizes(fields), first) if first.size else first
        joined = b"".join(n + b"\0" for n in names)
        return ExportPayloads(fields, uleb_size, joined, np.where(reexport, name_size + 1, 0))

    def encode(self) -> np.ndarray:
        sizes = self.sizes
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        start = _starts(sizes)
        _copy_ranges(out, start, uleb_encode_array(self.fields), _starts(self.uleb_size), self.uleb_size)
        names = np.frombuffer(self.names, dtype=np.uint8)
        _copy_ranges(out, start + self.uleb_size, names, _starts(self.name_size), self.name_size)
        return out


def write_exports(exports: Iterable[Export]) -> bytes:
    """The export trie of ``exports`` (no trailing padding; callers pad). ValueError on duplicates."""
    items = list(exports)
    shape = TrieShape(encode_name(e.name) for e in items)
    return shape.encode_packed(*packed_export_payloads(items))
