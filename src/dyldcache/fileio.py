"""Atomic output: write to a temporary name in the destination folder, fsync, rename.

A failed or interrupted write never leaves a partial file under the final name, and
never damages a file that was already there.
"""

from __future__ import annotations

import contextlib
import os

from .errors import DyldCacheError


class OutputError(DyldCacheError):
    """The output could not be written (exit status 1)."""


def temporary_name(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")


def write_atomically(path: str, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
