"""``dyldcache build``'s progress display (issue 10): on a terminal, one line that goes through the
seven phases of dyld-1162's builder in order (and the example's linking step); nothing at all
when standard error is not a terminal, with ``-q`` or with ``--json``.

The terminal is a pseudo-terminal (``os.openpty``) given to the build as its standard error,
with a window size set as a terminal emulator sets it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import cli_env

from dyldcache.builder.progress import EXTRA_STEPS, PHASES

#: the seven phases of NewSharedCacheBuilder::build in dyld-1162, in the order it runs them
DYLD_PHASES = [
    "calculate_inputs",
    "estimate_global_optimizations",
    "create_subcaches",
    "pre_dylib_emit",
    "run_dylib_passes",
    "post_dylib_emit",
    "finalize",
]


def _build_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """``dyldcache build ARGS`` with a pseudo-terminal of 120x24 as standard error; returns
    (status, standard output, what the terminal received)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dyldcache", "build", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=cli_env(),
    )
    os.close(slave)
    received = b""
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        received += data
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.wait(timeout=120)
    return proc.returncode, out, received.decode("utf-8", "replace")


def _frames(terminal: str) -> list[str]:
    """The successive states of the line (tqdm redraws it after a carriage return)."""
    return [f.strip() for f in re.split(r"[\r\n]+", terminal) if f.strip()]


def test_the_display_goes_through_every_phase(tmp_path: Path) -> None:
    status, out, terminal = _build_on_a_terminal("--example", "--arch", "arm64", "-o", str(tmp_path / "o"))
    assert status == 0, terminal
    assert out.startswith("built "), "the summary still goes to standard output"
    assert list(PHASES) == DYLD_PHASES
    frames = _frames(terminal)
    labels = [EXTRA_STEPS["link_examples"]] + [
        f"[{k}/7] {PHASES[name]}" for k, name in enumerate(DYLD_PHASES, 1)
    ]
    firsts = []
    for label in labels:
        seen = [i for i, f in enumerate(frames) if f.startswith(label)]
        assert seen, f"{label!r} never shown: {frames}"
        firsts.append(seen[0])
    assert firsts == sorted(firsts), "phases shown out of order"
    # the counted steps reach their totals: the 7 example dylibs, linked then built
    assert any(f.startswith(labels[0]) and "7/7 dylibs" in f for f in frames), frames
    assert any(f.startswith(labels[1]) and "7/7 files" in f for f in frames), frames
    assert any(f.startswith(labels[5]) and "7/7 dylibs" in f for f in frames), frames
    assert "Traceback" not in terminal


@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_no_display_with_quiet_or_json(tmp_path: Path, flag: str) -> None:
    status, out, terminal = _build_on_a_terminal(
        "--example", "--arch", "arm64", flag, "-o", str(tmp_path / "o")
    )
    assert status == 0
    assert terminal == ""
    if flag == "--json":
        assert json.loads(out)["dylibs"]
    else:
        assert out == ""


def test_no_display_without_a_terminal(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dyldcache",
            "build",
            "--example",
            "--arch",
            "arm64",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert (
        proc.stdout == f"built {tmp_path / 'o' / 'dyld_shared_cache_arm64'} (7 dylibs, 1 file, 0 evicted)\n"
    )
