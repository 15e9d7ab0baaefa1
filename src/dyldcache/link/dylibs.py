"""Dylibs the linker links against: real Mach-O dylibs or .tbd stubs, with the symbols
each one exports directly or through its re-exported libraries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, LinkError
from ..macho import constants as C
from ..macho.file import open_macho
from ..macho.tbd import looks_like_tbd, read_tbd


@dataclass(slots=True)
class DylibInterface:
    """What a client needs to know about one dylib."""

    install_name: str
    current_version: int
    compatibility_version: int
    #: exported name -> "regular" | "weak" | "tlv" | "absolute"
    exports: dict[str, str] = field(default_factory=dict)
    #: install names of the libraries this one re-exports
    reexports: list[str] = field(default_factory=list)
    #: file it was read from
    source: str = ""


def _from_macho(path: str, arch: str) -> DylibInterface:
    image = open_macho(path, arch)
    if image.filetype != C.MH_DYLIB or image.id_dylib is None:
        raise InputError(f"{path}: not a dylib")
    iface = DylibInterface(
        image.id_dylib.path, image.id_dylib.current_version, image.id_dylib.compatibility_version, source=path
    )
    for e in image.exports:
        if e.is_weak_def:
            iface.exports[e.name] = "weak"
        elif e.is_thread_local:
            iface.exports[e.name] = "tlv"
        elif e.is_absolute:
            iface.exports[e.name] = "absolute"
        else:
            iface.exports[e.name] = "regular"
    iface.reexports = [d.path for d in image.dylibs if d.is_reexport]
    return iface


def read_dylib_interfaces(path: str, arch: str, platform: str | None) -> list[DylibInterface]:
    """The interfaces in ``path``: one for a Mach-O dylib, one or more for a .tbd file."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if looks_like_tbd(head):
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        out = []
        for lib in read_tbd(text, path, arch, platform):
            out.append(
                DylibInterface(
                    lib.install_name,
                    lib.current_version,
                    lib.compatibility_version,
                    dict(lib.symbols),
                    list(lib.reexports),
                    source=path,
                )
            )
        return out
    return [_from_macho(path, arch)]


class DylibSet:
    """Every dylib interface the link can see, for following re-exports by install name."""

    def __init__(self, arch: str, platform: str | None, search_paths: list[str]) -> None:
        self.arch = arch
        self.platform = platform
        self.search_paths = search_paths
        self.by_install_name: dict[str, DylibInterface] = {}

    def add(self, ifaces: list[DylibInterface]) -> DylibInterface:
        for iface in ifaces:
            self.by_install_name.setdefault(iface.install_name, iface)
        return ifaces[0]

    def load(self, path: str) -> DylibInterface:
        return self.add(read_dylib_interfaces(path, self.arch, self.platform))

    def find_library(self, name: str) -> str:
        """-lNAME: libNAME.tbd or libNAME.dylib in the search paths (ld64 prefers .tbd)."""
        for d in self.search_paths:
            for ext in (".tbd", ".dylib"):
                p = os.path.join(d, f"lib{name}{ext}")
                if os.path.isfile(p):
                    return p
        raise LinkError(
            f"library not found for -l{name} (searched: {', '.join(self.search_paths) or 'nothing'})"
        )

    def find(self, install_name: str) -> DylibInterface | None:
        """The interface of ``install_name``: one already read, or a .tbd/dylib named after it in
        the search paths."""
        if install_name in self.by_install_name:
            return self.by_install_name[install_name]
        base = os.path.basename(install_name)
        stem = base[:-6] if base.endswith(".dylib") else base
        for d in self.search_paths:
            for cand in (f"{stem}.tbd", base, f"{stem}.dylib"):
                p = os.path.join(d, cand)
                if os.path.isfile(p):
                    for iface in read_dylib_interfaces(p, self.arch, self.platform):
                        self.by_install_name.setdefault(iface.install_name, iface)
                    if install_name in self.by_install_name:
                        return self.by_install_name[install_name]
        return None

    def lookup(self, iface: DylibInterface, name: str, _seen: frozenset[str] = frozenset()) -> str | None:
        """The export kind of ``name`` if ``iface`` provides it (itself or via re-exports)."""
        kind = iface.exports.get(name)
        if kind is not None:
            return kind
        seen = _seen | {iface.install_name}
        for re_name in iface.reexports:
            if re_name in seen:
                continue
            sub = self.find(re_name)
            if sub is not None:
                found = self.lookup(sub, name, seen)
                if found is not None:
                    return found
        return None
