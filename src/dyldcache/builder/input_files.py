"""The files a build reads: a root filesystem walked or listed, or host paths, and the symlinks of
the root as aliases.

Everything under ``--root`` is resolved the way a process chrooted into it would see it: an
absolute symlink target starts again at the root, and a path that would climb above the root
(``..`` too far, or a symlink to such a place) is refused. Nothing outside the root is opened,
whether it comes from the walk, from ``--dylib-list`` or through a directory symlink.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UsageError
from ..macho import constants as C

#: symlinks followed while resolving one path before it counts as a loop (as the kernel's MAXSYMLINKS)
MAX_SYMLINKS = 32


@dataclass(slots=True)
class InputFile:
    """One file handed to the builder: its install path and where its bytes are."""

    path: str  # install path (inside the root); "" for a dylib given by host path
    host_path: str  # where to read it
    mtime: int = 0
    inode: int = 0


class RootFS:
    """Paths inside a root folder, resolved without ever leaving it."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise UsageError(f"--root {root}: not a directory")

    def host(self, install_path: str) -> str:
        """The host path of an install path whose components are already resolved."""
        return os.path.join(self.root, install_path.lstrip("/"))

    def install_path(self, host: str) -> str:
        return "/" + os.path.relpath(host, self.root).replace(os.sep, "/")

    def resolve(self, path: str) -> str | None:
        """``path`` (an install path, or relative to the root) with every symlink followed inside
        the root: an install path free of symlinks, or None when it would leave the root or
        loops. The result need not exist."""
        todo = [c for c in path.split("/") if c not in ("", ".")]
        todo.reverse()
        done: list[str] = []
        hops = 0
        while todo:
            comp = todo.pop()
            if comp == "..":
                if not done:
                    return None
                done.pop()
                continue
            host = os.path.join(self.root, *done, comp)
            if not os.path.islink(host):
                done.append(comp)
                continue
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            try:
                target = os.readlink(host)
            except OSError:
                return None
            if target.startswith("/"):
                done = []
            todo.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
        return "/" + "/".join(done)


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_mtime), st.st_ino


def _looks_like_macho(host: str) -> bool:
    try:
        with open(host, "rb") as f:
            magic = f.read(4)
    except OSError:
        return True  # let the loader report why it cannot be read
    if len(magic) < 4:
        return False
    return int.from_bytes(magic, "little") in (C.MH_MAGIC_64, C.MH_MAGIC) or int.from_bytes(magic, "big") in (
        C.FAT_MAGIC,
        C.FAT_MAGIC_64,
    )


def _named_like_a_dylib(install_path: str) -> bool:
    """A file a user means as a dylib even when its contents say otherwise (so a corrupt one is
    reported, not skipped): ``*.dylib``, or a framework's binary (``X.framework/X``,
    ``X.framework/Versions/V/X``)."""
    if install_path.endswith(".dylib"):
        return True
    parts = install_path.split("/")
    name = parts[-1]
    return f"{name}.framework" in parts[-4:-1]


def files_from_root(
    root: str, dylib_list: list[str] | None = None
) -> tuple[list[InputFile], dict[str, str], list[str], RootFS]:
    """Regular files under ``root`` (or only those in ``dylib_list``), symlinks as aliases.

    Returns (files, aliases: link path -> install path it resolves to, warnings, the root). A
    link or a list entry that leads outside the root is refused with a warning.
    """
    fs = RootFS(root)
    files: list[InputFile] = []
    aliases: dict[str, str] = {}
    warnings: list[str] = []
    seen: set[str] = set()

    def add_file(install: str, host: str, st: os.stat_result) -> None:
        if install in seen:
            return
        if _looks_like_macho(host) or _named_like_a_dylib(install):
            seen.add(install)
            files.append(InputFile(install, host, int(st.st_mtime), st.st_ino))

    def consider(install: str, *, listed: bool) -> None:
        resolved = fs.resolve(install)
        if resolved is None:
            what = "from the dylib list" if listed else "(a symlink)"
            warnings.append(f"'{install}' {what} leads outside the root or loops; ignored")
            return
        host = fs.host(resolved)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            if listed:
                warnings.append(f"'{install}' from the dylib list does not exist under the root")
            elif _named_like_a_dylib(install):
                warnings.append(
                    f"symlink '{install}' does not resolve inside the root (to '{resolved}'; "
                    "absolute targets are taken relative to the root); ignored"
                )
            return
        except OSError as exc:
            warnings.append(f"cannot read '{install}': {exc.strerror}")
            return
        if not stat.S_ISREG(st.st_mode):
            if listed:
                warnings.append(f"'{install}' from the dylib list is not a regular file")
            return
        if resolved != install and not listed:
            aliases[install] = resolved
            return
        add_file(resolved, host, st)
        if resolved != install:
            aliases[install] = resolved

    if dylib_list is not None:
        for p in dylib_list:
            consider("/" + p.lstrip("/"), listed=True)
    else:
        for dirpath, dirnames, filenames in os.walk(fs.root):
            dirnames.sort()
            for name in sorted(filenames) + sorted(
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ):
                consider(fs.install_path(os.path.join(dirpath, name)), listed=False)
    return files, aliases, warnings, fs


def files_from_paths(paths: Iterable[str]) -> list[InputFile]:
    """Dylibs given by host path, without a root: each is placed at its own install name."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            raise UsageError(f"{p}: is a directory (give dylib files, or the folder as --root)")
        if not os.path.isfile(p):
            raise UsageError(f"{p}: no such file")
        try:
            mtime, ino = _stat(p)
        except OSError as exc:
            raise UsageError(f"{p}: cannot read: {exc.strerror}") from None
        out.append(InputFile("", p, mtime, ino))
    return out


def read_list(path: str, option: str) -> list[str]:
    """The entries of a list file given as ``option``: one a line, blank lines and # comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}") from None


@dataclass(slots=True)
class InputSet:
    """The files one build examines, the root's aliases and what the walk warned about."""

    files: list[InputFile]
    aliases: dict[str, str]
    warnings: list[str]
    root: RootFS | None


def gather_inputs(root: str | None, dylib_list: str | None, paths: list[str]) -> InputSet:
    """The files of ``--root`` (all, or those ``--dylib-list`` names), else the list's host paths,
    and the dylibs given by host path. UsageError when that is nothing, saying what to give."""
    listed = read_list(dylib_list, "--dylib-list") if dylib_list is not None else None
    files: list[InputFile] = []
    aliases: dict[str, str] = {}
    warnings: list[str] = []
    fs = None
    if root is not None:
        files, aliases, warnings, fs = files_from_root(root, listed)
    elif listed is not None:
        try:
            files = files_from_paths(listed)
        except UsageError as exc:
            raise UsageError(
                f"--dylib-list {dylib_list}: {exc} (without --root, its entries are host paths)"
            ) from None
    files += files_from_paths(paths)
    if not files:
        raise UsageError(_no_inputs_message(root, dylib_list, listed, warnings))
    return InputSet(files, aliases, warnings, fs)


def _no_inputs_message(
    root: str | None, dylib_list: str | None, listed: list[str] | None, warnings: list[str]
) -> str:
    """Why the inputs given hold no file to examine, and what to do."""
    first = f" (first: {warnings[0]})" if warnings else ""
    if listed is not None:
        if not listed:
            return f"--dylib-list {dylib_list}: lists no dylibs (one path a line)"
        under = f" under --root {root}" if root is not None else ""
        return (
            f"--dylib-list {dylib_list}: none of its {len(listed)} entries is a file{under}"
            f"{first}; entries are paths inside the root"
        )
    if root is not None:
        return f"--root {root}: holds no Mach-O file (dylibs are found at their install paths in it)"
    return "no inputs: give --root, --dylib-list or dylib paths"
