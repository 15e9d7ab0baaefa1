"""``dyldcache build``: the cache builder's command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from ..errors import NothingPlacedError, UsageError
from ..names import json_safe
from .inputs import Eviction
from .pipeline import BuildOptions, build_cache


def _size(text: str) -> int:
    """A byte count with an optional K/M/G suffix (powers of 1024)."""
    t = text.strip().upper()
    scale = 1
    for suffix, mult in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if t.endswith(suffix) or t.endswith(suffix + "B") or t.endswith(suffix + "IB"):
            scale = mult
            t = t.rstrip("IB").rstrip(suffix)
            break
    try:
        value = int(t, 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def _run(args: argparse.Namespace) -> int:
    if args.example:
        if args.root is not None or args.dylib_list is not None or args.paths:
            raise UsageError("--example builds the bundled example; it takes no other inputs")
        from ..examples import link_examples

        with tempfile.TemporaryDirectory(prefix="dyldcache-example-root-") as root:
            link_examples(args.arch, root, platform=args.platform)
            args.root = root
            return _build(args)
    if args.root is None and args.dylib_list is None and not args.paths:
        raise UsageError("give --root, --dylib-list or dylib paths (or --example)")
    return _build(args)


def _build(args: argparse.Namespace) -> int:
    options = BuildOptions(
        arch=args.arch,
        platform=args.platform,
        output_dir=args.output,
        root=args.root,
        dylib_list=args.dylib_list,
        paths=list(args.paths),
        order_file=args.dylib_order,
        subcache_text_limit=args.subcache_text_limit,
        unmap_locals=False if args.no_unmap_locals else None,
        jobs=args.jobs,
        time_passes=args.time_passes,
        progress=not args.quiet,
        apple_rules=args.apple_rules,
        install_name_map=args.install_name_map,
    )
    try:
        result = build_cache(options)
    except NothingPlacedError as exc:
        # every reason is printed before the one-line error, and machines get them as JSON too
        for e in exc.evictions:
            print(f"warning: {e}", file=sys.stderr)
        if args.json:
            json.dump(
                json_safe(
                    {
                        "error": str(exc),
                        "evictions": [
                            {"path": e.path, "reason": e.reason}
                            for e in exc.evictions
                            if isinstance(e, Eviction)
                        ],
                    }
                ),
                sys.stdout,
                indent=2,
            )
            sys.stdout.write("\n")
        raise
    for e in result.evictions:
        print(f"warning: {e}", file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for path in result.removed:
        print(f"note: removed {path}, left by an earlier cache of the same name", file=sys.stderr)
    if args.time_passes:
        print(result.timer.report(), file=sys.stderr)
    if args.json:
        json.dump(
            json_safe(
                {
                    "files": result.files,
                    "map": result.map_path,
                    "json_map": result.json_map_path,
                    "uuid": result.uuid.hex(),
                    "dylibs": result.dylibs,
                    "evictions": [{"path": e.path, "reason": e.reason} for e in result.evictions],
                    "warnings": result.warnings,
                    "removed": result.removed,
                }
            ),
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    elif not args.quiet:
        print(
            f"built {result.files[0]} ({len(result.dylibs)} dylibs, {len(result.files)} files, "
            f"{len(result.evictions)} evicted"
            + (f", {len(result.synthesized)} with synthesized split seg info" if result.synthesized else "")
            + ")"
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "build",
        help="build a dyld shared cache from dylibs",
        description="Build a dyld shared cache (dyld-1162 format).",
    )
    p.add_argument("--arch", required=True, choices=["arm64", "arm64e", "x86_64"])
    p.add_argument("--platform", default="macos", choices=["macos", "ios"])
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the cache files")
    p.add_argument(
        "--example",
        action="store_true",
        help="build the example that ships with dyldcache (links its libraries first)",
    )
    p.add_argument("--root", metavar="DIR", help="root filesystem: paths inside it are install paths")
    p.add_argument(
        "--dylib-list", metavar="FILE", help="file listing the dylibs (paths inside --root if given)"
    )
    p.add_argument("--dylib-order", metavar="FILE", help="order file: install names, one per line")
    p.add_argument(
        "--subcache-text-limit",
        type=_size,
        metavar="SIZE",
        help="start a new subcache when __TEXT would pass SIZE (e.g. 64K, 512M)",
    )
    p.add_argument("--no-unmap-locals", action="store_true", help="keep local symbols in the cache (ios)")
    p.add_argument(
        "--apple-rules",
        action="store_true",
        help="apply Apple's OS-build eligibility policy exactly as dyld-1162 does: only /usr/lib, "
        "/System/Library, ... paths, absolute install names, split seg info from the linker",
    )
    p.add_argument(
        "--install-name-map",
        metavar="FILE",
        help="install-name renames, one 'OLD -> NEW' per line (a folder when both end with '/')",
    )
    p.add_argument("-j", "--jobs", type=int, default=0, help="worker processes (default: one per core)")
    p.add_argument("--time-passes", action="store_true", help="print per-phase times and peak memory")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("paths", nargs="*", metavar="PATH", help="dylibs (placed at their install names)")
    p.set_defaults(func=_run)
