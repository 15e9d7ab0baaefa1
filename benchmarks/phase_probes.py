"""What the benchmark's build process records phase by phase (run.py --child-build): phase
markers on standard error for the parent's memory sampler, a cProfile of each phase (in the
builder process and in each of its worker processes), and tracemalloc's view of what each phase
leaves allocated.

The probes hang on the builder's own progress hooks (``BuildProgress.phase``): a phase starts
when the builder says so, and ends when the next one starts or the build returns. Workers are
forked by ``dyldcache.builder.workers``; the profile of a worker is written when its loop ends.
"""

from __future__ import annotations

import cProfile
import functools
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from dyldcache.builder import workers
from dyldcache.builder.progress import BuildProgress

#: marker lines on standard error: "@phase NAME SECONDS" (SECONDS since the build started)
PHASE_MARKER = "@phase"
#: allocation sites listed per phase in the tracemalloc report
TOP_SITES = 25
#: frames kept per traced allocation: enough to reach the builder's line from a pickle or a
#: numpy helper; each frame more slows the traced build (12 frames: ~25x, 3: ~5x)
TRACE_FRAMES = int(os.environ.get("BENCH_TRACE_FRAMES", "3"))


def _rss_now_mib() -> float:
    """Resident set size of this process now (Linux: /proc/self/statm), in MiB."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except OSError:
        return 0.0


class PhaseProbes(BuildProgress):
    """A progress hook that marks, profiles and traces each phase.

    ``profile_dir``: one ``<phase>.prof`` per phase for this process and
    ``<phase>.worker<pid>.prof`` per worker. ``trace``: tracemalloc is on for the whole build;
    at each phase's end the traced size now and its peak during the phase, the RSS, and the
    largest allocation sites still held are kept (:meth:`trace_report`).
    """

    def __init__(self, profile_dir: str | None, trace: bool) -> None:
        super().__init__()
        self.t0 = time.perf_counter()
        self.current: str | None = None
        self.profile_dir = profile_dir
        self.profiler: cProfile.Profile | None = None
        self.trace = trace
        self.trace_rows: list[dict[str, Any]] = []
        if profile_dir is not None:
            os.makedirs(profile_dir, exist_ok=True)
        if profile_dir is not None or trace:
            _wrap_workers(profile_dir, lambda: self.current)
        if trace:
            tracemalloc.start(TRACE_FRAMES)

    def phase(self, name: str) -> None:
        self._end_phase()
        self.current = name
        print(f"{PHASE_MARKER} {name} {time.perf_counter() - self.t0:.3f}", file=sys.stderr, flush=True)
        if self.trace:
            tracemalloc.reset_peak()
        if self.profile_dir is not None:
            self.profiler = cProfile.Profile()
            self.profiler.enable()

    def retry(self, evicted: int) -> None:
        print(f"{PHASE_MARKER} retry {time.perf_counter() - self.t0:.3f}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """The build returned: close the last phase."""
        self._end_phase()
        self.current = None
        print(f"{PHASE_MARKER} end {time.perf_counter() - self.t0:.3f}", file=sys.stderr, flush=True)

    def _end_phase(self) -> None:
        if self.current is None:
            return
        if self.profiler is not None and self.profile_dir is not None:
            self.profiler.disable()
            self.profiler.dump_stats(os.path.join(self.profile_dir, f"{self.current}.prof"))
            self.profiler = None
        if self.trace:
            traced, peak = tracemalloc.get_traced_memory()
            t_snap = time.perf_counter()
            snapshot = tracemalloc.take_snapshot()
            self.trace_rows.append(
                {
                    "phase": self.current,
                    "traced_mib": traced / (1 << 20),
                    "peak_traced_mib": peak / (1 << 20),
                    "rss_mib": _rss_now_mib(),
                    "sites": _by_builder_line(snapshot),
                }
            )
            self.trace_rows[-1]["snapshot_seconds"] = time.perf_counter() - t_snap

    def trace_report(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.trace_rows, f, indent=1)
            f.write("\n")


def _by_builder_line(snapshot: tracemalloc.Snapshot) -> list[dict[str, Any]]:
    """The largest allocation sites still held, each named by the innermost frame in
    dyldcache's own code (so that a numpy array or a pickle received from a worker is charged to
    the builder line that asked for it), with the innermost frame of all beside it."""
    sizes: dict[tuple[str, str], list[int]] = {}
    # grouped by whole traceback first (far fewer groups than blocks)
    for stat in snapshot.statistics("traceback"):
        frames = list(reversed(stat.traceback))  # tracemalloc lists the oldest frame first
        inner = f"{_short(frames[0].filename)}:{frames[0].lineno}"
        mine = next((f for f in frames if "/dyldcache/" in f.filename.replace(os.sep, "/")), None)
        where = f"{_short(mine.filename)}:{mine.lineno}" if mine is not None else inner
        acc = sizes.setdefault((where, inner), [0, 0])
        acc[0] += stat.size
        acc[1] += stat.count
    top = sorted(sizes.items(), key=lambda kv: -kv[1][0])[:TOP_SITES]
    return [
        {"where": where, "allocated_in": inner, "mib": size / (1 << 20), "blocks": count}
        for (where, inner), (size, count) in top
    ]


@functools.cache
def _short(filename: str) -> str:
    """``dyldcache/builder/inputs.py`` rather than the full path of the checkout or venv."""
    parts = filename.replace(os.sep, "/").split("/")
    for anchor in ("dyldcache", "numpy", "benchmarks"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor) :])
    return "/".join(parts[-2:])


def _wrap_workers(profile_dir: str | None, phase: Callable[[], str | None]) -> None:
    """In every forked worker of ``dyldcache.builder.workers``: stop tracemalloc (only the
    builder process is traced) and, with ``profile_dir``, profile the worker from its start to
    the end of its loop into ``<phase>.worker<pid>.prof`` (the phase it was forked in)."""
    serve = workers._Workers._serve

    def wrapped_serve(self: Any, pipe: Any, parent_end: Any) -> None:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        if profile_dir is None:
            serve(self, pipe, parent_end)
            return
        name = phase() or "unknown"
        prof = cProfile.Profile()
        prof.enable()
        try:
            serve(self, pipe, parent_end)
        finally:
            prof.disable()
            prof.dump_stats(os.path.join(profile_dir, f"{name}.worker{os.getpid()}.prof"))

    workers._Workers._serve = wrapped_serve  # type: ignore[method-assign]
