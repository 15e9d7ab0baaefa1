"""Command-line front end: ``dyldcache <command> ...``.

Each subcommand lives in the module that owns its concept; that module exposes
``add_parser(subparsers)`` (which sets ``func`` on its parser) and a plain Python
function that does the work, so every command is also callable from Python.

Exit status: 0 success, 1 failed build/link, 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from collections.abc import Sequence

from .errors import DyldCacheError
from .names import ESCAPE_HANDLER

#: modules that contribute subcommands, in the order they are listed by --help
COMMAND_MODULES = (
    "dyldcache.macho.describe",
    "dyldcache.link.driver",
    "dyldcache.builder.command",
    "dyldcache.cache.describe",
    "dyldcache.cache.images",
    "dyldcache.cache.symbols",
    "dyldcache.cache.extract",
    "dyldcache.cache.verify",
    "dyldcache.cache.objc_report",
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dyldcache",
        description="Build and inspect dyld shared caches (dyld-1162 format) on any OS.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # a name that is not UTF-8 prints as \xNN instead of failing the whole command
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=ESCAPE_HANDLER)
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except DyldCacheError as exc:
        print(f"dyldcache {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("dyldcache: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
