"""The bind pass refuses a dylib whose split seg info moves a rebase target outside every one of
the dylib's cached segments (builder/bind.py ``_check_rebase_targets``): a target may lie
anywhere in a segment or at its end, and nowhere else."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.builder.bind import _check_rebase_targets
from dyldcache.builder.layout import ChunkKind
from dyldcache.errors import BuildError


def _seg(addr: int, size: int, chunk: object = True, kind: object = ChunkKind.DYLIB_TEXT) -> SimpleNamespace:
    return SimpleNamespace(cache_vmaddr=addr, cache_size=size, chunk=chunk, kind=kind)


def _dylib(spans: list[tuple[int, int]]) -> SimpleNamespace:
    segs = [_seg(a, n) for a, n in spans]
    # __LINKEDIT (no kind) and an unplaced segment never count
    segs.append(_seg(0x9000_0000, 0x1000, kind=None))
    segs.append(_seg(0xA000_0000, 0x1000, chunk=None))
    return SimpleNamespace(segments=segs, install_name="/usr/lib/libx.dylib")


# segments in any order, gaps between them, one empty
_SPANS = [(0x3000, 0x1000), (0x1000, 0x800), (0x5000, 0), (0x4000, 0x1000)]


def _inside(t: int) -> bool:
    return any(a <= t <= a + n for a, n in _SPANS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 0xB000_0000), min_size=1, max_size=20))
def test_targets_inside_a_segment_or_at_its_end_pass(targets: list[int]) -> None:
    moved = np.array(targets, dtype=np.uint64)
    addrs = np.arange(len(targets), dtype=np.uint64)
    d = _dylib(_SPANS)
    outside = [t for t in targets if not _inside(t)]
    if not outside:
        _check_rebase_targets(d, addrs, moved, moved)  # type: ignore[arg-type]
        return
    with pytest.raises(BuildError) as exc:
        _check_rebase_targets(d, addrs, moved, moved)  # type: ignore[arg-type]
    assert f"moves to {outside[0]:#x}" in str(exc.value)
    assert f"({len(outside)} such pointer" in str(exc.value)


@pytest.mark.parametrize("t", [0x1000, 0x17FF, 0x1800, 0x3000, 0x4000, 0x5000])
def test_edges_are_inside(t: int) -> None:
    moved = np.array([t], dtype=np.uint64)
    _check_rebase_targets(_dylib(_SPANS), moved, moved, moved)  # type: ignore[arg-type]


@pytest.mark.parametrize("t", [0, 0xFFF, 0x1801, 0x2FFF, 0x5001, 0x9000_0000, 0xA000_0000])
def test_gaps_linkedit_and_unplaced_segments_are_outside(t: int) -> None:
    moved = np.array([t], dtype=np.uint64)
    with pytest.raises(BuildError, match="split seg info and fixups disagree"):
        _check_rebase_targets(_dylib(_SPANS), moved, moved, moved)  # type: ignore[arg-type]
