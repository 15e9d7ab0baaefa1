"""``run.py --scale-series``: the build at several input sizes, side by side with ``cp -r``.

For each size (GiB of input; default 0.5, 1 and 2) a corpus of about that many bytes is made
by make_corpus.py at one ``--scale`` (default 5.5, as in issue 12): the same ``--distinct``
linked dylibs for every size (linked once, kept in the work folder) and as many copies as the
size needs. Then, for each size, in one run:

1. ``cp -r`` of the corpus root (the floor: reading and writing the same bytes), once before
   and once after the build; the faster copy is the one compared;
2. the build, in a child process under ``/usr/bin/time -v``, while a sampler reads the memory
   of the whole process tree (process_memory.py) phase by phase;
3. optionally (``--profile-sizes``) one more build with a cProfile of every phase, workers
   included, and (``--trace-sizes``) one with tracemalloc (phase_probes.py).

Memory is reported three ways, all for the whole build: the largest "Maximum resident set size"
of ``/usr/bin/time -v`` (the kernel's ru_maxrss: the peak of the *largest single process* of
the tree, never a sum), and the sampled peaks of the tree's summed RSS and summed PSS.
"""

from __future__ import annotations

import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import make_corpus
from phase_probes import PHASE_MARKER
from process_memory import TreeSampler

MIB = 1 << 20
GIB = 1 << 30
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TIME = "/usr/bin/time"
#: issue 12's targets
TARGET_RSS_MIB = 1.5 * 1024
TARGET_THROUGHPUT_DROP = 0.25
TARGET_COPY_RATIO = 10.0
#: profile entries listed per phase, and in the growth table
TOP_PER_PHASE = 8
TOP_GROWTH = 20


@dataclass(slots=True)
class SeriesOptions:
    arch: str
    sizes: list[float]
    scale: float
    seed: int
    distinct: int
    jobs: int
    gen_jobs: int
    work: str
    profile_sizes: list[float]
    trace_sizes: list[float]
    quiet: bool


def parse_sizes(text: str) -> list[float]:
    """ "0.5,1,2" or "0.5,1,2 GB" (GiB either way) -> [0.5, 1.0, 2.0]."""
    text = re.sub(r"\s*(GiB|GB|G)\s*$", "", text.strip(), flags=re.IGNORECASE)
    try:
        sizes = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--sizes {text!r}: a comma-separated list of GiB, like 0.5,1,2") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise SystemExit(f"--sizes {text!r}: sizes must be positive")
    return sizes


def _say(opts: SeriesOptions, text: str) -> None:
    if not opts.quiet:
        print(text, file=sys.stderr, flush=True)


# ---- the corpus of one size ---------------------------------------------------------------------


def series_corpus(opts: SeriesOptions, size_gib: float) -> make_corpus.Corpus:
    folder = os.path.join(opts.work, f"series-{opts.arch}-x{opts.scale:g}-s{opts.seed}-d{opts.distinct}")
    bases = os.path.join(folder, "linked")

    def log(s: str) -> None:
        _say(opts, f"  [{size_gib:g} GiB] {s}")

    count = make_corpus.count_for_size(
        opts.arch, int(size_gib * GIB), bases, opts.scale, opts.seed, opts.distinct, opts.gen_jobs, log
    )
    root = os.path.join(folder, f"n{count}", "root")
    manifest = root + ".json"
    try:
        c = make_corpus.read_manifest(manifest)
        if (c.arch, c.count, c.scale, c.seed, c.distinct, c.generator_version) == (
            opts.arch,
            count,
            opts.scale,
            opts.seed,
            opts.distinct,
            make_corpus.GENERATOR_VERSION,
        ) and all(
            os.path.getsize(os.path.join(root, str(d["install_name"]).lstrip("/"))) == d["size"]
            for d in c.dylibs
        ):
            return c
    except (OSError, ValueError, TypeError):
        pass
    shutil.rmtree(os.path.dirname(root), ignore_errors=True)
    os.makedirs(os.path.dirname(root))
    c = make_corpus.make_corpus(
        opts.arch, root, count, opts.scale, opts.seed, opts.gen_jobs, log, opts.distinct, bases
    )
    make_corpus.write_manifest(c, manifest)
    return c


# ---- one measured build -----------------------------------------------------------------------------


def _time_v(text: str) -> dict[str, float]:
    """The fields of ``/usr/bin/time -v`` that the series reports."""
    out: dict[str, float] = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["max_rss_mib"] = int(m.group(1)) / 1024
    for key, label in (("user_seconds", "User time"), ("system_seconds", "System time")):
        m = re.search(rf"{label} \(seconds\): ([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Percent of CPU this job got: (\d+)%", text)
    if m:
        out["cpu_percent"] = float(m.group(1))
    return out


def measured_build(
    arch: str,
    root: str,
    out: str,
    jobs: int,
    *,
    profile_dir: str | None = None,
    trace: str | None = None,
) -> dict[str, Any]:
    """Build once in a child process (under /usr/bin/time -v when it exists) while sampling the
    memory of the process tree; the child's JSON plus ``time_v``, ``memory`` and ``wall``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(HERE / "run.py"), "--child-build", "--arch", arch, "--root", root]
    cmd += ["--out", out, "--jobs", str(jobs)]
    if profile_dir:
        cmd += ["--profile-dir", profile_dir]
    if trace:
        cmd += ["--trace", trace]
    if os.path.exists(TIME):
        cmd = [TIME, "-v", *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = TreeSampler(proc.pid).start()
    err_lines: list[str] = []
    marks: list[tuple[str, float]] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(PHASE_MARKER):
                _m, name, secs = line.split()
                sampler.phase = name
                marks.append((name, float(secs)))
            else:
                err_lines.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - t0
    reader.join()
    sampler.stop()
    err = "".join(err_lines)
    if proc.returncode != 0:
        sys.stderr.write(err)
        raise SystemExit(f"the build failed (exit {proc.returncode}): {' '.join(cmd)}")
    result: dict[str, Any] = json.loads(stdout)
    result["wall"] = wall
    result["time_v"] = _time_v(err)
    result["phase_marks"] = marks
    result["memory"] = {
        "peak_tree_rss_mib": sampler.peak_rss_mib,
        "peak_tree_pss_mib": sampler.peak_pss_mib,
        "samples": sampler.samples,
        "phases": {
            name: {"rss_mib": p.rss_mib, "pss_mib": p.pss_mib, "processes": p.processes}
            for name, p in sampler.peaks.items()
        },
    }
    return result


def time_copy(root: str, scratch: str) -> float:
    """Seconds ``cp -r`` takes to copy the corpus root (the copy is then deleted, untimed)."""
    shutil.rmtree(scratch, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", root, scratch], check=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return seconds


# ---- profiles ----------------------------------------------------------------------------------------

FuncKey = tuple[str, int, str]


def _short_func(key: FuncKey) -> str:
    filename, line, name = key
    parts = filename.replace(os.sep, "/").split("/")
    if "dyldcache" in parts:
        filename = "/".join(parts[len(parts) - 1 - parts[::-1].index("dyldcache") + 1 :])
    elif filename.startswith("~") or filename == "":
        return name
    else:
        filename = parts[-1]
    return f"{filename}:{line}({name})"


def load_phase_profiles(profile_dir: str) -> dict[str, pstats.Stats]:
    """One Stats per phase: the builder process's profile plus its workers' of that phase."""
    files: dict[str, list[str]] = {}
    for name in sorted(os.listdir(profile_dir)):
        if name.endswith(".prof"):
            files.setdefault(name.split(".")[0], []).append(os.path.join(profile_dir, name))
    out = {}
    for phase, paths in files.items():
        stats = pstats.Stats(paths[0], stream=open(os.devnull, "w"))  # noqa: SIM115
        for p in paths[1:]:
            stats.add(p)
        out[phase] = stats
    return out


def _entries(stats: pstats.Stats) -> dict[FuncKey, tuple[int, float, float]]:
    """function -> (calls, tottime, cumtime)."""
    raw: dict[FuncKey, Any] = stats.stats  # type: ignore[attr-defined]
    return {k: (v[1], v[2], v[3]) for k, v in raw.items()}


def profile_summary(profile_dir: str) -> dict[str, list[dict[str, Any]]]:
    """Per phase, the functions with the most own time (tottime) and their cumulative time."""
    out = {}
    for phase, stats in load_phase_profiles(profile_dir).items():
        rows = sorted(_entries(stats).items(), key=lambda kv: -kv[1][1])[:TOP_PER_PHASE]
        out[phase] = [
            {"function": _short_func(k), "calls": c, "tottime": t, "cumtime": cum} for k, (c, t, cum) in rows
        ]
    return out


def profile_growth(small_dir: str, large_dir: str, input_ratio: float) -> list[dict[str, Any]]:
    """Functions whose own time grew more than the input between two profiled builds: own time
    at both sizes (summed over phases and processes), the growth factor, and the seconds above
    linear growth (large - small * input_ratio), largest excess first."""

    def totals(d: str) -> dict[FuncKey, tuple[int, float, str]]:
        acc: dict[FuncKey, tuple[int, float, str]] = {}
        for phase, stats in load_phase_profiles(d).items():
            for k, (calls, tot, _cum) in _entries(stats).items():
                c0, t0, ph = acc.get(k, (0, 0.0, ""))
                main = phase if tot > (t0 if ph else -1) else ph
                acc[k] = (c0 + calls, t0 + tot, main)
        return acc

    small, large = totals(small_dir), totals(large_dir)
    rows: list[dict[str, Any]] = []
    for k, (calls, tot, phase) in large.items():
        c0, t0, _ = small.get(k, (0, 0.0, ""))
        excess = tot - t0 * input_ratio
        if excess < 0.5:
            continue
        rows.append(
            {
                "function": _short_func(k),
                "phase": phase,
                "small_s": t0,
                "large_s": tot,
                "growth": tot / t0 if t0 else float("inf"),
                "calls_small": c0,
                "calls_large": calls,
                "excess_s": excess,
            }
        )
    rows.sort(key=lambda r: -r["excess_s"])
    return rows[:TOP_GROWTH]


# ---- the series ---------------------------------------------------------------------------------------


def run_series(opts: SeriesOptions) -> dict[str, Any]:
    points = []
    for size in opts.sizes:
        _say(opts, f"[{size:g} GiB] corpus")
        corpus = series_corpus(opts, size)
        _say(opts, f"[{size:g} GiB] {make_corpus.summary(corpus)}")
        scratch = os.path.join(opts.work, f"copy-{opts.arch}")
        out = os.path.join(opts.work, f"cache-{opts.arch}")
        copies = [time_copy(corpus.root, scratch)]
        _say(opts, f"[{size:g} GiB] build (jobs={opts.jobs})")
        build = measured_build(opts.arch, corpus.root, out, opts.jobs)
        copies.append(time_copy(corpus.root, scratch))
        point: dict[str, Any] = {
            "size_gib": size,
            "corpus": {
                "root": corpus.root,
                "dylibs": len(corpus.dylibs),
                "input_bytes": corpus.total_bytes,
                "count": corpus.count,
                "distinct": corpus.distinct,
                "copies": sum(1 for d in corpus.dylibs if d["kind"] == "copy"),
                "generation_seconds": corpus.seconds,
                "link_seconds": corpus.link_seconds,
                "derive_seconds": corpus.derive_seconds,
            },
            "build": build,
            "copy_seconds": copies,
        }
        tag = f"{opts.arch}-{size:g}g"
        if size in opts.profile_sizes:
            pdir = os.path.join(opts.work, f"profile-{tag}")
            shutil.rmtree(pdir, ignore_errors=True)
            _say(opts, f"[{size:g} GiB] profiled build (jobs={opts.jobs}): {pdir}")
            prof = measured_build(opts.arch, corpus.root, out, opts.jobs, profile_dir=pdir)
            point["profile"] = {"dir": pdir, "seconds": prof["seconds"], "phases": profile_summary(pdir)}
        if size in opts.trace_sizes:
            tfile = os.path.join(opts.work, f"trace-{tag}.json")
            _say(opts, f"[{size:g} GiB] tracemalloc build (jobs={opts.jobs}): {tfile}")
            tr = measured_build(opts.arch, corpus.root, out, opts.jobs, trace=tfile)
            with open(tfile, encoding="utf-8") as f:
                point["trace"] = {"file": tfile, "seconds": tr["seconds"], "phases": json.load(f)}
        shutil.rmtree(out, ignore_errors=True)
        points.append(point)
    growth = None
    profiled = [p for p in points if "profile" in p]
    if len(profiled) >= 2:
        a, b = profiled[0], profiled[-1]
        ratio = b["corpus"]["input_bytes"] / a["corpus"]["input_bytes"]
        growth = {
            "small_gib": a["size_gib"],
            "large_gib": b["size_gib"],
            "input_ratio": ratio,
            "functions": profile_growth(a["profile"]["dir"], b["profile"]["dir"], ratio),
        }
    return {"points": points, "growth": growth}


def _point_numbers(p: dict[str, Any]) -> dict[str, float]:
    b = p["build"]
    mib = p["corpus"]["input_bytes"] / MIB
    copy = min(p["copy_seconds"])
    return {
        "mib": mib,
        "seconds": b["seconds"],
        "throughput": mib / b["seconds"],
        "copy": copy,
        "ratio": b["seconds"] / copy,
        "max_rss": b["time_v"].get("max_rss_mib", max(b["peak_rss_self_mib"], b["peak_rss_children_mib"])),
        "tree_rss": b["memory"]["peak_tree_rss_mib"],
        "tree_pss": b["memory"]["peak_tree_pss_mib"],
    }


def text_report(series: dict[str, Any], opts: SeriesOptions) -> str:
    points = series["points"]
    lines = [
        f"scale series: {opts.arch}, --scale {opts.scale:g}, --seed {opts.seed}, --distinct {opts.distinct}, "
        f"--jobs {opts.jobs}",
        "",
        f"{'size':>6} {'input MiB':>10} {'dylibs':>7} {'copies':>7} {'build s':>8} {'MiB/s':>7} "
        f"{'cp -r s':>8} {'x cp':>6} {'maxRSS MiB':>11} {'tree RSS':>9} {'tree PSS':>9} {'CPU %':>6}",
    ]
    for p in points:
        n = _point_numbers(p)
        c = p["corpus"]
        lines.append(
            f"{p['size_gib']:>5g}G {n['mib']:>10.0f} {c['dylibs']:>7} {c['copies']:>7} {n['seconds']:>8.1f} "
            f"{n['throughput']:>7.2f} {n['copy']:>8.2f} {n['ratio']:>6.0f} {n['max_rss']:>11.0f} "
            f"{n['tree_rss']:>9.0f} {n['tree_pss']:>9.0f} {p['build']['time_v'].get('cpu_percent', 0):>6.0f}"
        )
    lines += [
        "",
        "maxRSS: /usr/bin/time -v 'Maximum resident set size' (the largest single process of the build);",
        "tree RSS / tree PSS: sampled peaks of the RSS and PSS summed over the builder and its workers.",
        "",
        "phases (seconds; peak tree PSS MiB in brackets):",
    ]
    phases = list(points[0]["build"]["phases"]) if points else []
    lines.append(f"  {'phase':<30}" + "".join(f"{p['size_gib']:>18g}G" for p in points))
    for ph in phases:
        row = f"  {ph:<30}"
        for p in points:
            secs = dict(p["build"]["phases"]).get(ph, 0.0)
            pss = p["build"]["memory"]["phases"].get(ph, {}).get("pss_mib", 0.0)
            row += f"{secs:>10.1f} ({pss:>5.0f})"
        lines.append(row)
    lines.append("  per-dylib passes, summed over workers:")
    for name in points[0]["build"]["passes"] if points else []:
        lines.append(
            f"  {'  ' + name:<30}"
            + "".join(f"{p['build']['passes'].get(name, 0.0):>10.1f}        " for p in points)
        )
    if len(points) >= 2:
        first, last = _point_numbers(points[0]), _point_numbers(points[-1])
        drop = 1 - last["throughput"] / first["throughput"]
        lines += [
            "",
            f"issue 12 targets at {points[-1]['size_gib']:g} GiB:",
            f"  peak RSS {last['max_rss']:.0f} MiB (largest process), {last['tree_pss']:.0f} MiB (tree PSS): "
            f"target <= {TARGET_RSS_MIB:.0f} MiB",
            f"  throughput {last['throughput']:.2f} MiB/s vs {first['throughput']:.2f} MiB/s at "
            f"{points[0]['size_gib']:g} GiB: {100 * drop:+.0f}% drop "
            f"(target <= {100 * TARGET_THROUGHPUT_DROP:.0f}%)",
            f"  build / cp -r = {last['ratio']:.0f}x (target <= {TARGET_COPY_RATIO:.0f}x)",
        ]
    for p in points:
        if "profile" in p:
            lines += [
                "",
                f"cProfile at {p['size_gib']:g} GiB (own time, workers included; {p['profile']['dir']}):",
            ]
            for phase, rows in p["profile"]["phases"].items():
                lines.append(f"  {phase}:")
                lines += [
                    f"    {r['tottime']:8.2f} s own {r['cumtime']:8.2f} s cum {r['calls']:>9} calls  "
                    f"{r['function']}"
                    for r in rows
                ]
        if "trace" in p:
            lines += ["", f"tracemalloc at {p['size_gib']:g} GiB (builder process; {p['trace']['file']}):"]
            for row in p["trace"]["phases"]:
                lines.append(
                    f"  {row['phase']:<30} traced {row['traced_mib']:8.0f} MiB at the end, peak "
                    f"{row['peak_traced_mib']:8.0f} MiB; RSS {row['rss_mib']:8.0f} MiB"
                )
                lines += [
                    f"      {s['mib']:8.1f} MiB {s['blocks']:>9} blocks  {s['where']}"
                    + (f" (in {s['allocated_in']})" if s["allocated_in"] != s["where"] else "")
                    for s in row["sites"][:8]
                ]
    g = series.get("growth")
    if g:
        lines += [
            "",
            f"own time growing faster than the input ({g['small_gib']:g} -> {g['large_gib']:g} GiB, "
            f"input x{g['input_ratio']:.2f}):",
            f"  {'small s':>8} {'large s':>8} {'growth':>7} {'excess s':>9}  function (phase)",
        ]
        lines += [
            f"  {r['small_s']:8.2f} {r['large_s']:8.2f} {r['growth']:7.1f} {r['excess_s']:9.1f}  "
            f"{r['function']} ({r['phase']})"
            for r in g["functions"]
        ]
    return "\n".join(lines)
