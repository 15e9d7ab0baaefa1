"""Command-line front end: ``dyldcache <command> ...``.

Each subcommand lives in the module that owns its concept; that module exposes
``add_parser(subparsers)`` (which sets ``func`` on its parser) and a plain Python
function that does the work, so every command is also callable from Python.

Exit status, the same for every command (:data:`EXIT_STATUS`): 0 success; 1 the command ran
and failed (a build or a link failed, ``verify`` found problems, ``a2s``/``s2a`` found nothing
for an argument, the output could not be written); 2 bad usage or an input that cannot be read
as what it should be; 130 interrupted (Ctrl-C), with no traceback and, for ``build``, the
output folder as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, cast

from . import __version__
from .errors import DyldCacheError
from .fileio import OutputError
from .interrupts import interrupts_deferred, program_interrupts
from .names import ESCAPE_HANDLER, json_safe

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
)

#: the exit statuses of every command
EXIT_STATUS = {"ok": 0, "failed": 1, "usage": 2, "interrupted": 130}

#: what ``--version`` prints after the version
FORMAT_NOTE = "writes and reads the dyld-1162 shared cache format"


def add_json_option(parser: argparse.ArgumentParser, help: str = "machine-readable output") -> None:
    """The ``--json`` switch every command has (``print_json`` prints the document)."""
    parser.add_argument("--json", action="store_true", help=help)


def print_json(doc: Any) -> None:
    """A command's ``--json`` document on standard output (names that are not UTF-8 as \\xNN)."""
    json.dump(json_safe(doc), sys.stdout, indent=2)
    sys.stdout.write("\n")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dyldcache",
        description="Build and inspect dyld shared caches (dyld-1162 format) on any OS.",
    )
    parser.add_argument("--version", action="version", version=f"dyldcache {__version__} ({FORMAT_NOTE})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


class StdoutError(OutputError):
    """Standard output could not be written (a full disk; a closed pipe is not an error)."""


class _CheckedOutput:
    """Standard output while a command runs: a write that fails (a full disk) is an OutputError,
    one line and exit status 1, instead of a traceback."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(f"standard output: cannot write: {exc.strerror}", exc.errno) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(f"standard output: cannot write: {exc.strerror}", exc.errno) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _checked_stdout() -> Iterator[None]:
    original = sys.stdout
    sys.stdout = cast(TextIO, _CheckedOutput(original))
    try:
        yield
    finally:
        sys.stdout = original


def _silence_stdout() -> None:
    """After a write to standard output failed, send what is still buffered nowhere, so that
    Python's own last flush does not complain."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status.

    ``argv=None`` runs the program (``sys.argv``): then, once the command has done its work,
    SIGINT is ignored until the process exits, so that a late Ctrl-C cannot turn a finished
    command into a traceback or a misleading status. With an ``argv`` list (tests, embedding),
    the previous SIGINT handler is restored when the command returns.
    """
    command = "dyldcache"
    with program_interrupts(keep=argv is None):
        try:
            for stream in (sys.stdout, sys.stderr):
                # a name that is not UTF-8 prints as \xNN instead of failing the whole command
                if isinstance(stream, io.TextIOWrapper):
                    stream.reconfigure(errors=ESCAPE_HANDLER)
            # a Ctrl-C while the command modules load (numpy among them) waits until they are
            # loaded: cut short, a C extension's initialisation can turn it into another error
            with interrupts_deferred():
                parser = make_parser()
            args = parser.parse_args(argv)
            command = f"dyldcache {args.command}"
            with _checked_stdout():
                status: int = args.func(args)
                sys.stdout.flush()
        except DyldCacheError as exc:
            if isinstance(exc, StdoutError):
                _silence_stdout()
            print(f"{command}: error: {exc}", file=sys.stderr)
            return exc.exit_status
        except KeyboardInterrupt:
            print(f"{command}: interrupted", file=sys.stderr)
            return EXIT_STATUS["interrupted"]
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_STATUS["ok"]
        return status


if __name__ == "__main__":
    sys.exit(main())
