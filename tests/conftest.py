"""Shared test helpers: where the shared data lives, and which oracles are present.

Tests that need ``../shared`` or an external tool skip cleanly when it is absent,
except under CI (``DYLDCACHE_REQUIRE_ORACLES=1``), where a missing oracle is a failure:
a test that silently skips everywhere could never fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from cache_fixtures import CacheFactory

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: the committed fixture objects and stubs ship inside the package (the README example uses them)
EXAMPLES = REPO / "src" / "dyldcache" / "examples"
REQUIRE_ORACLES = os.environ.get("DYLDCACHE_REQUIRE_ORACLES") == "1"

# CI (.ci/run) draws the same hypothesis examples on every run, so main stays green or red for a
# reason in the code; a developer's runs draw new ones (and keep failures in .hypothesis/)
settings.register_profile("ci", derandomize=True, database=None)
if REQUIRE_ORACLES:
    settings.load_profile("ci")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that runs this checkout's sources (``extra`` added)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m dyldcache ARGS`` in a real process, with this checkout's sources first."""
    env = cli_env()
    return subprocess.run(
        [sys.executable, "-m", "dyldcache", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=timeout,
    )


class Hang(AssertionError):
    """A parse that ran past its time limit (see time_limit)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (Hang) instead of hanging, where the platform has interval timers."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _missing(what: str) -> None:
    if REQUIRE_ORACLES:
        pytest.fail(f"{what} is required in CI (DYLDCACHE_REQUIRE_ORACLES=1) but missing")
    pytest.skip(f"{what} not available")


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the test when it is absent (fails in CI, where
    DYLDCACHE_REQUIRE_ORACLES=1: CI runs with ../shared beside the clone)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        _missing(str(p))
    return p


def tool(name: str) -> str:
    """Full path of an external tool; skips (or fails in CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        _missing(name)
    assert path is not None
    return path


def python_module(name: str) -> None:
    """Skip (or fail in CI) when a test-only Python module cannot be imported."""
    try:
        __import__(name)
    except ImportError:
        _missing(f"Python module {name}")


LLVM_OBJDUMP = "llvm-objdump-22"


@pytest.fixture(scope="session")
def cache_factory(tmp_path_factory: pytest.TempPathFactory) -> CacheFactory:
    """Builds the caches of cache_fixtures.CACHES on demand, each once per session."""
    from cache_fixtures import CacheFactory

    return CacheFactory(tmp_path_factory.mktemp("caches"))


@pytest.fixture(scope="session")
def generated_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root of 80 dylibs from benchmarks/make_corpus.py (arm64, about 9 MiB): big enough for
    both worker pools to run and for a build to last a second or so, small enough to make in a
    few seconds."""
    root = tmp_path_factory.mktemp("generated-corpus") / "root"
    env = cli_env()
    cmd = [sys.executable, str(REPO / "benchmarks" / "make_corpus.py"), "--arch", "arm64"]
    cmd += ["--root", str(root), "--count", "80", "--scale", "0.5", "--seed", "3", "--jobs", "2", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root
