#!/usr/bin/env python3
"""Split seg synthesis (``dyldcache.synth``) over every dylib of ../shared/data/real, the committed
ld64.lld-22 fixtures and, when present, the wheel corpus of tests/wheel_corpus.py: coverage of
the split seg info the linker wrote, refusals and their reasons, and speed (MB of code / s).

    python benchmarks/synth_split_seg.py [--mode packed|keep|both] [--json FILE|-] [FOLDER...]

Coverage is computed as in tests/split_seg_coverage.py (the suite runs a third of the macOS
10.14 set; this script runs all of it). Speed is the synthesis wall time over the size of the
code sections (``S_ATTR_*_INSTRUCTIONS``), per architecture, imports and file mapping excluded.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

import split_seg_coverage as cov  # noqa: E402

from dyldcache.errors import DyldCacheError, SplitSegSynthesisError  # noqa: E402
from dyldcache.macho.file import open_macho  # noqa: E402
from dyldcache.synth import synthesize_split_seg  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "real"
FOLDERS = {
    "ios14.4-arm64 (ld64-609, v2)": (SHARED / "ios14.4-arm64-procursus", None),
    "macos10.14-x86_64 (ld64-409, v1)": (SHARED / "macos10.14-x86_64-usr-lib", "x86_64"),
    "no-split-seg (Apple, Swift)": (SHARED / "no-split-seg", "arm64"),
    "lld-22 fixtures": (REPO / "tests" / "fixtures" / "synth", None),
}
WHEELS = Path.home() / ".cache" / "dyldcache-tests" / "wheels"
CODE = 0x80000400  # S_ATTR_PURE_INSTRUCTIONS | S_ATTR_SOME_INSTRUCTIONS


def _reason(exc: SplitSegSynthesisError) -> str:
    """The refusal without its addresses and details, to count alike ones together."""
    text = re.sub(r"0x[0-9a-f]+", "X", exc.message)
    return re.sub(r"\bx\d+\b", "xN", text.split(": ")[-1] if "cannot pair" in text else text)[:90]


def _run_folder(root: Path, arch: str | None, keep: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dylibs": 0,
        "with_split_seg": 0,
        "accepted": 0,
        "refused": 0,
        "required": 0,
        "covered": 0,
        "extras": 0,
        "reasons": Counter(),
        "speed": defaultdict(lambda: [0, 0.0]),
        "uncovered": [],
    }
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            image = open_macho(path, arch)
        except DyldCacheError:
            continue
        if image.filetype != 6:  # MH_DYLIB
            continue
        out["dylibs"] += 1
        has = image.split_seg is not None
        out["with_split_seg"] += has
        code = sum(s.size for s in image.sections if s.flags & CODE)
        t0 = time.perf_counter()
        try:
            entries = synthesize_split_seg(image, keep_page_offsets=keep)
        except SplitSegSynthesisError as exc:
            out["refused"] += 1
            out["reasons"][_reason(exc)] += 1
            continue
        speed = out["speed"][image.arch]  # accepted dylibs only: a refusal may stop early
        speed[0] += code
        speed[1] += time.perf_counter() - t0
        out["accepted"] += 1
        if has:
            c = cov.compare(
                cov.thin(path, image.arch if image.arch == "x86_64" else None),
                entries,
                keep_page_offsets=keep,
            )
            out["required"] += c.required
            out["covered"] += c.covered
            out["extras"] += len(c.extras)
            if c.missing or c.extras:
                out["uncovered"].append((path.name, c.missing[:3], c.extras[:3]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("packed", "keep", "both"), default="both")
    ap.add_argument("--json", help="write the results as JSON to FILE (- for stdout)")
    ap.add_argument("folders", nargs="*", type=Path, help="other folders of dylibs")
    args = ap.parse_args(argv)
    folders = dict(FOLDERS)
    if WHEELS.is_dir():
        folders["PyPI wheels (arm64)"] = (WHEELS, "arm64")
        folders["PyPI wheels (x86_64)"] = (WHEELS, "x86_64")
    for f in args.folders:
        folders[str(f)] = (f, None)
    modes = {"packed": [False], "keep": [True], "both": [False, True]}[args.mode]
    results: dict[str, Any] = {}
    for keep in modes:
        mode = "keep page offsets" if keep else "packed"
        for name, (root, arch) in folders.items():
            if not root.is_dir():
                continue
            r = _run_folder(root, arch, keep)
            results[f"{name} [{mode}]"] = r
            if args.json == "-":
                continue
            print(f"== {name} [{mode}]")
            print(
                f"   dylibs {r['dylibs']} (split seg: {r['with_split_seg']}), accepted {r['accepted']}, "
                f"refused {r['refused']}"
            )
            if r["required"]:
                print(
                    f"   linker's entries that change bytes: {r['covered']}/{r['required']} covered, "
                    f"extras {r['extras']}"
                )
            for arch_name, (size, secs) in sorted(r["speed"].items()):
                rate = size / 1e6 / max(secs, 1e-9)
                print(f"   {arch_name}: {size / 1e6:.2f} MB of code in {secs:.2f} s = {rate:.2f} MB/s")
            for reason, n in r["reasons"].most_common():
                print(f"   refused {n}x: {reason}")
            for item in r["uncovered"][:5]:
                print(f"   NOT COVERED: {item}")
    if args.json:
        text = json.dumps(results, indent=1, default=lambda o: dict(o) if isinstance(o, Counter) else str(o))
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
