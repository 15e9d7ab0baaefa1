"""Memory of a process tree while it runs (Linux /proc), phase by phase.

A build forks workers that share most of their pages with the builder process, so adding their
RSS counts the shared pages several times. This sampler reads, for the process and all its
descendants, both:

- **RSS** (``/proc/PID/statm``, resident pages), summed over the tree: an upper bound;
- **PSS** (``/proc/PID/smaps_rollup``, each shared page divided among the processes that map
  it), summed over the tree: the memory the build really occupies, file-backed pages of the
  mmap'd inputs and outputs included.

The peaks of both sums are kept overall and for each phase (the phase is whatever the build last
announced, see phase_probes.PHASE_MARKER). Samples are taken every ``interval`` seconds (PSS at
most once a second: the kernel walks every page table for it), so a peak that lasts less than
that can be missed; the kernel's own ``ru_maxrss`` (run.py reports it too) cannot miss one, but
it is per process, never a sum.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

MIB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant that is alive now."""
    seen = [pid]
    k = 0
    while k < len(seen):
        seen += _children(seen[k])
        k += 1
    return seen


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


@dataclass(slots=True)
class PhasePeak:
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    processes: int = 0


@dataclass(slots=True)
class TreeSampler:
    """Samples the tree under ``pid`` in a thread until :meth:`stop`."""

    pid: int
    interval: float = 0.2
    pss_interval: float = 1.0
    phase: str = "start"
    peaks: dict[str, PhasePeak] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        last_pss = 0.0
        while not self._stop.is_set():
            pids = process_tree(self.pid)
            rss = sum(map(_rss_bytes, pids)) / MIB
            peak = self.peaks.setdefault(self.phase, PhasePeak())
            if rss > peak.rss_mib:
                peak.rss_mib = rss
                peak.processes = len(pids)
            now = time.monotonic()
            # PSS when the RSS sum is at a new high for the phase, or once a second
            if now - last_pss >= self.pss_interval or rss >= peak.rss_mib:
                pss = sum(map(_pss_bytes, pids)) / MIB
                peak.pss_mib = max(peak.pss_mib, pss)
                last_pss = now
            self.samples += 1
            self._stop.wait(self.interval)

    @property
    def peak_rss_mib(self) -> float:
        return max((p.rss_mib for p in self.peaks.values()), default=0.0)

    @property
    def peak_pss_mib(self) -> float:
        return max((p.pss_mib for p in self.peaks.values()), default=0.0)
