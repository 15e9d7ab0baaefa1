"""Coverage-guided fuzzing of dyldcache with atheris (libFuzzer for Python).

    python fuzz/run.py reader|builder|cache [--seconds N] [--runs N] [--seed S]

Seeds come from the example dylibs, ../shared/data and Apple's caches (targets.seeds). Every
input that breaks a target's contract (see targets.py) is written to fuzz/corpus/<target>/
(named by its SHA-256), where the test suite replays it; the campaign goes on after it. The
process exits 1 when it found a new crasher, 0 otherwise. With --runs and --seed a campaign is
deterministic, which is how the test suite runs a short slice of each target.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
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
    args = ap.parse_args()
    out = args.crashers or targets.CORPUS / args.target
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"dyldcache-fuzz-{args.target}-"))
    limit = MAX_LEN[args.target]
    for seed in targets.seeds(args.target):
        data = seed.read_bytes()[:limit]
        (work / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)
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
    ]
    if args.seconds:
        libfuzzer.append(f"-max_total_time={args.seconds}")
    atheris.Setup(libfuzzer, one_input)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for root in targets._ROOTS.values():
            shutil.rmtree(root, ignore_errors=True)
        print(f"{args.target}: {len(found)} new crasher(s) in {out}", file=sys.stderr)
        os._exit(1 if found else 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
