"""The files one build writes, committed together.

Every file is written into a hidden staging folder inside the output folder (same filesystem,
so renames are atomic), under its final name, so that the finished cache can be checked as a
whole before anything is moved. ``commit`` fsyncs them and renames each into place, then
removes the files an earlier cache of the same name left that the new one does not own (old
subcaches, a ``.symbols`` file). ``discard`` removes the staging folder: a failed or interrupted
build leaves the output folder as it found it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile

from ..errors import UsageError
from ..fileio import OutputError

#: prefix of the staging folders (a crashed build's can be recognised and removed)
STAGING_PREFIX = ".dyldcache-staging-"


class OutputSet:
    def __init__(self, folder: str, main_name: str) -> None:
        """``main_name``: the main cache file's name; every file of the cache starts with it."""
        self.folder = folder
        self.main_name = main_name
        try:
            os.makedirs(folder, exist_ok=True)
            self.staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)
        except OSError as exc:
            raise UsageError(f"{folder}: cannot create the output folder: {exc.strerror}") from None
        self.names: list[str] = []
        self._maps: list[mmap.mmap] = []

    def staged(self, name: str) -> str:
        return os.path.join(self.staging, name)

    def final(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def create(self, name: str, size: int) -> mmap.mmap:
        """A new zero-filled file of ``size`` bytes, mapped read-write (closed by commit/discard)."""
        path = self.staged(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, size)
                mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(f"{self.final(name)}: cannot create: {exc.strerror}") from None
        self.names.append(name)
        self._maps.append(mm)
        return mm

    def write(self, name: str, data: bytes) -> None:
        try:
            with open(self.staged(name), "wb") as f:
                f.write(data)
        except OSError as exc:
            raise OutputError(f"{self.final(name)}: cannot write: {exc.strerror}") from None
        self.names.append(name)

    def close_maps(self) -> None:
        """Flush and unmap every mapped file (views of them must be gone)."""
        for mm in self._maps:
            mm.flush()
            mm.close()
        self._maps.clear()

    def commit(self, order: list[str] | None = None) -> list[str]:
        """Move every file into place (in ``order``, then the rest); returns the stale files removed."""
        self.close_maps()
        names = list(order or []) + [n for n in self.names if n not in (order or [])]
        try:
            for name in names:
                fd = os.open(self.staged(name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for name in names:
                os.replace(self.staged(name), self.final(name))
        except OSError as exc:
            raise OutputError(f"cannot write the cache files: {exc.strerror}") from None
        self._remove_staging()
        stale = []
        for name in sorted(os.listdir(self.folder)):
            if name in names or not (name == self.main_name or name.startswith(self.main_name + ".")):
                continue
            path = self.final(name)
            if os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    stale.append(path)
        with contextlib.suppress(OSError):
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return stale

    def discard(self) -> None:
        """Forget everything written; the output folder is left as it was."""
        for mm in self._maps:
            with contextlib.suppress(BufferError, ValueError):
                mm.close()
        self._maps.clear()
        self._remove_staging()

    def _remove_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
