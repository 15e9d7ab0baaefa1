#!/usr/bin/env python3
"""Times ``dyldcache build`` on the generated corpus (make_corpus.py) and reports where the time
and memory go.

    python benchmarks/run.py [--arch arm64 --arch x86_64] [--count 600] [--scale 1.0] [--seed 1]
        [--jobs N] [--repeat 1] [--work DIR] [--regen] [--json FILE|-] [--profile FILE]

For each arch: generate the corpus unless an identical one is already in the work folder, then
build the cache in a fresh Python process (so that its peak memory is the build's alone) and
copy the corpus with ``cp -r`` as a floor for the time any tool needs to read and write those
bytes. The corpus is reused across runs; ``--regen`` forces a new one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
try:
    import dyldcache  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))

import make_corpus  # noqa: E402
from scale_series import time_copy  # noqa: E402

from dyldcache.examples import EXAMPLE_DYLIBS  # noqa: E402

MIB = 1024 * 1024


# ---- the build, in a child process ----------------------------------------------------------------


def _rss_mib(who: int) -> float:
    import resource

    kb = resource.getrusage(who).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024) / MIB  # bytes on macOS, KiB on Linux


def child_build(args: argparse.Namespace) -> int:
    """Build once and print the measurements as JSON (run by the parent as a subprocess)."""
    from phase_probes import PhaseProbes

    from dyldcache.builder.pipeline import BuildOptions, build_cache

    probes = PhaseProbes(args.profile_dir, bool(args.trace))
    options = BuildOptions(
        args.arch, args.out, root=args.root, jobs=args.jobs, time_passes=True, progress=probes
    )
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        t0 = time.perf_counter()
        result = prof.runcall(build_cache, options)
        seconds = time.perf_counter() - t0
        prof.dump_stats(args.profile)
    else:
        t0 = time.perf_counter()
        result = build_cache(options)
        seconds = time.perf_counter() - t0
    probes.finish()
    if args.trace:
        probes.trace_report(args.trace)
    import resource

    out = {
        "seconds": seconds,
        "phases": dict(result.timer.phases),
        "passes": dict(result.timer.aggregates),
        # CPU time is much less sensitive than wall time to other load on the machine
        "cpu_seconds": sum(
            u.ru_utime + u.ru_stime
            for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        ),
        "peak_rss_self_mib": _rss_mib(resource.RUSAGE_SELF),
        "peak_rss_children_mib": _rss_mib(resource.RUSAGE_CHILDREN),
        "files": [os.path.basename(f) for f in result.files],
        "output_bytes": sum(os.path.getsize(f) for f in result.files),
        "map_bytes": os.path.getsize(result.map_path) + os.path.getsize(result.json_map_path),
        "dylibs": result.dylibs,
        "evictions": [str(e) for e in result.evictions],
        "warnings": len(result.warnings),
    }
    json.dump(out, sys.stdout)
    return 0


def run_build(arch: str, root: str, out: str, jobs: int, profile: str | None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-build", "--arch", arch, "--root", root]
    cmd += ["--out", out, "--jobs", str(jobs)]
    if profile:
        cmd += ["--profile", profile]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the build failed for {arch} (exit {proc.returncode}); command: {' '.join(cmd)}")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["process_seconds"] = wall
    return result


# ---- the corpus --------------------------------------------------------------------------------------


def corpus_is_current(manifest: str, arch: str, count: int, scale: float, seed: int, distinct: int) -> bool:
    try:
        c = make_corpus.read_manifest(manifest)
    except (OSError, ValueError, TypeError):
        return False
    if (c.arch, c.count, c.scale, c.seed, c.distinct, c.generator_version) != (
        arch,
        count,
        scale,
        seed,
        min(distinct, count - len(EXAMPLE_DYLIBS)),
        make_corpus.GENERATOR_VERSION,
    ):
        return False
    for d in c.dylibs:
        path = os.path.join(c.root, str(d["install_name"]).lstrip("/"))
        if not os.path.isfile(path) or os.path.getsize(path) != d["size"]:
            return False
    return True


def ensure_corpus(args: argparse.Namespace, arch: str) -> tuple[make_corpus.Corpus, bool]:
    """The corpus for ``arch`` (generated now unless a matching one exists); True if generated."""
    folder = os.path.join(
        args.work, f"corpus-{arch}-n{args.count}-x{args.scale:g}-s{args.seed}-d{args.distinct}"
    )
    root = os.path.join(folder, "root")
    manifest = root + ".json"
    if not args.regen and corpus_is_current(manifest, arch, args.count, args.scale, args.seed, args.distinct):
        return make_corpus.read_manifest(manifest), False
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    log = None if args.quiet else (lambda s: print(f"  [{arch}] {s}", file=sys.stderr))
    corpus = make_corpus.make_corpus(
        arch, root, args.count, args.scale, args.seed, args.gen_jobs, log, args.distinct
    )
    make_corpus.write_manifest(corpus, manifest)
    return corpus, True


# ---- reporting ---------------------------------------------------------------------------------------


def bench_arch(args: argparse.Namespace, arch: str) -> dict[str, Any]:
    def say(s: str) -> None:
        if not args.quiet:
            print(s, file=sys.stderr)

    say(f"[{arch}] corpus")
    corpus, generated = ensure_corpus(args, arch)
    say(f"[{arch}] {make_corpus.summary(corpus)}{'' if generated else ' (reused)'}")
    out = os.path.join(args.work, f"cache-{arch}")
    runs = []
    for k in range(args.repeat):
        say(f"[{arch}] build {k + 1}/{args.repeat} (jobs={args.jobs})")
        runs.append(run_build(arch, corpus.root, out, args.jobs, None))
    if args.profile:
        say(f"[{arch}] profiled build (jobs=1): {args.profile}.{arch}")
        run_build(arch, corpus.root, out, 1, f"{args.profile}.{arch}")
    say(f"[{arch}] cp -r")
    copy = [time_copy(corpus.root, os.path.join(args.work, f"copy-{arch}")) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    missing = sorted(set(corpus.install_names) - set(best["dylibs"]))
    input_mib = corpus.total_bytes / MIB
    return {
        "arch": arch,
        "corpus": {
            "dylibs": len(corpus.dylibs),
            "input_bytes": corpus.total_bytes,
            "count": corpus.count,
            "scale": corpus.scale,
            "seed": corpus.seed,
            "generation_seconds": corpus.seconds,
            "generated_now": generated,
            "root": corpus.root,
        },
        "build": {
            "jobs": args.jobs,
            "runs_seconds": [r["seconds"] for r in runs],
            "seconds": best["seconds"],
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "process_seconds": best["process_seconds"],
            "cpu_seconds": best["cpu_seconds"],
            "min_cpu_seconds": min(r["cpu_seconds"] for r in runs),
            "phases": best["phases"],
            "passes": best["passes"],
            "passes_total": sum(best["passes"].values()),
            "throughput_mib_s": input_mib / best["seconds"],
            "peak_rss_self_mib": max(r["peak_rss_self_mib"] for r in runs),
            "peak_rss_children_mib": max(r["peak_rss_children_mib"] for r in runs),
            "output_bytes": best["output_bytes"],
            "files": best["files"],
            "map_bytes": best["map_bytes"],
            "dylibs_in_cache": len(best["dylibs"]),
            "missing_dylibs": missing,
            "evictions": best["evictions"],
            "warnings": best["warnings"],
        },
        "copy": {
            "seconds": min(copy),
            "throughput_mib_s": input_mib / min(copy),
            "ratio": best["seconds"] / min(copy),
        },
    }


def text_report(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [f"machine: {machine['cpus']} cores, {machine['platform']}, Python {machine['python']}"]
    for r in results:
        c, b, cp = r["corpus"], r["build"], r["copy"]
        gen = "generated now" if c["generated_now"] else "reused; generated earlier"
        runs = ", ".join(f"{s:.2f}" for s in b["runs_seconds"])
        lines += [
            "",
            f"== {r['arch']}: {c['dylibs']} dylibs, {c['input_bytes'] / MIB:.1f} MiB of input "
            f"(count {c['count']}, scale {c['scale']:g}, seed {c['seed']})",
            f"corpus generation          {c['generation_seconds']:10.2f} s   ({gen})",
            f"{'build (jobs=' + str(b['jobs']) + '), fastest':<27}{b['seconds']:10.2f} s   "
            f"(median {b['median_seconds']:.2f} s of runs {runs}; "
            f"whole process {b['process_seconds']:.2f} s)",
            f"CPU time of that build     {b['cpu_seconds']:10.2f} s   (user + system, builder and workers; "
            f"least of the runs {b['min_cpu_seconds']:.2f} s)",
            f"throughput                 {b['throughput_mib_s']:10.2f} MiB/s of input",
            f"cp -r of the corpus        {cp['seconds']:10.2f} s   ({cp['throughput_mib_s']:.0f} MiB/s; "
            f"build = {cp['ratio']:.0f}x cp)",
            f"peak RSS, builder process  {b['peak_rss_self_mib']:10.1f} MiB",
            f"peak RSS, largest worker   {b['peak_rss_children_mib']:10.1f} MiB",
            f"output                     {b['output_bytes'] / MIB:10.1f} MiB in {len(b['files'])} file(s) "
            f"(+ {b['map_bytes'] / 1024:.0f} KiB of maps)",
            f"dylibs in the cache        {b['dylibs_in_cache']:10d}   ({len(b['evictions'])} evicted, "
            f"{len(b['missing_dylibs'])} missing, {b['warnings']} warnings)",
            "phases:",
        ]
        lines += [
            f"  {name:<30} {s:8.2f} s  {100 * s / b['seconds']:5.1f}%" for name, s in b["phases"].items()
        ]
        lines.append("per-dylib passes, summed over dylibs (CPU time spread over the workers):")
        lines += [f"  {name:<30} {s:8.2f} s" for name, s in b["passes"].items()]
        lines.append(f"  {'sum':<30} {b['passes_total']:8.2f} s")
        for e in b["evictions"][:5]:
            lines.append(f"  evicted: {e}")
        for m in b["missing_dylibs"][:5]:
            lines.append(f"  missing: {m}")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--arch", action="append", choices=make_corpus.ARCHS, help="repeatable (default arm64)")
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--scale", type=float, help="dylib size factor (default 1; 5.5 with --scale-series)")
    ap.add_argument(
        "--distinct",
        type=int,
        default=make_corpus.DEFAULT_DISTINCT,
        help="generated dylibs linked; the rest are copies (default %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="builder jobs (default: all cores)")
    ap.add_argument("--gen-jobs", type=int, default=0, help="corpus generation jobs (default: all cores)")
    ap.add_argument("--repeat", type=int, default=1, help="builds per arch; the fastest is reported")
    ap.add_argument(
        "--work", default=str(HERE / "work"), help="corpora, caches and copies (default: %(default)s)"
    )
    ap.add_argument("--regen", action="store_true", help="regenerate the corpus even if one matches")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout only)")
    ap.add_argument("--profile", metavar="FILE", help="also run a cProfile'd build (jobs=1) to FILE.<arch>")
    ap.add_argument("--quiet", action="store_true")
    series = ap.add_argument_group("scale series (issue 12)")
    series.add_argument(
        "--scale-series", action="store_true", help="build at several input sizes beside cp -r (one arch)"
    )
    series.add_argument("--sizes", default="0.5,1,2", help="GiB of input per build (default %(default)s)")
    series.add_argument("--profile-sizes", default="", help="sizes to build once more under cProfile")
    series.add_argument("--trace-sizes", default="", help="sizes to build once more under tracemalloc")
    # internal: the child process that runs one build
    ap.add_argument("--child-build", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--profile-dir", help=argparse.SUPPRESS)
    ap.add_argument("--trace", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_build:
        args.arch = args.arch[0]
        return child_build(args)
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    if args.scale_series:
        return main_series(args)
    if args.scale is None:
        args.scale = 1.0
    machine = machine_info()
    results = [bench_arch(args, arch) for arch in (args.arch or ["arm64"])]
    report = {"machine": machine, "results": results, "generator_version": make_corpus.GENERATOR_VERSION}
    if args.json == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(text_report(results, machine))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
                f.write("\n")
    return 0


def main_series(args: argparse.Namespace) -> int:
    import scale_series

    if args.arch and len(args.arch) > 1:
        raise SystemExit("--scale-series measures one --arch")
    sizes = scale_series.parse_sizes(args.sizes)
    opts = scale_series.SeriesOptions(
        arch=(args.arch or ["arm64"])[0],
        sizes=sizes,
        scale=5.5 if args.scale is None else args.scale,
        seed=args.seed,
        distinct=args.distinct,
        jobs=args.jobs,
        gen_jobs=args.gen_jobs,
        work=args.work,
        profile_sizes=scale_series.parse_sizes(args.profile_sizes) if args.profile_sizes else [],
        trace_sizes=scale_series.parse_sizes(args.trace_sizes) if args.trace_sizes else [],
        quiet=args.quiet,
    )
    result = scale_series.run_series(opts)
    machine = machine_info()
    report = {"machine": machine, "series": result, "generator_version": make_corpus.GENERATOR_VERSION}
    if args.json == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
        return 0
    print(scale_series.text_report(result, opts))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
