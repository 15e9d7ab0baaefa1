"""Our Mach-O reader on Apple-linked images from pinned macOS wheels (tests/wheel_corpus.py): the
smallest image of every wheel (ld64 and ld-prime, x86_64 and arm64, dyld-info opcodes) and the
chained-fixups dylibs of scipy for macOS 14. Segments and sections, dependencies, exports and
fixups must equal what llvm-objdump-22 lists (--private-headers, --dylibs-used, --exports-trie,
--dyld-info for chained fixups, --rebase/--bind/--lazy-bind for opcodes).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import objdump
import pytest
from oracles import load_command_payload
from wheel_corpus import CHAINED_WHEELS, WHEELS, cache_dir, macho_paths

from dyldcache.macho.file import open_macho
from dyldcache.macho.fixups import FIXUP_FLAG_LAZY, FixupKind

LC_DYLD_CHAINED_FIXUPS = 0x80000034


def _wheel_of(path: Path) -> str:
    return path.relative_to(cache_dir() / "wheels").parts[0]


def _selected() -> list[Path]:
    """The smallest image and the smallest .dylib of each opcode wheel, and every chained-fixups
    image of the chained wheels."""
    smallest: dict[tuple[str, bool], Path] = {}
    for p in macho_paths(WHEELS):
        key = (_wheel_of(p), p.suffix == ".dylib")
        if key not in smallest or p.stat().st_size < smallest[key].stat().st_size:
            smallest[key] = p
    chained = [
        p for p in macho_paths(CHAINED_WHEELS) if load_command_payload(p.read_bytes(), LC_DYLD_CHAINED_FIXUPS)
    ]
    return sorted(smallest.values()) + sorted(chained)


@pytest.fixture(scope="module")
def images() -> list[Path]:
    selected = _selected()
    assert len(selected) >= len(WHEELS) + 2
    objdump.prefetch(
        [(p, f) for p in selected for f in [("--private-headers",), ("--dylibs-used",), ("--exports-trie",)]]
    )
    return selected


def test_corpus_has_both_fixup_styles(images: list[Path]) -> None:
    chained = [p for p in images if load_command_payload(p.read_bytes(), LC_DYLD_CHAINED_FIXUPS)]
    assert len(chained) >= 2, "scipy's macOS 14 dylibs use chained fixups"
    assert any(p.name.endswith(".dylib") for p in chained)
    assert len(images) - len(chained) >= len(WHEELS)
    archs = Counter(open_macho(p).arch for p in images)
    assert archs["arm64"] and archs["x86_64"]


def _check_segments(path: Path) -> None:
    image = open_macho(path)
    ph = objdump.private_headers(path)
    assert [
        (
            s.name,
            s.vmaddr,
            s.vmsize,
            s.fileoff,
            s.filesize,
            [(x.sectname, x.addr, x.size, x.offset) for x in s.sections],
        )
        for s in image.segments
    ] == [
        (
            s.name,
            s.vmaddr,
            s.vmsize,
            s.fileoff,
            s.filesize,
            [(x.sectname, x.addr, x.size, x.offset) for x in s.sections],
        )
        for s in ph.segments
    ]


def _check_dependencies(path: Path) -> None:
    image = open_macho(path)
    used = objdump.dylibs_used(path)
    ids = [d.path for d in ([image.id_dylib] if image.id_dylib else [])]
    expected = [name for name, _ in used]
    assert ids + [d.path for d in image.dylibs] == expected
    for d, (_, attrs) in zip(image.dylibs, used[len(ids) :], strict=True):
        words = attrs.replace(",", " ").split()
        assert d.is_weak == ("weak" in words), (d, attrs)
        assert d.is_reexport == ("reexport" in words), (d, attrs)


def _check_exports(path: Path) -> int:
    image = open_macho(path)
    base = image.base_address
    rows = {r.name: r for r in objdump.exports_trie(path)}
    ours = {e.name: e for e in image.exports}
    assert sorted(ours) == sorted(rows)
    for name, e in ours.items():
        r = rows[name]
        assert e.is_weak_def == ("weak_def" in r.attributes), r
        assert e.is_reexport == (r.reexport_from is not None), r
        if not e.is_reexport and not e.is_absolute:
            assert r.address == e.address + base, r
    return len(ours)


def _check_fixups(path: Path) -> int:
    image = open_macho(path)
    fixups = image.fixups
    records = fixups.records
    if fixups.source == "chained":
        rows = objdump.dyld_info(path)
        assert Counter(r.kind for r in rows) == Counter(
            {
                "rebase": int((records["kind"] == FixupKind.REBASE).sum()),
                "bind": int((records["kind"] == FixupKind.BIND).sum()),
            }
        )
        assert [r.address for r in rows] == [int(a) for a in records["address"]]
        binds = {r.address: (r.symbol, r.addend) for r in rows if r.kind == "bind"}
        for r in records[records["kind"] == FixupKind.BIND]:
            assert binds[int(r["address"])] == (fixups.import_name(r), int(r["addend"]))
        rebases = {r.address: r.target for r in rows if r.kind == "rebase"}
        for r in records[records["kind"] == FixupKind.REBASE]:
            assert rebases[int(r["address"])] == int(r["target"]) - image.base_address
        return len(rows)
    assert fixups.source == "opcodes"
    rebase_rows = objdump.rebase_table(path)
    bind_rows = objdump.bind_table(path)
    lazy_rows = objdump.lazy_bind_table(path)
    rebases = records[records["kind"] == FixupKind.REBASE]
    lazy = (records["flags"] & FIXUP_FLAG_LAZY) != 0
    binds = records[(records["kind"] == FixupKind.BIND) & ~lazy]
    lazies = records[(records["kind"] == FixupKind.BIND) & lazy]
    assert (len(rebases), len(binds), len(lazies)) == (len(rebase_rows), len(bind_rows), len(lazy_rows))
    assert sorted(int(a) for a in rebases["address"]) == sorted(a for _, _, a, _ in rebase_rows)
    assert sorted((int(r["address"]), fixups.import_name(r), int(r["addend"])) for r in binds) == sorted(
        (b.address, b.symbol, b.addend) for b in bind_rows
    )
    assert sorted((int(r["address"]), fixups.import_name(r)) for r in lazies) == sorted(
        (a, s) for _, _, a, _, s in lazy_rows
    )
    return len(records)


def test_reader_agrees_with_objdump(images: list[Path]) -> None:
    total_fixups = total_exports = 0
    for path in images:
        _check_segments(path)
        _check_dependencies(path)
        total_exports += _check_exports(path)
        total_fixups += _check_fixups(path)
    assert total_fixups > 1000 and total_exports > 100
