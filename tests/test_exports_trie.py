"""Export trie: hand-assembled bytes, round trips, llvm-objdump as oracle, malformed input."""

from __future__ import annotations

import contextlib
import itertools
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import LLVM_OBJDUMP, shared_path, time_limit, tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trie_oracle import common_prefix, export_fields, reference_payload, reference_trie, uleb

from dyldcache.errors import MachOFormatError
from dyldcache.macho import constants as C
from dyldcache.macho import exports_trie
from dyldcache.macho.exports_trie import (
    MAX_KEY_LENGTH,
    Export,
    TrieShape,
    export_payload,
    packed_export_payloads,
    read_exports,
    read_trie,
    trie_nodes,
    write_exports,
    write_trie,
)
from dyldcache.macho.file import MachOFile, open_macho
from dyldcache.macho.leb128 import uleb_decode, uleb_encode_array, uleb_size, uleb_sizes
from dyldcache.names import encode_name

# -- hand-assembled bytes ---------------------------------------------------------------------------


def test_empty_trie() -> None:
    assert write_trie([]) == b""
    assert read_trie(b"", "t", 0) == []
    # a root with no terminal and no children is a valid, empty trie too
    assert read_trie(b"\x00\x00", "t", 0) == []


def test_single_key_exact_bytes() -> None:
    # root:  00 (not terminal) 01 (one child) "_a" 00 (label) 06 (child at offset 6)
    # child: 02 (terminal size 2) 00 10 (payload) 00 (no children)
    expected = bytes.fromhex("00 01 5f61 00 0602 0010 00")
    assert write_trie([(b"_a", b"\x00\x10")]) == expected
    assert read_trie(expected, "t", 0) == [(b"_a", b"\x00\x10")]


def test_shared_prefix_exact_bytes() -> None:
    # Keys _a, _ab, _b: root -"_"-> N1; N1 -"a"-> N2 (terminal) -"b"-> N3; N1 -"b"-> N4.
    # Pre-order: root@0, N1@5, N2@13, N3@19, N4@22.
    expected = bytes.fromhex(
        "00 01 5f00 05"  # root: no terminal, 1 child "_" -> 5
        "00 02 6100 0d 6200 16"  # N1: no terminal, 2 children "a" -> 13, "b" -> 22
        "01 01 01 6200 13"  # N2: payload 01, 1 child "b" -> 19
        "01 02 00"  # N3: payload 02, no children
        "01 03 00"  # N4: payload 03, no children
    )
    entries = [(b"_b", b"\x03"), (b"_ab", b"\x02"), (b"_a", b"\x01")]
    assert write_trie(entries) == expected
    # pre-order with children in byte order lists keys in sorted order
    assert read_trie(expected, "t", 0) == sorted(entries)


def test_offsets_converge_to_two_byte_uleb() -> None:
    # "a" has a 130-byte payload, so "b" starts past offset 127 and its ULEB offset needs two
    # bytes, which moves every node after the root by one: root is 9 bytes (00 02 "a"00 09
    # "b"00 8e01), node a = 82 01 (size 130) + payload + 00 = 133 bytes at 9, node b at 142.
    big = bytes(range(130))
    raw = write_trie([(b"a", big), (b"b", b"\x07")])
    assert raw[:9] == bytes.fromhex("00 02 6100 09 6200 8e01")
    assert raw[9:11] == b"\x82\x01" and raw[11:141] == big and raw[141] == 0
    assert raw[142:] == b"\x01\x07\x00"
    assert read_trie(raw, "t", 0) == [(b"a", big), (b"b", b"\x07")]


def test_key_that_is_the_empty_string() -> None:
    # the root itself is terminal: 01 (size) 05 (payload) 00 (no children)
    assert write_trie([(b"", b"\x05")]) == b"\x01\x05\x00"
    assert read_trie(b"\x01\x05\x00", "t", 0) == [(b"", b"\x05")]


def test_export_payloads_exact_bytes() -> None:
    def payload(e: Export) -> bytes:
        raw = write_exports([e])
        # one export "x": root 00 01 "x" 00 05, then the node: size, payload, 00
        assert raw[:5] == bytes.fromhex("00 01 7800 05")
        size, start = uleb_decode(raw, 5)
        assert raw[start + size :] == b"\x00"
        return raw[start : start + size]

    # regular: flags 0, address 0x1234 = ULEB b4 24
    assert payload(Export("x", 0, 0x1234)) == bytes.fromhex("00 b424")
    # weak definition (4), thread-local (1), absolute (2)
    assert payload(Export("x", C.EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION, 8)) == bytes.fromhex("04 08")
    assert payload(Export("x", C.EXPORT_SYMBOL_FLAGS_KIND_THREAD_LOCAL, 0x10)) == bytes.fromhex("01 10")
    assert payload(Export("x", C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE, 0xFFFFF)) == bytes.fromhex("02 ffff3f")
    # stub-and-resolver (0x10): stub offset, then resolver offset
    resolver = Export("x", C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER, 0x46C, resolver=0x460)
    assert payload(resolver) == bytes.fromhex("10 ec08 e008")
    # re-export (8): ordinal 2, import name "y"; "" means the same name
    reexport = Export("x", C.EXPORT_SYMBOL_FLAGS_REEXPORT, ordinal=2, import_name="y")
    assert payload(reexport) == bytes.fromhex("08 02 7900")
    assert payload(Export("x", C.EXPORT_SYMBOL_FLAGS_REEXPORT, ordinal=1)) == bytes.fromhex("08 01 00")
    for e in (resolver, reexport):
        assert read_exports(write_exports([e]), "t", 0) == [e]


def test_export_properties() -> None:
    e = Export("x", C.EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION | C.EXPORT_SYMBOL_FLAGS_KIND_THREAD_LOCAL, 1)
    assert e.is_weak_def and e.is_thread_local and not e.is_absolute and not e.is_reexport
    assert e.kind == C.EXPORT_SYMBOL_FLAGS_KIND_THREAD_LOCAL
    assert Export("x", C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER).is_resolver
    assert Export("x", C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE).is_absolute


def test_writer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        write_trie([(b"a", b"\x01"), (b"a", b"\x02")])
    with pytest.raises(ValueError, match="duplicate"):
        write_exports([Export("_f", 0, 1), Export("_f", 0, 2)])
    with pytest.raises(ValueError, match="NUL"):
        write_trie([(b"a\0b", b"\x01")])
    with pytest.raises(ValueError, match="empty payload"):
        write_trie([(b"a", b"")])
    with pytest.raises(ValueError):
        write_exports([Export("_f", 3)])  # kind 3 does not exist
    with pytest.raises(ValueError):
        write_exports([Export("_f", 0, 1, resolver=2)])  # resolver without the flag
    with pytest.raises(ValueError):
        write_exports([Export("_f", C.EXPORT_SYMBOL_FLAGS_REEXPORT, address=4, ordinal=1)])
    with pytest.raises(ValueError):
        write_exports([Export("_f", 0, -1)])


# -- malformed tries --------------------------------------------------------------------------------


def _error(raw: bytes, base: int = 0x1000) -> MachOFormatError:
    with pytest.raises(MachOFormatError) as info:
        read_trie(raw, "lib.dylib", base)
    return info.value


def test_child_offset_zero_is_rejected() -> None:
    err = _error(bytes.fromhex("00 01 6100 00"))
    assert err.offset == 0x1000 + 4 and "outside" in err.message


def test_child_offset_past_end_is_rejected() -> None:
    err = _error(bytes.fromhex("00 01 6100 40 00"))
    assert err.offset == 0x1004 and err.path == "lib.dylib"


def test_loop_is_rejected() -> None:
    # root -> node@5, node@5 -> node@5 again
    err = _error(bytes.fromhex("00 01 6100 0500 01 6200 05"))
    assert "twice" in err.message and err.offset == 0x1000 + 9


def test_node_reached_twice_is_rejected() -> None:
    # two edges of the root share one child node: not a tree
    err = _error(bytes.fromhex("00 02 6100 07 6200 0701 01 00"))
    assert "twice" in err.message


def test_payload_past_end_is_rejected() -> None:
    err = _error(bytes.fromhex("00 01 6100 0509 01 00"))
    assert err.offset == 0x1005 and "payload" in err.message


def test_truncated_structures_are_rejected() -> None:
    _error(bytes.fromhex("00 01 6162"))  # label without NUL
    _error(bytes.fromhex("00 01 6100"))  # missing child offset
    _error(bytes.fromhex("00 01 6100 85"))  # unterminated ULEB offset
    _error(bytes.fromhex("00"))  # missing child count
    _error(bytes.fromhex("00 01 00 03 00"))  # empty edge label


def test_absurd_key_length_is_rejected() -> None:
    label = b"a" * (MAX_KEY_LENGTH + 1)
    raw = b"\x00\x01" + label + b"\x00" + bytes([0x80 | 4, 0x80, 0x01])  # offset far away
    err = _error(raw + bytes(0x4000))
    assert "longer" in err.message


def test_deep_chain_does_not_recurse() -> None:
    # 5000 nested single-byte edges: fine for an explicit stack, fatal for naive recursion
    # every node is 00 01 "a" 00 + the next node's offset as a 3-byte ULEB (7 bytes); the last
    # node is terminal: 01 01 00
    depth = 5000
    raw = bytearray()
    for k in range(depth):
        child = 7 * (k + 1)
        raw += b"\x00\x01a\x00" + bytes([0x80 | child & 0x7F, 0x80 | (child >> 7) & 0x7F, child >> 14])
    raw += b"\x01\x01\x00"
    assert read_trie(bytes(raw), "t", 0) == [(b"a" * depth, b"\x01")]


def test_export_payload_errors() -> None:
    def node(payload: bytes) -> bytes:
        return bytes([0, 1, ord("x"), 0, 5, len(payload)]) + payload + b"\x00"

    with pytest.raises(MachOFormatError, match="kind 3"):
        read_exports(node(b"\x03\x00"), "t", 0)
    with pytest.raises(MachOFormatError, match="payload is 3 bytes"):
        read_exports(node(b"\x00\x01\x02"), "t", 0)
    with pytest.raises(MachOFormatError):
        read_exports(node(b"\x08\x01y"), "t", 0)  # import name without NUL
    with pytest.raises(MachOFormatError):
        read_exports(node(b"\x10\x01"), "t", 0)  # resolver missing


def test_payloads_off_the_common_path() -> None:
    def node(payload: bytes) -> bytes:
        return bytes([0, 1, ord("x"), 0, 5]) + uleb(len(payload)) + payload + b"\x00"

    # flags that take two ULEB bytes (0x80: a bit with no meaning yet), an address of 64 bits
    # (a 10-byte ULEB), a weak re-export with a long import name
    assert read_exports(node(uleb(0x80) + uleb(0x1234)), "t", 0) == [Export("x", 0x80, 0x1234)]
    assert read_exports(node(b"\x00" + uleb(2**64 - 1)), "t", 0) == [Export("x", 0, 2**64 - 1)]
    reexport = Export("x", 0x0C, ordinal=300, import_name="y" * 200)
    assert read_exports(node(b"\x0c" + uleb(300) + b"y" * 200 + b"\0"), "t", 0) == [reexport]
    with pytest.raises(MachOFormatError, match="64 bits"):
        read_exports(node(b"\x00" + uleb(2**64)), "t", 0)
    with pytest.raises(MachOFormatError, match="payload is"):
        read_exports(node(b"\x08\x01y\x00z"), "t", 0)  # a byte after the import name


# -- properties -------------------------------------------------------------------------------------

_small_keys = st.lists(st.sampled_from(b"ab_\xff"), max_size=8).map(bytes)
_any_keys = st.lists(st.integers(1, 255), max_size=20).map(bytes)


@st.composite
def trie_entries(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    keys = set(draw(st.lists(st.one_of(_small_keys, _any_keys), max_size=40)))
    # add prefixes of some keys, so that keys end inside other keys' paths
    for key in list(keys):
        if key and draw(st.booleans()):
            keys.add(key[: draw(st.integers(0, len(key) - 1))])
    payload = st.one_of(st.binary(min_size=1, max_size=12), st.binary(min_size=120, max_size=300))
    return [(k, draw(payload)) for k in keys]


def _walk_layout(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of every node in pre-order; an independent reading of the layout rules.

    Also checks that every ULEB is in its shortest form.
    """
    spans = []
    stack = [0]
    while stack:
        start = stack.pop()
        size, pos = uleb_decode(raw, start)
        assert pos - start == uleb_size(size)
        pos += size
        count = raw[pos]
        pos += 1
        children = []
        labels = []
        for _ in range(count):
            end = raw.index(b"\0", pos)
            labels.append(raw[pos:end])
            child, nxt = uleb_decode(raw, end + 1)
            assert nxt - end - 1 == uleb_size(child), "child offset ULEB is not minimal"
            children.append(child)
            pos = nxt
        assert labels == sorted(labels), "children are not in byte order"
        spans.append((start, pos))
        stack.extend(reversed(children))
    return spans


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(trie_entries())
def test_trie_round_trip(entries: list[tuple[bytes, bytes]]) -> None:
    raw = write_trie(entries)
    assert read_trie(raw, "t", 0) == sorted(entries)
    if not entries:
        assert raw == b""
        return
    # pre-order layout: each node starts where the previous one ended, and the last one ends
    # the data (no padding: callers pad)
    spans = _walk_layout(raw)
    assert spans[0][0] == 0
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start == end
    assert spans[-1][1] == len(raw)


@given(trie_entries())
def test_trie_rejects_a_duplicate(entries: list[tuple[bytes, bytes]]) -> None:
    if not entries:
        return
    with pytest.raises(ValueError, match="duplicate"):
        write_trie([*entries, (entries[0][0], b"\x01")])


exports = export_fields().map(lambda fields: [Export(**f) for f in fields])  # type: ignore[arg-type]


@settings(max_examples=300)
@given(exports)
def test_exports_round_trip(items: list[Export]) -> None:
    raw = write_exports(items)
    assert read_exports(raw, "t", 0) == sorted(items, key=lambda e: e.name.encode())


# -- against a writer written from the format rules (trie_oracle) ---------------------------------

_long_keys = st.tuples(
    st.binary(min_size=100, max_size=700).map(lambda b: b.replace(b"\0", b"x")),
    st.lists(st.lists(st.sampled_from(b"ab\x80"), max_size=6).map(bytes), min_size=1, max_size=12),
).map(lambda t: {t[0] + suffix for suffix in t[1]} | {t[0][: len(t[0]) // 2]})


@st.composite
def mixed_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """Short random keys with added prefixes, and groups of long keys sharing a long prefix."""
    keys = {k for k, _ in draw(trie_entries())}
    for group in draw(st.lists(_long_keys, max_size=3)):
        keys |= group
    payload = st.one_of(st.binary(min_size=1, max_size=12), st.binary(min_size=120, max_size=300))
    return {k: draw(payload) for k in keys}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_entries(), st.randoms(use_true_random=False))
def test_writer_matches_reference(entries: dict[bytes, bytes], rng: random.Random) -> None:
    items = list(entries.items())
    rng.shuffle(items)  # the input order does not matter
    assert write_trie(items) == reference_trie(entries)


def test_large_trie_matches_reference() -> None:
    # enough bytes that child offsets need 3-byte ULEBs (>= 16384), nodes with many children
    # (every byte value 1..255 starts a key), keys that are prefixes of others, long shared
    # prefixes: the offset fixed point takes several passes here
    rng = random.Random(12)
    entries = {bytes([b]): bytes([b]) * (b % 7 + 1) for b in range(1, 256)}
    stem = bytes(rng.randrange(1, 256) for _ in range(300))
    for _ in range(1500):
        key = bytes(rng.choice(b"_Zab\xc3") for _ in range(rng.randrange(1, 30)))
        entries[key] = rng.randbytes(rng.choice((1, 3, 40, 200)))
        entries[stem + key] = b"\x01"
        entries[key[: rng.randrange(len(key) + 1)]] = b"\x02\x03"
    raw = write_trie(entries.items())
    assert len(raw) > 1 << 14
    assert raw == reference_trie(entries)
    assert read_trie(raw, "t", 0) == sorted(entries.items())


def test_keys_that_part_by_one_bit() -> None:
    # the writer finds where sorted keys part 8 bytes at a time: keys that first differ in any
    # one bit, at any position of those 8 bytes and past them, with tails or without
    rng = random.Random(5)
    for shared in range(25):
        for bit in range(8):
            stem = bytes(rng.randrange(1, 256) for _ in range(shared))
            low = rng.randrange(1, 256) & ~(1 << bit) or 1 << (bit + 1) % 8
            high = low | 1 << bit
            entries = {stem + bytes([low]): b"\x01", stem + bytes([high]) + b"tail": b"\x02"}
            entries[stem + bytes([high])] = b"\x03"
            entries[stem] = b"\x04"
            assert write_trie(entries.items()) == reference_trie(entries), (shared, bit)


def test_copies_in_small_steps_give_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # the writer copies labels and payloads a bounded number of bytes at a time: steps smaller
    # than one payload, and than many labels, must not change the result
    rng = random.Random(7)
    entries = {
        rng.randbytes(rng.randrange(1, 60)).replace(b"\0", b"z"): rng.randbytes(rng.randrange(1, 90))
        for _ in range(400)
    }
    expected = reference_trie(entries)
    for step in (1, 7, 64, 1 << 20):
        monkeypatch.setattr(exports_trie, "COPY_STEP", step)
        assert write_trie(entries.items()) == expected


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_entries(), st.data())
def test_shape_serves_several_encodings(entries: dict[bytes, bytes], data: st.DataObject) -> None:
    keys = list(entries)
    shape = TrieShape(keys)
    other = [data.draw(st.binary(min_size=1, max_size=200)) for _ in keys]
    for payloads in ([entries[k] for k in keys], other):
        raw = shape.encode(payloads)
        assert raw == reference_trie(dict(zip(keys, payloads, strict=True)))
        assert shape.size(np.array([len(p) for p in payloads], dtype=np.int64)) == len(raw)


def _defined_nodes(keys: list[bytes]) -> list[tuple[int, int, int, int, int]]:
    """The trie_nodes records of ``keys`` from the definitions alone: the nodes are the empty
    string, the keys and the common prefixes of neighbours in sorted order, in string order
    (pre-order); a node's parent is the longest other node that is a prefix of it; its label
    is taken from the first key in sorted order through it; entries are indexes in ``keys``."""
    ordered = sorted(keys)
    strings = sorted({b"", *keys} | {common_prefix([a, b]) for a, b in itertools.pairwise(ordered)})
    records = []
    for string in strings:
        up = max((s for s in strings if len(s) < len(string) and string.startswith(s)), key=len, default=None)
        label_key = keys.index(next(k for k in ordered if k.startswith(string))) if keys else 0
        terminal = keys.index(string) if string in keys else -1
        parent = -1 if up is None else strings.index(up)
        start = 0 if up is None else len(up)
        records.append((terminal, parent, label_key, start, len(string) - start))
    return records


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_entries(), st.booleans(), st.randoms(use_true_random=False))
def test_trie_nodes_match_their_definition(
    entries: dict[bytes, bytes], empty: bool, rng: random.Random
) -> None:
    keys = list(entries) + [b""] * (empty and b"" not in entries)
    rng.shuffle(keys)
    assert trie_nodes(keys).tolist() == _defined_nodes(keys)


def test_trie_nodes_of_nested_prefixes() -> None:
    # chains of keys that are prefixes of one another, runs of equal common prefixes, splits
    # inside edges, at sizes around the powers of two the nearest-smaller search steps by
    rng = random.Random(3)
    for count in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 129):
        keys = {bytes(rng.choice(b"ab") for _ in range(rng.randrange(0, 12))) for _ in range(count)}
        listed = sorted(keys, key=lambda k: rng.random())
        assert trie_nodes(listed).tolist() == _defined_nodes(listed), count


@given(mixed_entries(), st.data())
def test_shape_rejects_nul_and_empty_payloads(entries: dict[bytes, bytes], data: st.DataObject) -> None:
    keys = list(entries)
    if not keys:
        return
    victim = data.draw(st.sampled_from(keys))
    at = data.draw(st.integers(0, len(victim)))
    with pytest.raises(ValueError, match="NUL"):
        TrieShape([*keys, victim[:at] + b"\0" + victim[at:]])
    payloads = [entries[k] for k in keys]
    payloads[keys.index(victim)] = b""
    with pytest.raises(ValueError, match="empty payload"):
        TrieShape(keys).encode(payloads)
    with pytest.raises(ValueError, match="empty payload"):
        write_trie(zip(keys, payloads, strict=True))


@given(st.lists(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 127, 128, 2**63, 2**64 - 1]))))
def test_vectorized_uleb_matches_reference(values: list[int]) -> None:
    array = np.array(values, dtype=np.uint64)
    assert uleb_encode_array(array).tobytes() == b"".join(uleb(v) for v in values)
    assert uleb_sizes(array).tolist() == [len(uleb(v)) for v in values]


@given(st.integers(0, 2**70), st.binary(max_size=4), st.binary(max_size=3))
def test_uleb_decode_matches_reference(value: int, before: bytes, after: bytes) -> None:
    raw = uleb(value)
    data = before + raw + after
    if len(raw) > 10:
        with pytest.raises(ValueError, match="too long"):
            uleb_decode(data, len(before))
    else:
        assert uleb_decode(data, len(before)) == (value, len(before) + len(raw))
    # cut anywhere inside the number: it runs past the end
    for cut in range(len(before), len(before) + min(len(raw), 10)):
        with pytest.raises(ValueError, match="past the end"):
            uleb_decode(memoryview(data)[:cut], len(before))


def _reference(e: Export) -> bytes:
    return reference_payload(e.flags, e.address, e.resolver, e.ordinal, encode_name(e.import_name))


@settings(max_examples=300)
@given(exports)
def test_packed_payloads_match_reference(items: list[Export]) -> None:
    want = [_reference(e) for e in items]
    raw, sizes = packed_export_payloads(items)
    assert raw.tobytes() == b"".join(want)
    assert sizes.tolist() == [len(p) for p in want]
    names = [encode_name(e.name) for e in items]
    assert write_exports(items) == reference_trie(dict(zip(names, want, strict=True)))


def test_packed_payloads_reject_what_export_payload_rejects() -> None:
    good = Export("_g", 0, 0x10)
    bad = [
        Export("_f", 3),  # kind 3 does not exist
        Export("_f", 0, 1, resolver=2),  # a resolver without the flag
        Export("_f", 0, 1, ordinal=2),  # an ordinal without REEXPORT
        Export("_f", 0, 1, import_name="x"),
        Export("_f", C.EXPORT_SYMBOL_FLAGS_REEXPORT, address=4, ordinal=1),
        Export("_f", C.EXPORT_SYMBOL_FLAGS_REEXPORT, ordinal=1, import_name="a\0b"),
        Export("_f", 0, -1),
        Export("_f", 0, 2**64),
        Export("_f", -1),
    ]
    for e in bad:
        with pytest.raises(ValueError) as expected:
            export_payload(e)
        with pytest.raises(ValueError) as got:
            packed_export_payloads([good, e])
        assert str(got.value) == str(expected.value)


# -- llvm-objdump as oracle -------------------------------------------------------------------------


def _objdump_exports(path: Path) -> list[str]:
    out = subprocess.run(
        [tool(LLVM_OBJDUMP), "--macho", "--exports-trie", str(path)], capture_output=True, check=True
    ).stdout.decode("utf-8", "surrogateescape")
    lines = out.splitlines()
    start = lines.index("Exports trie:") + 1
    return [line for line in lines[start:] if line]


_REEXPORT = re.compile(r"^\[re-export\] (.+?) \((?:(.+) )?from (.+)\)$")


def _compare_with_objdump(path: Path) -> list[Export]:
    image = open_macho(path)
    ours = image.exports
    # llvm prints non-re-exports at (address + vmaddr of the segment mapping file offset 0)
    base = next((s.vmaddr for s in image.segments if s.fileoff == 0 and s.filesize), 0)
    expected_lines = []
    expected_reexports = {}
    for e in ours:
        if e.is_reexport:
            expected_reexports[e.name] = e
            continue
        attrs = []
        if e.is_weak_def:
            attrs.append("weak_def")
        if e.is_thread_local:
            attrs.append("per-thread")
        if e.is_absolute:
            attrs.append("absolute")
        if e.is_resolver:
            attrs.append(f"resolver=0x{e.resolver:08X}")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        expected_lines.append(f"0x{e.address + base:08X}  {e.name}{suffix}")
    got_lines = []
    got_reexports = {}
    for line in _objdump_exports(path):
        m = _REEXPORT.match(line)
        if m:
            got_reexports[m.group(1)] = (m.group(2) or "", m.group(3))
        else:
            got_lines.append(line)
    assert sorted(got_lines) == sorted(expected_lines), path
    assert set(got_reexports) == set(expected_reexports), path
    for name, (import_name, lib) in got_reexports.items():
        e = expected_reexports[name]
        assert e.import_name == import_name
        # llvm prints the dylib's short name: "libSystem" for /usr/lib/libSystem.B.dylib
        assert 1 <= e.ordinal <= len(image.dylibs)
        assert Path(image.dylibs[e.ordinal - 1].path).name.startswith(lib), (lib, image.dylibs[e.ordinal - 1])
    return ours


def test_libexports_against_objdump() -> None:
    path = shared_path("data", "macho", "libexports.dylib")
    ours = _compare_with_objdump(path)
    # the file exercises every kind, so the comparison above covered all of them
    assert any(e.is_absolute for e in ours)
    assert any(e.is_resolver for e in ours)
    assert any(e.is_thread_local for e in ours)
    assert any(e.is_weak_def for e in ours)
    assert any(e.is_reexport and e.import_name for e in ours)
    assert any(e.is_reexport and not e.import_name for e in ours)


@pytest.mark.parametrize(
    "name", ["fixup-dyldinfo.dylib", "fixup-chains-arm64.dylib", "fixup-chains-arm64e.dylib"]
)
def test_shared_dylibs_against_objdump(name: str) -> None:
    assert _compare_with_objdump(shared_path("data", "macho", name))


@pytest.mark.slow
def test_wheel_corpus_against_objdump() -> None:
    from wheel_corpus import macho_paths

    total = 0
    for path in macho_paths():
        total += len(_compare_with_objdump(path))
    assert total > 1000


def test_real_tries_round_trip() -> None:
    for path in sorted(shared_path("data", "macho").glob("*.dylib")):
        image = open_macho(path)
        found = image.exports_trie_bytes()
        assert found is not None
        ours = read_exports(found[0], str(path), found[1])
        assert read_exports(write_exports(ours), "t", 0) == sorted(ours, key=lambda e: e.name.encode())


# -- robustness -------------------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_format_errors(raw: bytes) -> None:
    for fn in (read_trie, read_exports):
        try:
            fn(raw, "fuzz", 0)
        except MachOFormatError as exc:
            assert exc.path == "fuzz" and exc.offset is not None and 0 <= exc.offset <= len(raw)


def _libexports_trie() -> bytes:
    image = open_macho(shared_path("data", "macho", "libexports.dylib"))
    found = image.exports_trie_bytes()
    assert found is not None
    return bytes(found[0])


@settings(max_examples=500)
@given(st.data())
def test_mutated_real_trie_only_raises_format_errors(data: st.DataObject) -> None:
    raw = bytearray(_libexports_trie())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(MachOFormatError):
        read_exports(bytes(raw[:cut]), "fuzz", 0)


def _fuzzed_images() -> list[MachOFile]:
    images = []
    for path in sorted(shared_path("data", "fuzzed").iterdir()):
        try:
            images.append(open_macho(path))
        except MachOFormatError:
            continue
    return images


def test_fuzzed_files_only_raise_format_errors() -> None:
    for image in _fuzzed_images():
        with time_limit(10), contextlib.suppress(MachOFormatError):
            image.exports  # noqa: B018 (the property does the work)
