"""Install names that are not absolute paths, and explicit renames (``--install-name-map``).

A dylib linked for a bundle or a Python wheel names itself ``@rpath/libfoo.dylib`` and its
dependencies ``@rpath/...``, ``@loader_path/...`` or ``@executable_path/...``: dyld finds them
at run time relative to the image that loads them. A cache maps each dylib at one absolute path,
so the builder decides those paths when it builds:

- a dylib whose ``LC_ID_DYLIB`` is relative is installed at its path inside ``--root``;
- ``@loader_path/X`` is X relative to the folder of the loading dylib's install path;
- ``@rpath/X`` tries each ``LC_RPATH`` of the loading dylib in order (an rpath may itself start
  with ``@loader_path``); the first that names a file inside the root wins, as dyld takes the
  first candidate that exists. dyld also searches the rpaths of the images that loaded the
  loader, up to the main executable; a cache has no such chain, so only the loader's own count;
- ``@executable_path/X``: a cache has no main executable, so it never resolves.

Every candidate is resolved inside the root (``RootFS.resolve``), so nothing outside it is
opened. A map entry ``OLD -> NEW`` replaces the name OLD everywhere (a dylib's own
``LC_ID_DYLIB`` and every load of it) with NEW; an entry whose two sides end with ``/`` renames
every name under OLD. Renamed and resolved names are written into the cached load commands.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UsageError

LOADER_PATH = "@loader_path"
RPATH = "@rpath"
EXECUTABLE_PATH = "@executable_path"
#: the separator of an --install-name-map line
MAP_ARROW = "->"


def is_relative_name(name: str) -> bool:
    """Whether dyld resolves ``name`` relative to something (``@rpath/``, ``@loader_path/``, ...)."""
    return name.startswith("@")


@dataclass(frozen=True, slots=True)
class InstallNameMap:
    """``OLD -> NEW`` renames: exact names, and folder prefixes (longest first)."""

    names: dict[str, str]
    prefixes: tuple[tuple[str, str], ...] = ()

    def rename(self, name: str) -> str | None:
        new = self.names.get(name)
        if new is not None:
            return new
        for old, prefix in self.prefixes:
            if name.startswith(old):
                return prefix + name[len(old) :]
        return None


def parse_install_name_map(text: str, source: str) -> InstallNameMap:
    """The map in ``text`` (``source`` names it in errors): one ``OLD -> NEW`` per line, ``#``
    comments and blank lines ignored."""
    names: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        if body.count(MAP_ARROW) != 1:
            raise UsageError(f"{where}: expected 'OLD {MAP_ARROW} NEW', got {line.strip()!r}")
        old, new = (part.strip() for part in body.split(MAP_ARROW))
        if not old or not new:
            raise UsageError(f"{where}: expected 'OLD {MAP_ARROW} NEW', got {line.strip()!r}")
        if not new.startswith("/"):
            raise UsageError(f"{where}: the new name {new!r} is not an absolute path")
        if old.endswith("/") != new.endswith("/"):
            raise UsageError(f"{where}: a folder renames to a folder: end both names with '/' or neither")
        table = prefixes if old.endswith("/") else names
        if table.get(old, new) != new:
            raise UsageError(f"{where}: {old!r} is already renamed to {table[old]!r}")
        table[old] = new
    ordered = tuple(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))
    return InstallNameMap(names, ordered)


def read_install_name_map(path: str) -> InstallNameMap:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"--install-name-map {path}: {exc.strerror}") from None
    return parse_install_name_map(text, f"--install-name-map {path}")


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a load command's name leads: an absolute install path, or why it leads nowhere."""

    path: str | None
    #: the absolute paths tried, in order
    tried: tuple[str, ...] = ()
    #: why nothing was found, when ``tried`` does not say it all
    problem: str = ""

    def failure(self, name: str) -> str:
        """The eviction reason of a dylib whose load of ``name`` resolved to nothing."""
        detail = []
        if self.tried:
            detail.append("tried " + ", ".join(f"'{t}'" for t in self.tried))
        if self.problem:
            detail.append(self.problem)
        return f"Could not find dependency '{name}'" + (f" ({'; '.join(detail)})" if detail else "")


def _under(folder: str, rest: str) -> str:
    return posixpath.join(folder, rest) if rest else folder


def resolve_load(
    name: str,
    loader_path: str,
    rpaths: Sequence[str],
    locate: Callable[[str], str | None],
) -> Resolved:
    """The install path a load of ``name`` by the dylib installed at ``loader_path`` (with
    ``rpaths``, its LC_RPATHs) reaches; ``locate`` turns a candidate path into the path of an
    existing file inside the root (symlinks followed), or None."""
    loader_dir = posixpath.dirname(loader_path)
    if name.startswith(LOADER_PATH + "/"):
        candidate = _under(loader_dir, name[len(LOADER_PATH) + 1 :])
        found = locate(candidate)
        return Resolved(found, (candidate,))
    if name.startswith(RPATH + "/"):
        rest = name[len(RPATH) + 1 :]
        tried: list[str] = []
        skipped: list[str] = []
        for rp in rpaths:
            if rp == LOADER_PATH or rp.startswith(LOADER_PATH + "/"):
                folder = loader_dir + rp[len(LOADER_PATH) :]
            elif rp.startswith("/"):
                folder = rp
            else:  # @executable_path..., or relative to the process's working directory
                skipped.append(rp)
                continue
            candidate = _under(folder, rest)
            tried.append(candidate)
            found = locate(candidate)
            if found is not None:
                return Resolved(found, tuple(tried))
        problem = "" if rpaths else "the loading dylib has no LC_RPATH"
        if skipped:
            problem = "LC_RPATH " + ", ".join(f"'{s}'" for s in skipped) + " cannot be resolved in a cache"
        return Resolved(None, tuple(tried), problem)
    if name.startswith(EXECUTABLE_PATH + "/"):
        return Resolved(None, (), "a shared cache has no main executable; give it with --install-name-map")
    if is_relative_name(name):
        return Resolved(None, (), "dyld knows no such prefix")
    return Resolved(name)
