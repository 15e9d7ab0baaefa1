"""Phase timers (``--time-passes``): one scope per phase, plus per-dylib passes summed over
all dylibs, because printing one line per dylib would drown the output."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Timer:
    phases: list[tuple[str, float]] = field(default_factory=list)
    aggregates: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases.append((name, time.perf_counter() - start))

    def add(self, name: str, seconds: float) -> None:
        self.aggregates[name] = self.aggregates.get(name, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(t for _, t in self.phases)

    def report(self) -> str:
        lines = [f"{name:<28} {t * 1000:10.1f} ms" for name, t in self.phases]
        if self.aggregates:
            lines.append("per-dylib passes (summed over dylibs and workers):")
            lines += [f"  {name:<26} {t * 1000:10.1f} ms" for name, t in self.aggregates.items()]
        lines.append(f"{'total':<28} {self.total * 1000:10.1f} ms")
        lines.append(f"{'peak RSS':<28} {peak_rss_mib():10.1f} MiB")
        return "\n".join(lines)


def peak_rss_mib() -> float:
    """Peak resident set size of this process and its finished children, in MiB."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return max(self_kb, child_kb) * scale / (1 << 20)
