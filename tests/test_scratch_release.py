"""Scratch arrays given back once read for the last time (builder/scratch.py ``release``): the
space of that array alone is freed, its neighbours in the same file read back unchanged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from dyldcache.builder.scratch import ScratchFiles, release


def _allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_release_frees_one_array_and_keeps_its_neighbours(tmp_path: Path) -> None:
    scratch = ScratchFiles(str(tmp_path))
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, 1000, dtype=np.uint64)  # 8000 bytes: ends inside a page
    b = rng.integers(0, 2**31, 300_000, dtype=np.int32)  # 1.2 MB: whole pages to free
    c = rng.integers(0, 255, 5001, dtype=np.uint8)
    stored = [scratch.write(x) for x in (a, b, c)]
    path = stored[0].path
    size, before = os.path.getsize(path), _allocated(path)
    release(stored[1])
    assert os.path.getsize(path) == size  # the other arrays keep their offsets
    assert stored[0].load().tobytes() == a.tobytes()
    assert stored[2].load().tobytes() == c.tobytes()
    if sys.platform.startswith("linux"):
        assert _allocated(path) <= before - 1_100_000  # the pages wholly inside b are gone
        assert not stored[1].load().any()  # a hole reads as zeros
    release(a)  # an array kept in memory: nothing to give back
    scratch.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="hole punching is Linux's")
def test_release_of_an_empty_array_is_harmless(tmp_path: Path) -> None:
    scratch = ScratchFiles(str(tmp_path))
    x = scratch.write(np.arange(10, dtype=np.int64))
    empty = scratch.write(np.zeros(0, dtype=np.int64))
    release(empty)
    assert x.load().tolist() == list(range(10))
    scratch.close()
