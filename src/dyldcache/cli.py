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

import sys

from .errors import DyldCacheError

# Nothing else is imported when this module loads (the console script imports it first, and
# a Ctrl-C can only be answered once main runs): the rest is imported inside main.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, TextIO

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

#: the exit statuses of every command
EXIT_STATUS = {"ok": 0, "failed": 1, "usage": 2, "interrupted": 130}

#: what ``--version`` prints after the version
FORMAT_NOTE = "writes and reads the dyld-1162 shared cache format"


def make_parser() -> argparse.ArgumentParser:
    import argparse
    import importlib

    from . import __version__

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


class _CheckedOutput:
    """Standard output while a command runs: a write that fails (a full disk) is a StdoutError,
    one line and exit status 1, instead of a traceback."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _stdout_error(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _stdout_error(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _stdout_error(exc: OSError) -> DyldCacheError:
    from .fileio import StdoutError

    return StdoutError(f"standard output: cannot write: {exc.strerror}", exc.errno)


def _silence_stdout() -> None:
    """After a write to standard output failed, send what is still buffered nowhere, so that
    Python's own last flush does not complain."""
    import io
    import os

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status.

    ``argv=None`` runs the program (``sys.argv``): then, once the command has done its work,
    SIGINT is ignored until the process exits, so that a late Ctrl-C cannot turn a finished
    command into a traceback or a misleading status. With an ``argv`` list (tests, embedding),
    the previous SIGINT handler is restored when the command returns.
    """
    command = ["dyldcache"]
    try:
        from .interrupts import program_interrupts

        with program_interrupts(keep=argv is None):
            return _run(argv, command)
    except KeyboardInterrupt:
        print(f"{command[-1]}: interrupted", file=sys.stderr)
        return EXIT_STATUS["interrupted"]


def _run(argv: Sequence[str] | None, command: list[str]) -> int:
    from .interrupts import interrupts_deferred

    # a Ctrl-C while the modules load (numpy among them) waits until they are loaded: cut
    # short, a C extension's initialisation can turn it into another error
    with interrupts_deferred():
        import io

        from .fileio import StdoutError
        from .names import ESCAPE_HANDLER

        parser = make_parser()
    for stream in (sys.stdout, sys.stderr):
        # a name that is not UTF-8 prints as \xNN instead of failing the whole command
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=ESCAPE_HANDLER)
    args = parser.parse_args(argv)
    command.append(f"dyldcache {args.command}")
    original = sys.stdout
    sys.stdout = _CheckedOutput(original)
    try:
        status: int = args.func(args)
        sys.stdout.flush()
    except DyldCacheError as exc:
        sys.stdout = original
        if isinstance(exc, StdoutError):
            _silence_stdout()
        print(f"{command[-1]}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except BrokenPipeError:
        sys.stdout = original
        _silence_stdout()
        return EXIT_STATUS["ok"]
    finally:
        sys.stdout = original
    return status


if __name__ == "__main__":
    sys.exit(main())
