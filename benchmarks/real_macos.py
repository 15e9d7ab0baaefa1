#!/usr/bin/env python3
"""Times ``dyldcache build`` on the real macOS 10.14 ``/usr/lib`` of ../shared beside ``cp -r`` of
the same root, and reports peak memory.

    python benchmarks/real_macos.py [--repeat 3] [--jobs N] [--work DIR] [--json FILE|-]

The root is prepared as the tests prepare it (tests/standins.py ``prepare_macos_root``: link texts
turned back into links, install-name links restored, stand-ins for libobjc and the frameworks);
each build runs in a fresh process (run.py's child build), and ``cp -r`` copies the prepared root
(symlinks as links) to a scratch folder in the same work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

import run  # noqa: E402
from standins import prepare_macos_root  # noqa: E402

SOURCE = REPO.parent / "shared" / "data" / "real" / "macos10.14-x86_64-usr-lib"
MIB = 1024 * 1024


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "real-macos")
    ap.add_argument("--json", default=None, help="write the results as JSON to FILE (- for stdout)")
    args = ap.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"{SOURCE} is absent (the ../shared data folder)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    root, _texts, _links, standins = prepare_macos_root(SOURCE, args.work)
    prepare = time.perf_counter() - t0
    input_bytes = tree_bytes(root)
    out = str(args.work / "cache")
    builds = [run.run_build("x86_64", str(root), out, args.jobs, None) for _ in range(args.repeat)]
    copies = [run.time_copy(str(root), str(args.work / "copy")) for _ in range(args.repeat)]
    best = min(builds, key=lambda r: r["seconds"])
    result = {
        "input_bytes": input_bytes,
        "standins": len(standins),
        "prepare_seconds": prepare,
        "dylibs": len(best["dylibs"]),
        "evictions": len(best["evictions"]),
        "output_bytes": best["output_bytes"],
        "build_seconds": [r["seconds"] for r in builds],
        "build_process_seconds": [r["process_seconds"] for r in builds],
        "cp_seconds": copies,
        "peak_rss_builder_mib": best["peak_rss_self_mib"],
        "peak_rss_largest_worker_mib": best["peak_rss_children_mib"],
        "phases": best["phases"],
    }
    b, c = min(result["build_seconds"]), min(copies)
    median = statistics.median(result["build_seconds"])
    started = min(result["build_process_seconds"])
    lines = [
        f"macOS 10.14 /usr/lib (x86_64): {input_bytes / MIB:.1f} MiB of input, {len(standins)} stand-ins; "
        f"{result['dylibs']} placed, {result['evictions']} evicted; "
        f"cache {best['output_bytes'] / MIB:.1f} MiB",
        f"  build:  fastest {b:.2f} s, median {median:.2f} s ({input_bytes / MIB / b:.1f} MiB/s); "
        f"with Python start-up {started:.2f} s",
        f"  cp -r:  fastest {c:.3f} s  -> the build takes {b / c:.0f}x cp -r",
        f"  peak RSS: builder {result['peak_rss_builder_mib']:.0f} MiB, "
        f"largest worker {result['peak_rss_largest_worker_mib']:.0f} MiB",
        "  phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in best["phases"].items()),
    ]
    if args.json == "-":
        json.dump(result, sys.stdout, indent=2)
    else:
        print("\n".join(lines))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
