"""The level-by-level trie reader (macho/trie_levels.py) against the trie rules and the
node-by-node walk: same keys, payload spans and order where it reads a trie, and never a
reading of a trie the walk rejects."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
from conftest import shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trie_oracle import reference_trie

from dyldcache.errors import MachOFormatError
from dyldcache.macho import exports_trie
from dyldcache.macho.exports_trie import MAX_KEY_LENGTH, _walk_trie, read_exports, read_trie
from dyldcache.macho.file import open_macho
from dyldcache.macho.trie_levels import MAX_LEVELS, MIN_SIZE, TrieTerminals, read_terminals

_keys = st.binary(min_size=0, max_size=12).map(lambda b: b.replace(b"\0", b"\1"))
_entries = st.dictionaries(_keys, st.binary(min_size=1, max_size=20), max_size=60)


def _spans(found: TrieTerminals, buf: bytes) -> list[tuple[bytes, bytes]]:
    starts, ends = found.starts.tolist(), found.ends.tolist()
    return [(k, buf[a:b]) for k, a, b in zip(found.keys, starts, ends, strict=True)]


def _walked(buf: bytes) -> TrieTerminals:
    keys, starts, ends = _walk_trie(buf, "t", 0)
    return TrieTerminals(keys, np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_entries)
def test_reads_a_linker_layout(entries: dict[bytes, bytes]) -> None:
    # the oracle lays nodes out in pre-order with children in byte order of their labels
    raw = reference_trie(entries)
    if not raw:
        return
    found = read_terminals(raw, MAX_KEY_LENGTH)
    assert found is not None
    assert _spans(found, raw) == sorted(entries.items())


def _encode_tree(rng: random.Random, entries: dict[bytes, bytes]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A trie of ``entries`` with children in a random stored order and nodes placed in a random
    order after a 16 KiB gap (so that every child offset is a 3-byte ULEB with no NUL byte);
    and the (key, payload) pairs in pre-order of the stored child order."""
    # the tree: one node per distinct prefix that is a key or a branching point; for brevity
    # every edge here is one byte long (a node per prefix of every key)
    prefixes = sorted({key[:i] for key in entries for i in range(len(key) + 1)} | {b""})
    index = {p: i for i, p in enumerate(prefixes)}
    children: list[list[int]] = [[] for _ in prefixes]
    for p in prefixes[1:]:
        children[index[p[:-1]]].append(index[p])
    for kids in children:
        rng.shuffle(kids)
    expected: list[tuple[bytes, bytes]] = []
    stack = [0]
    while stack:
        node = stack.pop()
        key = prefixes[node]
        if key in entries:
            expected.append((key, entries[key]))
        stack.extend(reversed(children[node]))

    def size(node: int) -> int:
        key = prefixes[node]
        head = 1 + len(entries[key]) if key in entries else 1
        return head + 1 + 5 * len(children[node])  # label byte, NUL, 3-byte offset

    placed = list(range(1, len(prefixes)))
    rng.shuffle(placed)
    offset = {0: 0}
    at = 1 << 14
    for node in placed:
        offset[node] = at
        at += size(node)
    out = bytearray(at)
    for node, start in offset.items():
        key = prefixes[node]
        payload = entries.get(key)
        assert payload is None or len(payload) < 0x80
        body = bytes([len(payload)]) + payload if payload else b"\0"
        body += bytes([len(children[node])])
        for kid in children[node]:
            off = offset[kid]
            uleb3 = bytes([0x80 | off & 0x7F, 0x80 | (off >> 7) & 0x7F, off >> 14])
            body += prefixes[kid][-1:] + b"\0" + uleb3
        out[start : start + len(body)] = body
    return bytes(out), expected


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(_entries.filter(bool), st.randoms(use_true_random=False))
def test_pre_order_of_stored_children_whatever_the_layout(
    entries: dict[bytes, bytes], rng: random.Random
) -> None:
    raw, expected = _encode_tree(rng, entries)
    found = read_terminals(raw, MAX_KEY_LENGTH)
    assert found is not None
    assert _spans(found, raw) == expected
    assert _spans(_walked(raw), raw) == expected


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(_entries.filter(bool), st.data())
def test_corrupted_tries_are_read_only_as_the_walk_reads_them(
    entries: dict[bytes, bytes], data: st.DataObject
) -> None:
    raw = bytearray(reference_trie(entries))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    buf = bytes(raw[: data.draw(st.integers(1, len(raw)))])
    found = read_terminals(buf, MAX_KEY_LENGTH)
    try:
        walked = _walked(buf)
    except MachOFormatError:
        assert found is None
        return
    if found is not None:
        assert _spans(found, buf) == _spans(walked, buf)


def _chain(depth: int) -> bytes:
    # node k: no payload, one edge "a" to node k + 1 (7 bytes a node); the last is terminal
    raw = bytearray()
    for k in range(depth):
        child = 7 * (k + 1)
        raw += b"\x00\x01a\x00" + bytes([0x80 | child & 0x7F, 0x80 | (child >> 7) & 0x7F, child >> 14])
    return bytes(raw + b"\x01\x01\x00")


def test_unusual_well_formed_tries_are_left_to_the_walk() -> None:
    # a child offset in a padded ULEB that ends in a NUL byte (9 as 89 00) before another edge,
    # whose label byte 0c read as a ULEB would be the right offset of its child
    padded = b"\x00\x02a\x00\x89\x00\x0c\x00\x0c" + b"\x01\x07\x00" + b"\x01\x08\x00"
    assert read_terminals(padded, MAX_KEY_LENGTH) is None
    assert read_trie(padded, "t", 0) == [(b"a", b"\x07"), (b"\x0c", b"\x08")]
    # deeper than MAX_LEVELS
    deep = _chain(MAX_LEVELS)
    assert read_terminals(deep, MAX_KEY_LENGTH) is None
    assert read_terminals(_chain(MAX_LEVELS - 2), MAX_KEY_LENGTH) is not None
    # a key longer than the limit
    assert read_terminals(_chain(40), 39) is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x00\x01a\x00\x00", "outside"),  # child offset 0
        (b"\x00\x01a\x00\x10", "outside"),  # past the end
        (b"\x00\x01a\x00\x05\x00\x01b\x00\x00", "outside"),
        (b"\x00\x02a\x00\x08b\x00\x08\x01\x01\x00", "reached twice"),  # shared node
        (b"\x00\x01a\x00\x05\x00\x01b\x00\x05", "reached twice"),  # a loop
        (b"\x05\x01", "past the end"),  # payload
        (b"\x00\x01abc", "NUL"),
        (b"\x00\x01a\x00\x85", "ULEB"),
    ],
)
def test_malformed_tries_give_the_walks_error(raw: bytes, problem: str) -> None:
    assert read_terminals(raw, MAX_KEY_LENGTH) is None
    with pytest.raises(MachOFormatError) as exc:
        _walk_trie(raw, "t", 0)
    assert problem in exc.value.message


def test_large_tries_take_the_level_path(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = {f"_symbol_{i:05d}_{i * 7919 % 1000}".encode(): bytes([0, i % 120 + 1]) for i in range(3000)}
    raw = reference_trie(entries)
    assert len(raw) >= MIN_SIZE
    calls: list[int] = []

    def counted(buf: bytes, limit: int) -> TrieTerminals | None:
        calls.append(len(buf))
        return read_terminals(buf, limit)

    monkeypatch.setattr(exports_trie, "read_terminals", counted)
    exports = read_exports(raw, "t", 0)
    assert calls == [len(raw)]
    assert [(e.name.encode(), e.address) for e in exports] == [(k, p[1]) for k, p in sorted(entries.items())]


def test_real_tries_agree_with_the_walk() -> None:
    # ld64-linked dylibs: macOS 10.14 /usr/lib (fat; the x86_64 slice) and the iOS 14.4 root
    checked = 0
    for folder in ("macos10.14-x86_64-usr-lib", "ios14.4-arm64-procursus"):
        for path in sorted(shared_path("data", "real", folder).rglob("*.dylib")):
            try:
                image = open_macho(path, "x86_64" if folder.startswith("macos") else "arm64")
                found = image.exports_trie_bytes()
            except MachOFormatError:
                continue
            if found is None or not len(found[0]):
                continue
            buf = bytes(found[0])
            levels = read_terminals(buf, MAX_KEY_LENGTH)
            assert levels is not None, path
            assert _spans(levels, buf) == _spans(_walked(buf), buf), path
            checked += 1
    assert checked > 100


@functools.cache
def _large_trie() -> bytes:
    entries = {
        f"_sym_{i * 7919 % 5003:04d}_{i % 37}".encode(): bytes([i % 3 * 4, i % 120 + 1]) for i in range(1200)
    }
    raw = reference_trie(entries)
    assert len(raw) >= MIN_SIZE
    return raw


def _outcome(raw: bytes, walk: bool) -> object:
    try:
        if walk:
            keys, starts, ends = _walk_trie(raw, "fuzz", 0x1000)
            return [(k, raw[a:b]) for k, a, b in zip(keys, starts, ends, strict=True)]
        return read_trie(raw, "fuzz", 0x1000)
    except MachOFormatError as exc:
        return (exc.offset, exc.message)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_large_corrupted_tries_read_or_fail_as_the_walk_does(data: st.DataObject) -> None:
    raw = bytearray(_large_trie())
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    buf = bytes(raw[: data.draw(st.integers(MIN_SIZE, len(raw)))])
    assert _outcome(buf, walk=False) == _outcome(buf, walk=True)
