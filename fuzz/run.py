"""Coverage-guided fuzzing of dyldcache with atheris (libFuzzer for Python).

    python fuzz/run.py reader|builder|cache [--seconds N] [--runs N] [--seed S]

Seeds come from the example dylibs, ../shared/data and Apple's caches (targets.seeds). Every
input that breaks a target's contract (see targets.py) is written to fuzz/corpus/<target>/
(named by its SHA-256), where the test suite replays it; the campaign goes on after it. The
process exits 1 when it found a new crasher, 0 otherwise. With --runs and --seed a campaign is
deterministic, which is how the test suite runs a short slice of each target. A long campaign
(--seconds above --chunk) runs as a series of fuzzer processes sharing one corpus, because a process
grows with every input atheris instruments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

with atheris.instrument_imports(include=["dyldcache"]):
    import dyldcache.builder.pipeline
    import dyldcache.cache.describe
    import dyldcache.cache.objc_report
    import dyldcache.cache.verify
    import dyldcache.macho.describe  # noqa: F401

import targets  # noqa: E402

#: inputs larger than this are not tried (the builder's seed dylibs are ~100 KiB)
MAX_LEN = {"reader": 1 << 20, "builder": 1 << 18, "cache": 1 << 20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=sorted(targets.TARGETS))
    ap.add_argument("--seconds", type=int, default=0, help="stop after this long (libFuzzer -max_total_time)")
    ap.add_argument("--runs", type=int, default=-1, help="stop after this many inputs (libFuzzer -runs)")
    ap.add_argument("--seed", type=int, default=0, help="libFuzzer -seed (0: random)")
    ap.add_argument(
        "--crashers", type=Path, default=None, help="where new crashers go (default fuzz/corpus/TARGET)"
    )
    ap.add_argument(
        "--chunk",
        type=int,
        default=300,
        help="a campaign longer than this runs as a series of fuzzer processes of this many seconds "
        "sharing one corpus (atheris' instrumentation grows a process by ~0.4 MB per input)",
    )
    ap.add_argument("--corpus", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = args.crashers or targets.CORPUS / args.target
    out.mkdir(parents=True, exist_ok=True)
    limit = MAX_LEN[args.target]
    if args.corpus is None:
        work = Path(tempfile.mkdtemp(prefix=f"dyldcache-fuzz-{args.target}-"))
        for seed in targets.seeds(args.target):
            data = seed.read_bytes()[:limit]
            (work / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)
        if args.seconds > args.chunk:
            return _campaign(args, work, out)
    else:
        work = args.corpus
    found: list[str] = []

    def one_input(data: bytes) -> None:
        try:
            targets.run_one(args.target, data)
        except Exception:
            name = hashlib.sha256(data).hexdigest()
            path = out / name
            if not path.exists():
                path.write_bytes(data)
                found.append(name)
                sys.stderr.write(f"\n== crasher {path}\n{traceback.format_exc()}\n")

    libfuzzer = [
        sys.argv[0],
        str(work),
        f"-max_len={limit}",
        f"-seed={args.seed}",
        f"-runs={args.runs}",
        "-print_final_stats=1",
        "-rss_limit_mb=4096",
    ]
    if args.seconds:
        libfuzzer.append(f"-max_total_time={args.seconds}")
    atheris.Setup(libfuzzer, one_input)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass
    finally:
        if args.corpus is None:
            shutil.rmtree(work, ignore_errors=True)
        for root in targets._ROOTS.values():
            shutil.rmtree(root, ignore_errors=True)
        print(f"{args.target}: {len(found)} new crasher(s) in {out}", file=sys.stderr)
        os._exit(1 if found else 0)
    return 0


def _campaign(args: argparse.Namespace, work: Path, out: Path) -> int:
    """Run the fuzzer in processes of ``--chunk`` seconds on one corpus until ``--seconds`` pass."""
    deadline = time.monotonic() + args.seconds
    before = set(os.listdir(out))
    chunk = 0
    try:
        while (left := int(deadline - time.monotonic())) > 5:
            chunk += 1
            seed = args.seed + chunk if args.seed else 0
            cmd = [sys.executable, str(Path(__file__).resolve()), args.target, "--corpus", str(work)]
            cmd += ["--seconds", str(min(left, args.chunk)), "--seed", str(seed), "--crashers", str(out)]
            subprocess.run(cmd, check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    new = sorted(set(os.listdir(out)) - before)
    print(f"{args.target}: {chunk} fuzzer processes, {len(new)} new crasher(s) in {out}", file=sys.stderr)
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
