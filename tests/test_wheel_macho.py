"""Our Mach-O reader on Apple-linked images from pinned macOS wheels (tests/wheel_corpus.py): the
smallest image of every wheel (ld64 and ld-prime, x86_64 and arm64, dyld-info opcodes) and the
chained-fixups dylibs of scipy for macOS 14. The mach header and load commands, exports, fixups
(chained, or rebase / bind / lazy-bind / weak-bind opcodes), indirect symbols, data in code and
function starts must equal what llvm-objdump-22 lists (tests/objdump_agreement.py, shared with
test_real_macho).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import objdump
import pytest
from objdump_agreement import check_image
from oracles import load_command_payload
from wheel_corpus import CHAINED_WHEELS, WHEELS, cache_dir, macho_paths

from dyldcache.macho.file import open_macho

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
    objdump.prefetch([(p, objdump.listing_flags()) for p in selected])
    return selected


def test_corpus_has_both_fixup_styles(images: list[Path]) -> None:
    chained = [p for p in images if load_command_payload(p.read_bytes(), LC_DYLD_CHAINED_FIXUPS)]
    assert len(chained) >= 2, "scipy's macOS 14 dylibs use chained fixups"
    assert any(p.name.endswith(".dylib") for p in chained)
    assert len(images) - len(chained) >= len(WHEELS)
    archs = Counter(open_macho(p).arch for p in images)
    assert archs["arm64"] and archs["x86_64"]


def test_reader_agrees_with_objdump(images: list[Path]) -> None:
    totals: Counter[str] = Counter()
    for path in images:
        totals.update(check_image(open_macho(path), objdump.listing(path)))
    assert (
        totals["chained_fixups"] > 100 and totals["rebases"] + totals["binds"] + totals["lazy_binds"] > 1000
    )
    assert totals["exports"] > 100 and totals["weak_binds"] and totals["function_starts"]
