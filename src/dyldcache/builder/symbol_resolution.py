"""Symbol resolution over a set of dylibs, with dyld's rules: re-exports, the special library
ordinals and weak-definition lookup (dyld-1162 ``CacheDylib::resolveSymbol`` and
``hasExportedSymbol``). Phase 1 uses it to find binds that cannot resolve; the bind pass
(``bind.py``) turns what it finds into cache addresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..errors import BuildError
from ..macho import constants as C
from ..macho.exports_trie import Export
from ..macho.file import MachOFile
from ..macho.fixups import Import
from .export_table import ExportTable


class ExportSource(Protocol):
    """What symbol resolution needs of a dylib: its input image and its resolved dependents
    (index into the same list, or None for a missing weak dylib, and the load kind)."""

    @property
    def image(self) -> MachOFile: ...

    @property
    def install_name(self) -> str: ...

    @property
    def exports(self) -> ExportTable: ...

    @property
    def dependents(self) -> list[tuple[int | None, str]]: ...


#: a resolved export: (index of the dylib that defines it, its trie entry)
Found = tuple[int, Export]
#: the same as indexes: (dylib, export in that dylib's ExportTable)
Located = tuple[int, int]


class ExportIndex:
    """Export lookups over a set of dylibs, with dyld's re-export and weak-lookup rules
    (dyld-1162 ``CacheDylib::resolveSymbol`` / ``hasExportedSymbol``).

    Tries are read from the *input* dylibs (which never change). Phase 1 uses it on the
    candidates to find binds that cannot resolve; the bind pass converts what it finds to
    cache addresses through each dylib's segment placement.
    """

    def __init__(self, dylibs: Sequence[ExportSource]) -> None:
        self.dylibs = dylibs
        self._libcxx: int | None = None
        self._libcxx_known = False

    def libcxx(self) -> int | None:
        """The dylib weak-definition lookups search first: the first libc++ with weak definitions.
        Found once per index; a weak lookup per import used to scan every dylib for it."""
        if not self._libcxx_known:
            self._libcxx = next(
                (
                    i
                    for i, other in enumerate(self.dylibs)
                    if other.install_name.startswith("/usr/lib/libc++.")
                    and other.image.flags & C.MH_WEAK_DEFINES
                ),
                None,
            )
            self._libcxx_known = True
        return self._libcxx

    def locate(
        self,
        index: int,
        name: str,
        *,
        reexports: bool = True,
        visited: set[tuple[int, str]] | None = None,
    ) -> Located | None:
        """``name`` as ``dylibs[index]`` exports it, following re-exports as dyld does, as indexes:
        (dylib, export in its table). Each (dylib, name) is searched once, so a re-export cycle
        ends in "not found" instead of looping (dyld-1162 itself would recurse without end)."""
        if visited is None:
            visited = set()
        if (index, name) in visited:
            return None
        visited.add((index, name))
        d = self.dylibs[index]
        i = d.exports.index(name)
        if i >= 0:
            if int(d.exports.flags[i]) & C.EXPORT_SYMBOL_FLAGS_REEXPORT:
                return self._follow_reexport(index, i, name, reexports, visited)
            return index, i
        if reexports:
            for dep, kind in d.dependents:
                if kind == "reexport" and dep is not None:
                    found = self.locate(dep, name, reexports=True, visited=visited)
                    if found is not None:
                        return found
        return None

    def _follow_reexport(
        self, index: int, i: int, name: str, reexports: bool, visited: set[tuple[int, str]]
    ) -> Located | None:
        """Where re-export ``i`` of ``dylibs[index]`` (looked up as ``name``) leads."""
        d = self.dylibs[index]
        e = d.exports.export(i)
        if not 1 <= e.ordinal <= len(d.dependents):
            raise BuildError(f"re-export ordinal {e.ordinal} in {d.install_name} out of range for {name}")
        dep, _ = d.dependents[e.ordinal - 1]
        if dep is None:
            return None  # re-exported from a missing weak dylib
        return self.locate(dep, e.import_name or name, reexports=reexports, visited=visited)

    def locate_many(self, index: int, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`locate` of every name in ``names`` (re-exports followed), searched together:
        the dylib and export index of each, -1 for a name not found."""
        dylib = np.full(len(names), -1, dtype=np.int64)
        export = np.full(len(names), -1, dtype=np.int64)
        self._locate_many(index, names, np.arange(len(names)), dylib, export, set())
        return dylib, export

    def _locate_many(
        self,
        index: int,
        names: Sequence[str],
        which: np.ndarray,
        dylib: np.ndarray,
        export: np.ndarray,
        seen: set[int],
    ) -> np.ndarray:
        """Search ``names[which]`` from ``dylibs[index]`` into ``dylib``/``export``; returns the
        positions still not found. ``seen``: the dylibs this search has been through, the same
        for every name still looked for (each name walks the same re-export tree until it is
        found), which is what the visited set of :meth:`locate` holds for each of them."""
        if index in seen or not len(which):
            return which
        seen.add(index)
        d = self.dylibs[index]
        table = d.exports
        at = table.lookup_many([names[k] for k in which.tolist()])
        hit = at >= 0
        reexported = np.zeros(len(which), dtype=bool)
        reexported[hit] = (table.flags[at[hit]] & np.uint64(C.EXPORT_SYMBOL_FLAGS_REEXPORT)) != 0
        direct = hit & ~reexported
        dylib[which[direct]] = index
        export[which[direct]] = at[direct]
        for j in np.flatnonzero(reexported).tolist():
            k = int(which[j])
            visited = {(s, names[k]) for s in seen}
            found = self._follow_reexport(index, int(at[j]), names[k], True, visited)
            if found is not None:
                dylib[k], export[k] = found
        left = which[~hit]
        for dep, kind in d.dependents:
            if kind == "reexport" and dep is not None:
                left = self._locate_many(dep, names, left, dylib, export, seen)
        return left

    def resolve_many(self, client: int, imports: Sequence[Import]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`resolve_export` of every import of ``dylibs[client]`` in ``imports``, as the
        dylib and export index of each (-1 where nothing exports it). Imports of one dependent
        are searched together."""
        d = self.dylibs[client]
        dylib = np.full(len(imports), -1, dtype=np.int64)
        export = np.full(len(imports), -1, dtype=np.int64)
        groups: dict[int, list[int]] = {}
        for k, imp in enumerate(imports):
            groups.setdefault(imp.ordinal, []).append(k)
        for ordinal, ks in groups.items():
            if 1 <= ordinal <= len(d.dependents):
                start = d.dependents[ordinal - 1][0]
            elif ordinal == C.BIND_SPECIAL_DYLIB_SELF:
                start = client
            else:  # weak lookups (and bad ordinals) one by one
                for k in ks:
                    found = self.locate_import(client, imports[k])
                    if found is not None:
                        dylib[k], export[k] = found
                continue
            if start is None:
                continue
            sel = np.array(ks, dtype=np.int64)
            a, b = self.locate_many(start, [imports[k].name for k in ks])
            dylib[sel], export[sel] = a, b
        return dylib, export

    def resolve_export(self, client: int, imp: Import) -> Found | None:
        """Where dyld binds ``imp`` of ``dylibs[client]``: None when nothing exports it."""
        at = self.locate_import(client, imp)
        return None if at is None else (at[0], self.dylibs[at[0]].exports.export(at[1]))

    def locate_import(self, client: int, imp: Import) -> Located | None:
        """What :meth:`resolve_export` finds, as indexes: (dylib, export in its table)."""
        d = self.dylibs[client]
        ordinal = imp.ordinal
        if 1 <= ordinal <= len(d.dependents):
            dep, _ = d.dependents[ordinal - 1]
            return None if dep is None else self.locate(dep, imp.name)
        if ordinal == C.BIND_SPECIAL_DYLIB_SELF:
            return self.locate(client, imp.name)
        if ordinal == C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP:
            # no load order exists at build time: libc++ first, then the image itself, then
            # what it links directly (not upward)
            cxx = self.libcxx()
            if cxx is not None:
                found = self.locate(cxx, imp.name, reexports=False)
                if found is not None:
                    return found
            found = self.locate(client, imp.name, reexports=False)
            if found is not None:
                return found
            for dep, kind in d.dependents:
                if dep is None or kind == "upward":
                    continue
                found = self.locate(dep, imp.name)
                if found is not None:
                    return found
            return None
        raise BuildError(f"unknown library ordinal {ordinal} in {d.install_name} when binding '{imp.name}'")

    def missing_symbol(self, client: int, bound: Sequence[Import]) -> str | None:
        """Why a bind of ``dylibs[client]`` cannot be resolved (dyld-1162's message), or None.
        ``bound``: the client's imports that at least one bind uses.

        dyld-1162 stops the whole build on such a bind; the builder instead evicts the client
        in phase 1 (cache-format.md §8.2), so that one dylib's bad bind costs only that dylib.
        """
        d = self.dylibs[client]
        try:
            found = self.resolve_many(client, bound)[0] >= 0
        except BuildError:
            found = np.zeros(len(bound), dtype=bool)  # one by one below: the first bad one is reported
        for imp, ok in zip(bound, found.tolist(), strict=True):
            if ok or imp.weak:
                continue
            try:
                if self.locate_import(client, imp) is not None:
                    continue
            except BuildError as exc:
                return str(exc)
            if imp.ordinal == C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP:
                return f"weak-def symbol ({imp.name}) not found in dyld cache"
            deps = d.dependents
            where = "unknown"
            dep = deps[imp.ordinal - 1][0] if 1 <= imp.ordinal <= len(deps) else None
            if dep is not None:
                where = self.dylibs[dep].install_name
            elif imp.ordinal == C.BIND_SPECIAL_DYLIB_SELF:
                where = d.install_name
            return f"Symbol not found: {imp.name} (referenced from {d.install_name}, expected in {where})"
        return None
