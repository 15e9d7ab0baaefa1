"""Scratch files of one build: bulk numpy arrays that a later phase reads back, kept on disk
instead of in the builder's memory (``docs/architecture.md``, "Memory").

Each process (the builder or a forked worker) appends to its own file in the build's staging
folder, which is removed with everything in it when the build ends. An array written here is
known by a :class:`ScratchArray` (file, offset, count, dtype): a few dozen bytes that pickle
cheaply back to the builder, and that any process of the build can read the array from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import BuildError

#: name of each process's file in the scratch folder (the process id follows)
SCRATCH_PREFIX = "scratch."


@dataclass(frozen=True, slots=True)
class ScratchArray:
    path: str
    #: byte offset in the file and number of elements
    offset: int
    count: int
    dtype: np.dtype

    def load(self) -> np.ndarray:
        """The array, read into memory of this process's own."""
        if self.count == 0:
            return np.zeros(0, dtype=self.dtype)
        try:
            out = np.fromfile(self.path, dtype=self.dtype, count=self.count, offset=self.offset)
        except OSError as exc:
            raise BuildError(f"{self.path}: cannot read the build's scratch file: {exc.strerror}") from None
        if len(out) != self.count:
            raise BuildError(
                f"internal: {self.path} is short (read {len(out)} of {self.count} at {self.offset})"
            )
        return out

    def release(self) -> None:
        """Give back the file space (and page cache) the array took, once nothing reads it again:
        the pages are freed at once, for the next arrays and the cache's own pages to reuse,
        instead of new ones (on Linux; elsewhere the space goes with the folder at the end)."""
        if self.count:
            punch_hole(self.path, self.offset, self.count * self.dtype.itemsize)


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    out: Callable[[int, int, int, int], int] = fn
    return out


_FALLOCATE = _fallocate()


def punch_hole(path: str, offset: int, size: int) -> None:
    """Free ``size`` bytes of ``path`` at ``offset`` (they read as zeros after); a no-op where
    the OS or the file system cannot."""
    if _FALLOCATE is None or size <= 0:
        return
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return
    try:
        _FALLOCATE(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, size)
    finally:
        os.close(fd)


class ScratchFiles:
    """Appends arrays to one file per process in ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        #: process id -> (descriptor, bytes written): a forked worker opens a file of its own
        self._files: dict[int, tuple[int, int]] = {}

    def write(self, array: np.ndarray) -> ScratchArray:
        pid = os.getpid()
        path = os.path.join(self.folder, f"{SCRATCH_PREFIX}{pid}")
        raw = memoryview(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
        try:
            if pid not in self._files:
                self._files[pid] = (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 0)
            fd, at = self._files[pid]
            view = raw
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise BuildError(f"{path}: cannot write the build's scratch file: {exc.strerror}") from None
        self._files[pid] = (fd, at + len(raw))
        return ScratchArray(path, at, len(array), array.dtype)

    def close(self) -> None:
        """Close the files this process opened (a worker's close when it exits)."""
        for pid, (fd, _) in list(self._files.items()):
            if pid == os.getpid():
                os.close(fd)
                del self._files[pid]


#: an array planned in one phase and used in a later one: in memory, or in the scratch files
Stored = np.ndarray | ScratchArray


def store(array: np.ndarray, scratch: ScratchFiles | None) -> Stored:
    """``array`` written to ``scratch``, or kept as it is without scratch files."""
    return array if scratch is None else scratch.write(array)


def load(stored: Stored) -> np.ndarray:
    """The array, of the caller's own."""
    return stored.copy() if isinstance(stored, np.ndarray) else stored.load()


def release(stored: Stored) -> None:
    """:meth:`ScratchArray.release` of an array in the scratch files (nothing for one in memory)."""
    if isinstance(stored, ScratchArray):
        stored.release()


def stored_len(stored: Stored) -> int:
    return len(stored) if isinstance(stored, np.ndarray) else stored.count
