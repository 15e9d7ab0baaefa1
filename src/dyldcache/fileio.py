"""Atomic output: write to a temporary name in the destination folder, fsync, rename.

A failed or interrupted write never leaves a partial file under the final name, never leaves
its temporary file behind, and never damages a file that was already there.
"""

from __future__ import annotations

import contextlib
import errno
import os

from .errors import DyldCacheError

#: errors that say the chosen output place is unusable (bad usage, exit 2), not that writing
#: failed on the way (a full disk, an I/O error: exit 1)
USAGE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}
)


class OutputError(DyldCacheError):
    """The output could not be written: exit status 2 when the place given cannot take it (no
    permission, read-only, not a folder), 1 when writing failed (disk full, I/O error)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code
        self.exit_status = 2 if code in USAGE_ERRNOS else 1

    @classmethod
    def from_os_error(cls, what: str, exc: OSError) -> OutputError:
        """``what: cannot write: <reason>`` with the exit status the reason calls for."""
        return cls(f"{what}: cannot write: {exc.strerror or exc}", exc.errno)


class StdoutError(OutputError):
    """Standard output could not be written (a full disk; a closed pipe is not an error)."""


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
    except BaseException as exc:  # an error or a Ctrl-C: the temporary file goes either way
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError.from_os_error(path, exc) from None
        raise
