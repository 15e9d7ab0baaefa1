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
from collections.abc import Callable

from ..fileio import OutputError
from ..interrupts import interrupts_deferred

#: prefix of the staging folders (a crashed build's can be recognised and removed)
STAGING_PREFIX = ".dyldcache-staging-"
#: prefix, in the staging folder, of the links to the files a commit replaces
BACKUP_PREFIX = "earlier."


class OutputSet:
    def __init__(self, folder: str, main_name: str) -> None:
        """``main_name``: the main cache file's name; every file of the cache starts with it."""
        self.folder = folder
        self.main_name = main_name
        try:
            os.makedirs(folder, exist_ok=True)
            self.staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)
        except OSError as exc:
            raise OutputError(
                f"{folder}: cannot write in the output folder: {exc.strerror}", exc.errno
            ) from None
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
            raise OutputError.from_os_error(self.final(name), exc) from None
        self.names.append(name)
        self._maps.append(mm)
        return mm

    def write(self, name: str, data: bytes) -> None:
        try:
            with open(self.staged(name), "wb") as f:
                f.write(data)
        except OSError as exc:
            raise OutputError.from_os_error(self.final(name), exc) from None
        self.names.append(name)

    def close_maps(self) -> None:
        """Flush and unmap every mapped file (views of them must be gone)."""
        for mm in self._maps:
            mm.flush()
            mm.close()
        self._maps.clear()

    def commit(
        self, order: list[str] | None = None, on_committed: Callable[[], None] | None = None
    ) -> list[str]:
        """Move every file into place (in ``order``, then the rest); returns the stale files removed.

        The renames are the one step a Ctrl-C does not cut short: one that comes during them
        puts the earlier files back (hard links to them are kept in the staging folder until
        the renames are done) before it ends the build. ``on_committed`` is called once the new
        files are in place, before a Ctrl-C that came later is delivered.
        """
        self.close_maps()
        names = list(order or []) + [n for n in self.names if n not in (order or [])]
        try:
            for name in names:
                fd = os.open(self.staged(name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise OutputError(
                f"{self.folder}: cannot move the cache files into place: {exc.strerror}", exc.errno
            ) from None
        stale: list[str] = []
        with interrupts_deferred() as deferral:
            kept = self._keep_earlier(names)
            moved: list[str] = []
            try:
                for name in names:
                    os.replace(self.staged(name), self.final(name))
                    moved.append(name)
            except OSError as exc:
                self._put_back(moved, kept)
                raise OutputError(
                    f"{self.folder}: cannot move the cache files into place: {exc.strerror}", exc.errno
                ) from None
            rolled_back = deferral.pending
            if rolled_back:
                self._put_back(moved, kept)
            else:
                self._remove_staging()
                stale = self._remove_stale(names)
                if on_committed is not None:
                    on_committed()
        if rolled_back:  # the handler in place did not end the build: it must not look committed
            raise KeyboardInterrupt
        return stale

    def _keep_earlier(self, names: list[str]) -> dict[str, str | None]:
        """Hard links, in the staging folder, to the files the commit is about to replace (None
        where the filesystem has no hard links: that earlier file cannot be put back)."""
        kept: dict[str, str | None] = {}
        for name in names:
            backup = os.path.join(self.staging, BACKUP_PREFIX + name)
            try:
                os.link(self.final(name), backup)
                kept[name] = backup
            except FileNotFoundError:
                pass
            except OSError:
                kept[name] = None
        return kept

    def _put_back(self, moved: list[str], kept: dict[str, str | None]) -> None:
        """Undo the renames done so far: the earlier files return, new ones without one go."""
        for name in moved:
            backup = kept.get(name, "")
            with contextlib.suppress(OSError):
                if backup:
                    os.replace(backup, self.final(name))
                elif backup == "":
                    os.unlink(self.final(name))

    def _remove_stale(self, names: list[str]) -> list[str]:
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
