"""``dyldcache build``: the cache builder's command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ..cache.format import uuid_string
from ..errors import NothingPlacedError, UsageError
from ..fileio import OutputError
from ..interrupts import current_program_interrupts
from ..report import add_json_option, print_json
from .inputs import Eviction
from .pipeline import BuildOptions, build_cache
from .progress import BuildProgress, TerminalProgress


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


def _whole_number(text: str, what: str, low: int, high: int, hint: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not low <= value < high:
        raise argparse.ArgumentTypeError(f"{value}: {hint}")
    return value


def _jobs(text: str) -> int:
    return _whole_number(
        text, "a number of workers", 0, 1 << 16, "give 0 (one worker per core), 1 (none) or more"
    )


def _epoch(text: str) -> int:
    return _whole_number(text, "a time in seconds since 1970", 0, 1 << 64, "not a time in seconds since 1970")


def _default_epoch() -> int | None:
    """SOURCE_DATE_EPOCH from the environment (https://reproducible-builds.org/specs/source-date-epoch/)."""
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None or text.strip() == "":
        return None
    try:
        return _epoch(text.strip())
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"SOURCE_DATE_EPOCH: {exc}") from None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _run(args: argparse.Namespace) -> int:
    if args.keep_dylibs is not None and not args.example:
        raise UsageError("--keep-dylibs keeps the example's dylibs: use it with --example")
    show = sys.stderr.isatty() and not args.quiet and not args.json
    interrupts = current_program_interrupts()
    on_committed = interrupts.finish if interrupts is not None else None
    progress = TerminalProgress(sys.stderr, on_committed) if show else BuildProgress(on_committed)
    try:
        if args.example:
            if args.root is not None or args.dylib_list is not None or args.paths:
                raise UsageError("--example builds the bundled example; it takes no other inputs")
            return _build_example(args, progress)
        if args.root is None and args.dylib_list is None and not args.paths:
            raise UsageError("give --root, --dylib-list or dylib paths (or --example)")
        return _build(args, progress)
    finally:
        progress.close()


def _build_example(args: argparse.Namespace, progress: BuildProgress) -> int:
    from ..examples import EXAMPLE_DYLIBS, link_examples

    progress.phase("link_examples")
    progress.expect(len(EXAMPLE_DYLIBS), "dylibs")
    if args.keep_dylibs is not None:
        try:
            os.makedirs(args.keep_dylibs, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--keep-dylibs {args.keep_dylibs}: {exc.strerror}", exc.errno) from None
        # the folder is the build's root: anything else in it would go into the cache too
        ours = {d.install_name for d in EXAMPLE_DYLIBS}
        for dirpath, _dirs, names in os.walk(args.keep_dylibs):
            for name in names:
                inside = "/" + os.path.relpath(os.path.join(dirpath, name), args.keep_dylibs)
                if inside.replace(os.sep, "/") not in ours:
                    raise UsageError(
                        f"--keep-dylibs {args.keep_dylibs}: holds other files ({inside.lstrip('/')}); "
                        "give a new or empty folder"
                    )
        link_examples(args.arch, args.keep_dylibs, platform=args.platform, on_linked=progress.advance)
        args.root = args.keep_dylibs
        return _build(args, progress)
    with tempfile.TemporaryDirectory(prefix="dyldcache-example-root-") as root:
        link_examples(args.arch, root, platform=args.platform, on_linked=progress.advance)
        args.root = root
        return _build(args, progress)


def _build(args: argparse.Namespace, progress: BuildProgress) -> int:
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
        progress=progress,
        apple_rules=args.apple_rules,
        source_date_epoch=args.source_date_epoch if args.source_date_epoch is not None else _default_epoch(),
        install_name_map=args.install_name_map,
        objc_preattached_categories=args.objc_preattached_categories,
        objc_optimizations=args.objc_optimizations,
        no_objc_imp_caches=args.no_objc_imp_caches,
    )
    try:
        result = build_cache(options)
    except NothingPlacedError as exc:
        progress.close()
        # every reason is printed before the one-line error, and machines get them as JSON too
        for e in exc.evictions:
            print(f"warning: {e}", file=sys.stderr)
        if args.json:
            print_json(
                {
                    "error": str(exc),
                    "evictions": [
                        {"path": e.path, "reason": e.reason} for e in exc.evictions if isinstance(e, Eviction)
                    ],
                }
            )
        raise
    progress.close()
    for e in result.evictions:
        print(f"warning: {e}", file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for path in result.removed:
        print(f"note: removed {path}, left by an earlier cache of the same name", file=sys.stderr)
    if args.time_passes:
        print(result.timer.report(), file=sys.stderr)
    if args.json:
        print_json(
            {
                "files": result.files,
                "map": result.map_path,
                "json_map": result.json_map_path,
                "uuid": uuid_string(result.uuid),
                "dylibs": result.dylibs,
                "evictions": [{"path": e.path, "reason": e.reason} for e in result.evictions],
                "warnings": result.warnings,
                "removed": result.removed,
            }
        )
    elif not args.quiet:
        print(
            f"built {result.files[0]} ({_plural(len(result.dylibs), 'dylib')}, "
            f"{_plural(len(result.files), 'file')}, {len(result.evictions)} evicted"
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
    p.add_argument(
        "--keep-dylibs",
        metavar="DIR",
        help="with --example: link the example dylibs into DIR (each at its install path) and keep them",
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
        "--objc-preattached-categories",
        action="store_true",
        help="attach ObjC categories to their classes in the cache, as dyld-1162 does (off by "
        "default: DyldExtractor cannot read the lists of lists this makes)",
    )
    p.add_argument(
        "--objc-optimizations",
        metavar="FILE",
        help="Apple's objcOptimizations JSON: the classes that get ObjC IMP caches (arm64/arm64e "
        "caches of 4 GiB regions: iOS). Without it every class and metaclass gets one on iOS "
        "(dyld-1162 builds none without the file), and none on macOS",
    )
    p.add_argument(
        "--no-objc-imp-caches",
        action="store_true",
        help="build no ObjC IMP caches (iOS builds them by default)",
    )
    p.add_argument(
        "--install-name-map",
        metavar="FILE",
        help="install-name renames, one 'OLD -> NEW' per line (a folder when both end with '/')",
    )
    p.add_argument(
        "-j", "--jobs", type=_jobs, default=0, help="worker processes (default 0: one per core; 1: none)"
    )
    p.add_argument(
        "--source-date-epoch",
        type=_epoch,
        metavar="SECONDS",
        help="record SECONDS as every input's mtime and 0 as its inode (macOS caches), so that copies "
        "of the same files build the same bytes (default: $SOURCE_DATE_EPOCH if set)",
    )
    p.add_argument("--time-passes", action="store_true", help="print per-phase times and peak memory")
    add_json_option(p, "print the result as JSON (no progress display)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display and no summary line")
    p.add_argument("paths", nargs="*", metavar="PATH", help="dylibs (placed at their install names)")
    p.set_defaults(func=_run)
