"""The builder's compact export table (builder/export_table.py) against the plain list of
exports it replaces: the same exports in the same order, every lookup the same as a dictionary
lookup, through pickling too (phase 1's workers send tables back to the builder)."""

from __future__ import annotations

import pickle

import pytest
from conftest import shared_path
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.builder import export_table
from dyldcache.builder.export_table import ExportTable
from dyldcache.macho import constants as C
from dyldcache.macho.exports_trie import Export
from dyldcache.macho.fat import is_fat, parse_fat
from dyldcache.macho.file import parse_macho

_names = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=0, max_size=12
) | st.binary(min_size=1, max_size=6).map(lambda b: b.replace(b"\0", b"x").decode("utf-8", "surrogateescape"))


@st.composite
def _export(draw: st.DrawFn, name: str) -> Export:
    kind = draw(st.sampled_from(["regular", "weak", "tlv", "absolute", "resolver", "reexport"]))
    address = draw(st.integers(0, 2**64 - 1))
    if kind == "reexport":
        other = draw(st.sampled_from(["", "_other", name + "$alias"]))
        return Export(name, C.EXPORT_SYMBOL_FLAGS_REEXPORT, 0, 0, draw(st.integers(1, 300)), other)
    if kind == "resolver":
        return Export(name, C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER, address, draw(st.integers(1, 2**40)))
    flags = {
        "regular": 0,
        "weak": C.EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION,
        "tlv": C.EXPORT_SYMBOL_FLAGS_KIND_THREAD_LOCAL,
        "absolute": C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE,
    }[kind]
    return Export(name, flags, address)


@st.composite
def _exports(draw: st.DrawFn) -> list[Export]:
    names = draw(st.lists(_names, unique=True, max_size=40))
    return [draw(_export(n)) for n in names]


def _check(exports: list[Export], absent: list[str]) -> None:
    for table in (ExportTable(exports), pickle.loads(pickle.dumps(ExportTable(exports)))):
        assert len(table) == len(exports)
        assert list(table) == exports
        by_name = {e.name: e for e in exports}
        for e in exports:
            assert table.get(e.name) == e
        for name in absent:
            assert table.get(name) == by_name.get(name)
        # the batched lookup: the index of the first export of each name, -1 for none
        asked = [e.name for e in exports[::-1]] + absent
        index_of = {e.name: i for i, e in enumerate(exports)}
        assert table.lookup_many(asked).tolist() == [index_of.get(n, -1) for n in asked]
        assert table.flags.tolist() == [e.flags for e in exports]
        assert table.address.tolist() == [e.address for e in exports]
        assert table.has_resolver == any(e.is_resolver for e in exports)


@settings(max_examples=150, deadline=None)
@given(_exports(), st.lists(_names, max_size=10))
def test_table_equals_the_list(exports: list[Export], absent: list[str]) -> None:
    _check(exports, absent)


def test_hash_collisions_are_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    # names never hash alike by design, so check the probe loops with every name in one bucket
    monkeypatch.setattr(export_table, "name_hash", lambda _key: 7)
    exports = [Export("_a", 0, 1), Export("_b", 0, 2), Export("_c", 0, 3)]
    table = ExportTable(exports)
    assert [table.get(n) for n in ("_a", "_b", "_c", "_d")] == [*exports, None]
    assert table.lookup_many(["_c", "_d", "_a", "_b"]).tolist() == [2, -1, 0, 1]


def test_real_dylibs() -> None:
    """Every export of Apple-linked dylibs (re-exports, resolvers, absolute symbols)."""
    folder = shared_path("data", "real", "macos10.14-x86_64-usr-lib", "usr", "lib")
    seen = 0
    for path in sorted(folder.glob("*.dylib"))[:40]:
        if path.is_symlink():
            continue
        data = path.read_bytes()
        if is_fat(data):
            if not any(s.arch == "x86_64" for s in parse_fat(data, str(path))):
                continue
            image = parse_macho(data, str(path), "x86_64")
        else:
            image = parse_macho(data, str(path))
        exports = image.exports
        _check(exports, ["_no_such_symbol", ""])
        # the table phase 1 reads straight from the trie holds the same
        assert list(ExportTable.of_image(image)) == exports
        seen += len(exports)
    assert seen > 5000
