"""Phase 1 of a link: the inputs. Objects are parsed, dylibs and .tbd stubs give the interfaces
imports bind to (each with its ordinal), a stub library (``-stub_library``) gives the output's
identity and a synthetic object of stand-in definitions, and the platform is settled."""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import Arch
from ..errors import InputError, LinkError
from ..macho import constants as C
from ..macho.file import parse_macho
from ..macho.tbd import looks_like_tbd
from .dylibs import DylibInterface, DylibSet, read_dylib_interfaces
from .objects import ObjectFile
from .options import LinkOptions
from .stub_library import stand_in_object

_PLATFORMS = {"macos": C.PLATFORM_MACOS, "ios": C.PLATFORM_IOS}
_DEFAULT_MINOS = {C.PLATFORM_MACOS: 0x000D0000, C.PLATFORM_IOS: 0x00100000}


@dataclass(slots=True)
class LinkedDylib:
    """A dylib the output links against: one LC_*_DYLIB command."""

    iface: DylibInterface
    #: "load", "weak", "reexport" or "upward"
    mode: str
    #: 1-based library ordinal (the command's index among the output's dylib commands)
    ordinal: int


class Inputs:
    """The objects and dylibs of a link, and the identity and platform of its output."""

    def __init__(self, options: LinkOptions, arch: Arch) -> None:
        self.opts = options
        self.arch = arch
        self.warnings: list[str] = []
        self.install_name = options.install_name
        self.current_version = options.current_version
        self.compatibility_version = options.compatibility_version
        #: the library a stand-in is made for (-stub_library)
        self.stub: DylibInterface | None = None
        self.objects: list[ObjectFile] = []
        self.dylibs: list[LinkedDylib] = []
        self.dylib_set = DylibSet(options.arch, options.platform, list(options.search_paths))
        self.platform = 0
        self.minos = 0
        self.sdk = 0
        self.cpusubtype = arch.cpusubtype

    def load(self) -> None:
        by_name: dict[str, LinkedDylib] = {}
        for inp in self.opts.inputs:
            path = inp.path
            try:
                with open(path, "rb") as f:
                    head = f.read(8)
            except OSError as exc:
                raise InputError(f"{path}: cannot read: {exc.strerror}") from None
            if looks_like_tbd(head):
                iface = self.dylib_set.load(path)
            else:
                with open(path, "rb") as f:
                    data = f.read()
                image = parse_macho(data, path, self.opts.arch)
                if image.filetype == C.MH_OBJECT:
                    if image.header.cputype != self.arch.cputype:
                        raise InputError(f"{path}: object is {image.arch}, not {self.arch.name}")
                    self.objects.append(ObjectFile(image, self.arch))
                    continue
                if image.filetype != C.MH_DYLIB:
                    raise InputError(f"{path}: not an object, dylib or .tbd")
                iface = self.dylib_set.load(path)
            if iface.install_name in by_name:
                continue  # a repeated install path reuses its ordinal
            d = LinkedDylib(iface, inp.mode, len(self.dylibs) + 1)
            by_name[iface.install_name] = d
            self.dylibs.append(d)
        if self.opts.stub_library is not None:
            self._load_stub_library(by_name)
        elif not self.objects:
            raise LinkError("no object files to link")
        if not self.install_name:
            raise LinkError("no install name: give -install_name (or -stub_library)")
        if len(self.dylibs) > C.MAX_LIBRARY_ORDINAL:
            raise LinkError(f"too many dylibs ({len(self.dylibs)})")
        self._pick_platform()
        if self.stub is not None:
            self._add_stand_in_object()

    def _load_stub_library(self, by_name: dict[str, LinkedDylib]) -> None:
        """The stub's first document is the library the output stands in for; the others
        (inlined re-exported libraries) only serve to find its re-exports."""
        path = self.opts.stub_library
        assert path is not None
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from None
        if not looks_like_tbd(head):
            raise InputError(f"{path}: -stub_library needs a .tbd text stub")
        ifaces = read_dylib_interfaces(path, self.opts.arch, self.opts.platform)
        self.dylib_set.add(ifaces)
        stub = self.stub = ifaces[0]
        if not stub.exports and not stub.reexports:
            self.warnings.append(f"{path}: lists no symbols for {self.arch.name}")
        self.install_name = self.install_name or stub.install_name
        if self.current_version is None:
            self.current_version = stub.current_version
        if self.compatibility_version is None:
            self.compatibility_version = stub.compatibility_version
        for name in stub.reexports:
            d = by_name.get(name)
            if d is not None:
                d.mode = "reexport"
                continue
            iface = self.dylib_set.find(name)
            if iface is None:
                raise LinkError(
                    f"{path}: re-exported library {name} not found (inline it in the .tbd, "
                    "or give its directory with -L)"
                )
            d = by_name[name] = LinkedDylib(iface, "reexport", len(self.dylibs) + 1)
            self.dylibs.append(d)

    def _add_stand_in_object(self) -> None:
        assert self.stub is not None
        defined = {
            s.name for o in self.objects for s in o.symbols if s.is_external and (s.is_defined or s.is_common)
        }
        image, warnings = stand_in_object(
            self.stub, self.arch, self.platform, self.minos, self.sdk, defined, self.opts.stub_data
        )
        self.warnings += warnings
        self.objects.append(ObjectFile(image, self.arch))

    def _pick_platform(self) -> None:
        versions = [bv for o in self.objects for bv in o.image.build_versions]
        if self.arch.uses_pointer_auth and self.objects:
            subs = {o.image.header.cpusubtype for o in self.objects}
            self.cpusubtype = max(subs)
        if self.opts.platform is not None:
            if self.opts.platform not in _PLATFORMS:
                raise LinkError(f"unknown platform {self.opts.platform!r} (macos or ios)")
            self.platform = _PLATFORMS[self.opts.platform]
            same = [bv for bv in versions if bv.platform == self.platform]
            self.minos = max((bv.minos for bv in same), default=_DEFAULT_MINOS[self.platform])
            self.sdk = max((bv.sdk for bv in same), default=self.minos)
        elif versions:
            self.platform = versions[0].platform
            self.minos = max(bv.minos for bv in versions)
            self.sdk = max(bv.sdk for bv in versions)
        elif self.objects:
            raise LinkError("objects carry no LC_BUILD_VERSION: pass -platform")
        else:
            raise LinkError("a stand-in made from a stub library alone needs -platform")
