"""Symbol resolution over a set of dylibs, with dyld's rules: re-exports, the special library
ordinals and weak-definition lookup (dyld-1162 ``CacheDylib::resolveSymbol`` and
``hasExportedSymbol``). Phase 1 uses it to find binds that cannot resolve; the bind pass
(``bind.py``) turns what it finds into cache addresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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
                    if other.install_name.startswith("/usr/lib/libc++.") and other.image.flags & C.MH_WEAK_DEFINES
                ),
                None,
            )
            self._libcxx_known = True
        return self._libcxx

    def find(
        self,
        index: int,
        name: str,
        *,
        reexports: bool = True,
        visited: set[tuple[int, str]] | None = None,
    ) -> Found | None:
        """``name`` as ``dylibs[index]`` exports it, following re-exports as dyld does. Each
        (dylib, name) is searched once, so a re-export cycle ends in "not found" instead of
        looping (dyld-1162 itself would recurse without end)."""
        if visited is None:
            visited = set()
        if (index, name) in visited:
            return None
        visited.add((index, name))
        d = self.dylibs[index]
        e = d.exports.get(name)
        if e is not None:
            if e.is_reexport:
                if not 1 <= e.ordinal <= len(d.dependents):
                    raise BuildError(
                        f"re-export ordinal {e.ordinal} in {d.install_name} out of range for {name}"
                    )
                dep, _ = d.dependents[e.ordinal - 1]
                if dep is None:
                    return None  # re-exported from a missing weak dylib
                return self.find(dep, e.import_name or name, reexports=reexports, visited=visited)
            return index, e
        if reexports:
            for dep, kind in d.dependents:
                if kind == "reexport" and dep is not None:
                    found = self.find(dep, name, reexports=True, visited=visited)
                    if found is not None:
                        return found
        return None

    def resolve_export(self, client: int, imp: Import) -> Found | None:
        """Where dyld binds ``imp`` of ``dylibs[client]``: None when nothing exports it."""
        d = self.dylibs[client]
        ordinal = imp.ordinal
        if 1 <= ordinal <= len(d.dependents):
            dep, _ = d.dependents[ordinal - 1]
            return None if dep is None else self.find(dep, imp.name)
        if ordinal == C.BIND_SPECIAL_DYLIB_SELF:
            return self.find(client, imp.name)
        if ordinal == C.BIND_SPECIAL_DYLIB_WEAK_LOOKUP:
            # no load order exists at build time: libc++ first, then the image itself, then
            # what it links directly (not upward)
            cxx = self.libcxx()
            if cxx is not None:
                found = self.find(cxx, imp.name, reexports=False)
                if found is not None:
                    return found
            found = self.find(client, imp.name, reexports=False)
            if found is not None:
                return found
            for dep, kind in d.dependents:
                if dep is None or kind == "upward":
                    continue
                found = self.find(dep, imp.name)
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
        for imp in bound:
            try:
                found = self.resolve_export(client, imp)
            except BuildError as exc:
                return str(exc)
            if found is not None or imp.weak:
                continue
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
