"""Ctrl-C: a build ends promptly with status 130, no traceback, and the output folder exactly as
it was (issue 10: the parallel phase could hang, a .tmp file or the staging folder could be left
behind, a very early interrupt printed a traceback).

The end-to-end test runs ``python -m dyldcache build`` on a generated corpus of 80 dylibs in
its own process group and sends SIGINT to the whole group, as a terminal's Ctrl-C does (the
workers get it too), after delays spread over the whole run: while Python starts and imports,
during every phase, around the commit and after the end. Renames during the commit last
microseconds, so the put-back of the earlier files is also checked deterministically, with a
real SIGINT sent from inside the commit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, snapshot
from conftest import REPO, cli_env

import dyldcache.builder.output as output_module
from dyldcache.builder.output import STAGING_PREFIX, OutputSet
from dyldcache.builder.pipeline import BuildOptions, build_cache
from dyldcache.builder.workers import run_tasks
from dyldcache.errors import BuildError
from dyldcache.interrupts import interrupts_deferred

#: the longest a build may take to end after SIGINT (the issue asks for "within a second")
PROMPT = 2.0


def _without_epoch() -> dict[str, str]:
    env = cli_env()
    env.pop("SOURCE_DATE_EPOCH", None)
    return env


def _build_cmd(out: Path, root: Path, jobs: str) -> list[str]:
    args = ["build", "--arch", "arm64", "-q", "-j", jobs, "-o", str(out), "--root", str(root)]
    return [sys.executable, "-m", "dyldcache", *args]


def _interrupted_build(cmd: list[str], delay: float) -> tuple[int, str, float]:
    """Run ``cmd`` in a new process group, SIGINT the group after ``delay`` seconds; returns
    (status, stderr, seconds from the signal to the end)."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_without_epoch(),
        start_new_session=True,
    )
    try:
        time.sleep(delay)
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):  # already over
            os.killpg(proc.pid, signal.SIGINT)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"the build still runs 30 s after SIGINT (sent after {delay:.2f} s): it hangs")
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigint_at_any_moment_leaves_the_earlier_cache(
    generated_corpus: Path, cache_factory: CacheFactory, tmp_path: Path, jobs: str
) -> None:
    earlier = Path(cache_factory.build("arm64").outdir)  # another cache of the same name
    reference = tmp_path / "reference"
    started = time.monotonic()
    done = subprocess.run(
        _build_cmd(reference, generated_corpus, jobs), capture_output=True, text=True, env=_without_epoch()
    )
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    new = snapshot(reference)
    old = snapshot(earlier)
    assert new != old
    out = tmp_path / "out"
    # very early (before Python has started, then while it imports), through every phase, around
    # the commit, and after the end
    delays = [0.0, 0.1, 0.2] + [duration * f for f in (0.3, 0.5, 0.7, 0.85, 0.95, 1.2)]
    outcomes = []
    for delay in delays:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(earlier, out)
        status, err, took = _interrupted_build(_build_cmd(out, generated_corpus, jobs), delay)
        left = snapshot(out)
        where = f"SIGINT after {delay:.2f} s (build takes {duration:.2f} s), status {status}: {err!r}"
        outcomes.append(status)
        assert "Exception ignored" not in err, where
        if "Traceback" in err:
            # only Python's own start-up (site, runpy), before the first line of dyldcache runs,
            # is out of reach: Python prints that traceback itself and exits with 1 or by the signal
            assert str(REPO / "src") not in err and status in (1, -signal.SIGINT), where
            assert left == old, where
            continue
        assert took < PROMPT, f"{where}: took {took:.2f} s to end"
        if status == 130:
            assert err.strip().endswith("interrupted"), where
            assert left == old, f"{where}: the output folder changed"
        elif status == -signal.SIGINT:
            # the signal came before Python set up its handler, or during its last instants of
            # shutdown (the build was over): the process died of it, which a shell reports as 130
            assert left in (old, new), f"{where}: the output folder holds a mixture"
        else:
            assert status == 0, where
            assert left == new, f"{where}: the build says it succeeded"
        assert not any(n.startswith(STAGING_PREFIX) or ".tmp" in n for n in left), where
    # the signals well inside the build's own time did interrupt it (at least those at a third to
    # seven tenths of it: on a busy machine a run may take half or twice the reference's time, so
    # the earliest ones can come before the handler and the latest ones after the end)
    assert outcomes[1:8].count(130) >= 3, list(zip(delays, outcomes, strict=True))


def test_a_sigint_during_the_commit_puts_the_earlier_files_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT arrives right after the second of three renames: the renames still go to
    the end (no half-renamed cache), then the files go back to their earlier bytes, the file
    that had no earlier version goes away, and the interrupt ends the commit."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "c").write_bytes(b"old main")
    (folder / "c.01").write_bytes(b"old sub")
    (folder / "c.keep").write_bytes(b"not ours to touch")
    before = snapshot(folder)
    files = OutputSet(str(folder), "c")
    files.write("c.01", b"new sub")
    files.write("c.02", b"new sub 2")
    files.write("c", b"new main")
    real_replace = os.replace
    renames: list[str] = []

    def replace_then_interrupt(src: str, dst: str) -> None:
        real_replace(src, dst)
        renames.append(os.path.basename(dst))
        if len(renames) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(output_module.os, "replace", replace_then_interrupt)
    committed = []
    with pytest.raises(KeyboardInterrupt):
        files.commit(["c.01", "c.02", "c"], on_committed=lambda: committed.append(True))
    monkeypatch.undo()
    files.discard()
    assert renames[:3] == ["c.01", "c.02", "c"], "the interrupt cut the renames short"
    assert snapshot(folder) == before, "the earlier files are back and nothing new is left"
    assert committed == []


def test_an_interrupt_after_the_renames_leaves_the_new_files(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    files = OutputSet(str(folder), "c")
    files.write("c", b"new main")
    (folder / "c.01").write_bytes(b"stale subcache")

    def on_committed() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # delivered once the commit is over

    with pytest.raises(KeyboardInterrupt):
        files.commit(["c"], on_committed=on_committed)
    assert sorted(os.listdir(folder)) == ["c"], "the stale file went, the staging folder too"
    assert (folder / "c").read_bytes() == b"new main"


def test_deferred_interrupt_is_raised_on_leaving_the_block() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts_deferred() as deferral:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # plenty of bytecodes at which Python would have raised it
            pass
        reached.append(deferral.pending)
    assert reached == [True]


# ---------------------------------------------------------------------------------------------
# the worker processes


def _children() -> set[int]:
    """Process ids of this process's children (Linux /proc)."""
    me = os.getpid()
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                kids.add(int(entry))
    return kids


@pytest.fixture
def no_new_children() -> Iterator[None]:
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc to list child processes")
    before = _children()
    yield
    assert _children() - before == set(), "worker processes were left behind"


def _square_slowly(i: int) -> int:
    time.sleep(0.01)
    return i * i


def test_workers_return_results_in_order(no_new_children: None) -> None:
    ticks = []
    assert run_tasks(_square_slowly, 50, 3, on_result=lambda: ticks.append(1)) == [i * i for i in range(50)]
    assert len(ticks) == 50


def test_an_interrupt_stops_the_workers_at_once(no_new_children: None) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_tasks(lambda i: time.sleep(5), 8, 2)
        assert time.monotonic() - started < PROMPT
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_worker_that_dies_is_a_build_error(no_new_children: None) -> None:
    def die(i: int) -> int:
        if i == 5:
            os._exit(3)
        return i

    with pytest.raises(BuildError, match="worker process died"):
        run_tasks(die, 20, 2)


def test_a_bug_in_a_task_is_reported_with_its_place(no_new_children: None) -> None:
    def fail(i: int) -> int:
        if i == 7:
            raise ZeroDivisionError("seven")
        return i

    with pytest.raises(BuildError, match="ZeroDivisionError: seven"):
        run_tasks(fail, 20, 2)


def test_an_interrupted_api_build_leaves_no_staging_folder(
    cache_factory: CacheFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT while the dylib passes run in workers: KeyboardInterrupt, nothing written."""
    out = tmp_path / "out"
    out.mkdir()
    import dyldcache.builder.pipeline as pipeline
    from dyldcache.builder.optimizers import DylibResult

    real = pipeline.CacheBuilder.dylib_passes

    def slow(self: pipeline.CacheBuilder, index: int) -> DylibResult:
        if index == 0:
            os.kill(os.getppid(), signal.SIGINT)  # from a worker to the parent, as a Ctrl-C would
        time.sleep(0.2)
        return real(self, index)

    monkeypatch.setattr(pipeline.CacheBuilder, "dylib_passes", slow)
    monkeypatch.setattr(pipeline, "run_tasks", _force_workers(pipeline.run_tasks))
    with pytest.raises(KeyboardInterrupt):
        build_cache(BuildOptions(arch="arm64", output_dir=str(out), root=cache_factory.root("arm64"), jobs=2))
    assert os.listdir(out) == []


def _force_workers(run):  # type: ignore[no-untyped-def]
    """run_tasks with workers even for the 7 example dylibs (the builder uses them from 8 on)."""

    def forced(task, count, jobs, *, on_result=None):  # type: ignore[no-untyped-def]
        return run(task, count, 2, on_result=on_result)

    return forced
