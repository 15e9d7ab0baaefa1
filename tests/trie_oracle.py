"""A prefix trie and export payload writer written here from the format rules (``<mach-o/loader.h>``
"export trie" comment, cache-format.md), sharing no code with dyldcache, for comparison with
``dyldcache.macho.exports_trie``; and hypothesis strategies for the exports both are fed.

The rules: a node is ULEB terminal size (0: no entry), the payload, a child count byte, then per
child its NUL-terminated edge label and the ULEB offset of the child from the trie start. A node
exists at the root, at the end of every key and where two keys part; nodes are laid out in
pre-order with children in byte order of their labels, and every ULEB takes its shortest form
(the smallest offsets that satisfy that: iterate from all zeros until nothing moves).
"""

from __future__ import annotations

from hypothesis import strategies as st

# EXPORT_SYMBOL_FLAGS_* of <mach-o/loader.h>, restated so the oracle does not import them
KIND_THREAD_LOCAL = 0x01
KIND_ABSOLUTE = 0x02
WEAK_DEFINITION = 0x04
REEXPORT = 0x08
STUB_AND_RESOLVER = 0x10


def uleb(value: int) -> bytes:
    assert value >= 0
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def reference_trie(entries: dict[bytes, bytes]) -> bytes:
    """The trie of ``entries`` (key -> non-empty payload), ``b""`` for none."""
    if not entries:
        return b""
    # pre-order: a node is appended before its children, which are built in byte order
    nodes: list[tuple[bytes | None, list[tuple[bytes, int]]]] = []

    def build(group: dict[bytes, bytes]) -> int:
        index = len(nodes)
        edges: list[tuple[bytes, int]] = []
        nodes.append((group.get(b""), edges))
        for first in sorted({key[0] for key in group if key}):
            below = [key for key in group if key and key[0] == first]
            label = common_prefix(below)
            edges.append((label, build({key[len(label) :]: group[key] for key in below})))
        return index

    build(entries)

    def node_bytes(node: int, offsets: list[int]) -> bytes:
        payload, edges = nodes[node]
        head = b"\0" if payload is None else uleb(len(payload)) + payload
        return head + bytes([len(edges)]) + b"".join(label + b"\0" + uleb(offsets[c]) for label, c in edges)

    offsets = [0] * len(nodes)
    while True:
        sizes = [len(node_bytes(n, offsets)) for n in range(len(nodes))]
        moved = [sum(sizes[:n]) for n in range(len(nodes))]
        if moved == offsets:
            return b"".join(node_bytes(n, offsets) for n in range(len(nodes)))
        offsets = moved


def common_prefix(keys: list[bytes]) -> bytes:
    shortest = min(keys, key=len)
    for i, byte in enumerate(shortest):
        if any(key[i] != byte for key in keys):
            return shortest[:i]
    return shortest


def reference_payload(flags: int, address: int, resolver: int, ordinal: int, import_name: bytes) -> bytes:
    """An export's terminal payload: ULEB flags, then ULEB ordinal and the C string import name
    (re-export), ULEB stub offset and ULEB resolver offset (stub and resolver), or ULEB address."""
    if flags & REEXPORT:
        return uleb(flags) + uleb(ordinal) + import_name + b"\0"
    if flags & STUB_AND_RESOLVER:
        return uleb(flags) + uleb(address) + uleb(resolver)
    return uleb(flags) + uleb(address)


# -- strategies -------------------------------------------------------------------------------------

NAMES = st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=24
)
U64 = st.integers(0, 2**64 - 1)


@st.composite
def export_fields(
    draw: st.DrawFn, names: st.SearchStrategy[str] = NAMES, values: st.SearchStrategy[int] = U64
) -> list[dict[str, object]]:
    """Keyword arguments of ``Export`` for a list of well-formed exports of every kind, with
    addresses, resolvers and ordinals drawn from ``values``."""
    out: list[dict[str, object]] = []
    for name in draw(st.lists(names, unique=True, max_size=30)):
        weak = WEAK_DEFINITION if draw(st.booleans()) else 0
        kind = draw(st.sampled_from(["regular", "tls", "absolute", "resolver", "reexport"]))
        if kind == "regular":
            out.append({"name": name, "flags": weak, "address": draw(values)})
        elif kind == "tls":
            out.append({"name": name, "flags": weak | KIND_THREAD_LOCAL, "address": draw(values)})
        elif kind == "absolute":
            out.append({"name": name, "flags": KIND_ABSOLUTE, "address": draw(values)})
        elif kind == "resolver":
            fields = {"address": draw(values), "resolver": draw(values)}
            out.append({"name": name, "flags": weak | STUB_AND_RESOLVER, **fields})
        else:
            import_name = draw(st.one_of(st.just(""), names))
            out.append({"name": name, "flags": REEXPORT, "ordinal": draw(values), "import_name": import_name})
    return out
