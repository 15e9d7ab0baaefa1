"""The fuzz targets of fuzz/targets.py in the suite: every saved crasher is replayed (each once broke
a contract and must not again), and a short deterministic atheris slice of each target runs
(fixed seed and run count), which must find nothing new."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_module

sys.path.insert(0, str(REPO / "fuzz"))
import targets

#: inputs per target in the suite's slice (the builder builds a cache per input)
SLICE = {"reader": 2000, "cache": 2000, "builder": 40}


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_saved_crashers_no_longer_break_the_target(target: str) -> None:
    for path in targets.crashers(target):
        targets.run_one(target, path.read_bytes())


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_a_short_fuzzing_slice_finds_nothing(target: str, tmp_path: Path) -> None:
    python_module("atheris")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "fuzz" / "run.py"),
            target,
            "--runs",
            str(SLICE[target]),
            "--seed",
            "1",
            "--crashers",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    found = sorted(p.name for p in tmp_path.iterdir())
    assert proc.returncode == 0 and found == [], proc.stderr[-3000:]
