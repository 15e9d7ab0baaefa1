"""Ctrl-C (SIGINT): where it may stop the program at once and where it has to wait.

Python turns SIGINT into ``KeyboardInterrupt`` at the next bytecode of the main thread, so an
interrupt can land between any two steps. Most steps are safe to abandon: the build writes
into a staging folder that its cleanup removes. A few short ones are not (creating the staging
folder, renaming the finished files into place): :func:`interrupts_deferred` holds an interrupt
back until such a step is over. Worker processes ignore SIGINT (:func:`ignore_interrupts`);
their parent stops them.

:class:`ProgramInterrupts` is the command line's handler: it raises ``KeyboardInterrupt`` until
the command's work is done (the new cache is in place), and ignores SIGINT after that, so that
the last milliseconds of the program, and Python's own shutdown, never print a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Deferral:
    """The SIGINT handler while interrupts are deferred: remembers that one came."""

    def __init__(self) -> None:
        self.pending = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[Deferral]:
    """Hold SIGINT back inside the block; on leaving it, deliver one that came in the meantime
    to the handler that was in place (``KeyboardInterrupt`` by default). The block may look at
    ``pending`` to undo its work before that happens.

    Processes forked inside the block inherit the deferring handler, so a SIGINT that reaches
    them before they set up their own handling is harmless. Outside the main thread (where
    Python never raises KeyboardInterrupt), or where SIGINT is ignored, the block does nothing.
    """
    deferral = Deferral()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    ):
        yield deferral
        return
    previous = signal.signal(signal.SIGINT, deferral)
    try:
        yield deferral
    finally:
        signal.signal(signal.SIGINT, previous)
        if deferral.pending:
            signal.raise_signal(signal.SIGINT)


def ignore_interrupts() -> None:
    """For worker processes: SIGINT (a Ctrl-C reaches the whole process group) is the parent's
    business; it stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ProgramInterrupts:
    """The command line's SIGINT handler: ``KeyboardInterrupt`` until :meth:`finish`, then
    nothing (the work is done; an interrupt can no longer change its outcome)."""

    def __init__(self) -> None:
        self.finished = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.finished:
            raise KeyboardInterrupt

    def finish(self) -> None:
        self.finished = True


@contextlib.contextmanager
def program_interrupts(*, keep: bool) -> Iterator[ProgramInterrupts]:
    """Install a :class:`ProgramInterrupts` handler (main thread only) for the block. With
    ``keep`` it stays after the block, finished: the process is about to exit."""
    handler = ProgramInterrupts()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield handler
    finally:
        handler.finish()
        if not keep:
            signal.signal(signal.SIGINT, previous)


def current_program_interrupts() -> ProgramInterrupts | None:
    """The command line's handler, when one is installed (the build tells it when its new cache
    is in place)."""
    handler = signal.getsignal(signal.SIGINT)
    return handler if isinstance(handler, ProgramInterrupts) else None
