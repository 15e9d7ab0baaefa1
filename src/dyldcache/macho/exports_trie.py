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

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import MachOFormatError
from . import constants as C
from .leb128 import Cursor, uleb_decode, uleb_encode

#: longest key accepted from a file. Real keys are symbol names or install names (C++ and Swift
#: names reach a few KB); the limit also bounds the depth, since every edge label is non-empty.
MAX_KEY_LENGTH = 16384

_U64_MAX = (1 << 64) - 1


def _walk_trie(data: bytes | memoryview, path: str, base_offset: int) -> list[tuple[bytes, int, int]]:
    """(key, payload start, payload end) of every terminal node, in pre-order.

    Iterative with an explicit stack, and each node may be reached once only, so a malformed
    trie (loops, shared nodes, huge offsets) costs at most one visit per byte of input.
    """
    buf = bytes(data)
    size = len(buf)
    if size == 0:
        return []

    def error(pos: int, message: str) -> MachOFormatError:
        return MachOFormatError(path, base_offset + pos, f"export trie: {message}")

    def uleb(pos: int) -> tuple[int, int]:
        try:
            return uleb_decode(buf, pos)
        except ValueError as exc:
            raise error(pos, str(exc)) from None

    out: list[tuple[bytes, int, int]] = []
    visited = {0}
    stack: list[tuple[int, bytes]] = [(0, b"")]
    while stack:
        node, key = stack.pop()
        term_size, pos = uleb(node)
        if term_size:
            end = pos + term_size
            if end > size:
                raise error(
                    node, f"terminal payload of {term_size} bytes runs past the end of the trie ({size:#x})"
                )
            out.append((key, pos, end))
            pos = end
        if pos >= size:
            raise error(pos, "node's child count is past the end of the trie")
        count = buf[pos]
        pos += 1
        children: list[tuple[int, bytes]] = []
        for _ in range(count):
            label_end = buf.find(b"\0", pos)
            if label_end < 0:
                raise error(pos, "edge label is not NUL-terminated")
            # ld64 before ~2019 wrote an empty label for a symbol that is also a prefix of
            # others (llvm-objdump and dyld accept it): the child's key is the parent's
            child_key = key + buf[pos:label_end]
            if len(child_key) > MAX_KEY_LENGTH:
                raise error(pos, f"key longer than {MAX_KEY_LENGTH} bytes")
            child, next_pos = uleb(label_end + 1)
            if child == 0 or child >= size:
                raise error(
                    label_end + 1, f"child node offset {child:#x} is outside the trie (size {size:#x})"
                )
            if child in visited:
                raise error(label_end + 1, f"node {child:#x} is reached twice (loop or shared node)")
            visited.add(child)
            children.append((child, child_key))
            pos = next_pos
        # reversed, so the first child is popped first: pre-order, children in stored order
        stack.extend(reversed(children))
    return out


def read_trie(data: bytes | memoryview, path: str, base_offset: int) -> list[tuple[bytes, bytes]]:
    """(key, terminal payload) for every terminal node, in pre-order.

    ``base_offset`` is the file offset of ``data[0]``; errors name absolute file offsets.
    """
    buf = bytes(data)
    return [(key, buf[start:end]) for key, start, end in _walk_trie(buf, path, base_offset)]


class _Node:
    __slots__ = ("edges", "payload")

    def __init__(self) -> None:
        self.payload: bytes | None = None
        #: first byte of the label -> (label, child)
        self.edges: dict[int, tuple[bytes, _Node]] = {}


class TrieShape:
    """The node structure of a trie for a fixed set of keys.

    Nodes are in pre-order with children in byte order of their labels. Encoding payloads
    into a shape is cheap, so one shape can serve several encodings of the same keys (the
    cache builder sizes a dylib's export trie, then writes it again with final addresses).
    """

    __slots__ = ("_children", "_fixed", "_labels", "_terminal", "keys")

    def __init__(self, keys: Iterable[bytes]) -> None:
        root = _Node()
        self.keys: list[bytes] = []
        for key in keys:
            key = bytes(key)
            if b"\0" in key:
                raise ValueError(f"trie key {key!r} contains a NUL byte")
            # the payload slot holds the key's index until encoding time
            _insert(root, key, len(self.keys).to_bytes(4, "little"))
            self.keys.append(key)
        # pre-order with an explicit stack: keys can be long enough to exhaust Python's recursion
        order: list[_Node] = []
        stack = [root]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(child for _, (_, child) in sorted(node.edges.items(), reverse=True))
        index = {id(n): i for i, n in enumerate(order)}
        #: per node: the index of its key, or -1 for a node with no entry
        self._terminal = [-1 if n.payload is None else int.from_bytes(n.payload, "little") for n in order]
        self._children = [[index[id(c)] for _, (_, c) in sorted(n.edges.items())] for n in order]
        self._labels = [[label for _, (label, _) in sorted(n.edges.items())] for n in order]
        #: bytes of a node that do not depend on payloads or offsets: child count, labels, NULs
        self._fixed = [1 + sum(len(label) + 1 for label in labels) for labels in self._labels]

    def encode(self, payloads: list[bytes]) -> bytes:
        """The trie with ``payloads[i]`` as the terminal payload of ``keys[i]``."""
        if not self.keys:
            return b""
        if len(payloads) != len(self.keys):
            raise ValueError(f"{len(payloads)} payloads for {len(self.keys)} keys")
        terminal = self._terminal
        children = self._children
        n = len(terminal)
        head = []
        for t in terminal:
            if t < 0:
                head.append(1)
            else:
                size = len(payloads[t])
                if size == 0:
                    raise ValueError(f"trie key {self.keys[t]!r} has an empty payload")
                head.append(((size.bit_length() + 6) // 7 or 1) + size)
        base = [h + f for h, f in zip(head, self._fixed, strict=True)]
        offsets = [0] * n
        # offsets only grow from one pass to the next (a larger offset never shrinks a ULEB),
        # so this reaches a fixed point, in practice after two or three passes
        while True:
            pos = 0
            changed = False
            for i in range(n):
                if offsets[i] != pos:
                    offsets[i] = pos
                    changed = True
                size = base[i]
                for c in children[i]:
                    size += (offsets[c].bit_length() + 6) // 7 or 1
                pos += size
            if not changed:
                break
        out = bytearray()
        for i in range(n):
            t = terminal[i]
            if t < 0:
                out.append(0)
            else:
                out += uleb_encode(len(payloads[t]))
                out += payloads[t]
            kids = children[i]
            # edges are keyed by their first byte, never NUL: at most 255 of them
            out.append(len(kids))
            for label, c in zip(self._labels[i], kids, strict=True):
                out += label
                out.append(0)
                out += uleb_encode(offsets[c])
        assert len(out) == pos
        return bytes(out)


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


def _insert(root: _Node, key: bytes, payload: bytes) -> None:
    node = root
    rest = key
    while True:
        if not rest:
            if node.payload is not None:
                raise ValueError(f"duplicate trie key {key!r}")
            node.payload = payload
            return
        edge = node.edges.get(rest[0])
        if edge is None:
            leaf = _Node()
            leaf.payload = payload
            node.edges[rest[0]] = (rest, leaf)
            return
        label, child = edge
        common = _common_prefix(label, rest)
        if common == len(label):
            node, rest = child, rest[common:]
            continue
        # split the edge: node -label[:common]-> middle -label[common:]-> child
        middle = _Node()
        middle.edges[label[common]] = (label[common:], child)
        node.edges[rest[0]] = (label[:common], middle)
        node, rest = middle, rest[common:]


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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


def read_exports(data: bytes | memoryview, path: str, base_offset: int) -> list[Export]:
    """Every export of a trie, in trie pre-order (``base_offset`` = file offset of ``data[0]``)."""
    buf = bytes(data)
    exports: list[Export] = []
    for key, start, end in _walk_trie(buf, path, base_offset):
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
        exports.append(Export(_decode_name(key), flags, address, resolver, ordinal, import_name))
    return exports


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


def write_exports(exports: Iterable[Export]) -> bytes:
    """The export trie of ``exports`` (no trailing padding; callers pad). ValueError on duplicates."""
    return write_trie((encode_name(e.name), export_payload(e)) for e in exports)
