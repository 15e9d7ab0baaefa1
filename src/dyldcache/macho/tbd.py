"""Text-based dylib stubs (.tbd, Apple's TAPI YAML formats v3 and v4).

A stub stands in for a dylib at link time: it gives the install name, the versions,
the re-exported libraries and the exported symbols per target. Only what a linker
needs is read; a file may hold several documents (an umbrella and its inlined
re-exported libraries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import TbdFormatError


@dataclass(slots=True)
class TbdLibrary:
    install_name: str
    current_version: int = 0x10000
    compatibility_version: int = 0x10000
    #: install names of re-exported libraries (for the requested target)
    reexports: list[str] = field(default_factory=list)
    #: exported symbol name -> "regular" | "weak" | "tlv"
    symbols: dict[str, str] = field(default_factory=dict)
    parent_umbrella: str | None = None


def parse_version(text: object) -> int:
    """'1.2.3' (or a bare number) -> packed X<<16 | Y<<8 | Z."""
    parts = str(text).strip().split(".")
    nums = [int(p) for p in parts[:3] if p != ""]
    while len(nums) < 3:
        nums.append(0)
    if not (0 <= nums[0] <= 0xFFFF and 0 <= nums[1] <= 0xFF and 0 <= nums[2] <= 0xFF):
        raise ValueError(f"version {text!r} out of range")
    return nums[0] << 16 | nums[1] << 8 | nums[2]


class _Loader(yaml.SafeLoader):
    """SafeLoader that accepts TAPI's document tags (!tapi-tbd, !tapi-tbd-v3)."""


def _tagged(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_multi_constructor("!", _tagged)


def _target_matches(targets: list[str], arch: str, platform: str | None) -> bool:
    for t in targets:
        t_arch, _, t_platform = str(t).partition("-")
        if t_arch == arch and (
            platform is None
            or t_platform in (platform, f"{platform}-simulator")
            or t_platform.startswith(platform)
        ):
            return True
    return False


def _add_symbols(lib: TbdLibrary, section: dict[str, Any]) -> None:
    for name in section.get("symbols", []) or []:
        lib.symbols[str(name)] = "regular"
    for cls in section.get("objc-classes", []) or []:
        cls = str(cls)
        lib.symbols[f"_OBJC_CLASS_$_{cls}"] = "regular"
        lib.symbols[f"_OBJC_METACLASS_$_{cls}"] = "regular"
    for t in section.get("objc-eh-types", []) or []:
        lib.symbols[f"_OBJC_EHTYPE_$_{t}"] = "regular"
    for iv in section.get("objc-ivars", []) or []:
        lib.symbols[f"_OBJC_IVAR_$_{iv}"] = "regular"
    for name in section.get("weak-symbols", section.get("weak-def-symbols", [])) or []:
        lib.symbols[str(name)] = "weak"
    for name in section.get("thread-local-symbols", []) or []:
        lib.symbols[str(name)] = "tlv"


def _document(doc: dict[str, Any], arch: str, platform: str | None, path: str) -> TbdLibrary:
    try:
        lib = TbdLibrary(str(doc["install-name"]))
    except (KeyError, TypeError):
        raise TbdFormatError(path, None, "document has no install-name") from None
    try:
        if "current-version" in doc:
            lib.current_version = parse_version(doc["current-version"])
        if "compatibility-version" in doc:
            lib.compatibility_version = parse_version(doc["compatibility-version"])
    except ValueError as exc:
        raise TbdFormatError(path, None, f"bad version: {exc}") from None
    if "parent-umbrella" in doc:
        umbrella = doc["parent-umbrella"]
        if isinstance(umbrella, list):
            umbrella = umbrella[0].get("umbrella") if umbrella else None
        lib.parent_umbrella = None if umbrella is None else str(umbrella)

    version = doc.get("tbd-version")
    if version == 4:
        for section in doc.get("reexported-libraries", []) or []:
            if _target_matches(section.get("targets", []), arch, platform):
                lib.reexports.extend(str(x) for x in section.get("libraries", []) or [])
        for key in ("exports", "reexports"):
            for section in doc.get(key, []) or []:
                if _target_matches(section.get("targets", []), arch, platform):
                    _add_symbols(lib, section)
    else:  # v1-v3: sections are keyed by archs
        for section in doc.get("exports", []) or []:
            if arch in [str(a) for a in section.get("archs", [])]:
                lib.reexports.extend(str(x) for x in section.get("re-exports", []) or [])
                _add_symbols(lib, section)
    return lib


def read_tbd(text: str, path: str, arch: str, platform: str | None = None) -> list[TbdLibrary]:
    """Every library in a .tbd file, restricted to ``arch`` (and ``platform``, e.g. 'macos')."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as exc:
        raise TbdFormatError(path, None, f"not valid YAML: {exc}") from None
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise TbdFormatError(path, None, "not a TAPI text stub")
    return [_document(d, arch, platform, path) for d in docs]


def looks_like_tbd(head: bytes) -> bool:
    return head.lstrip().startswith(b"---")


def format_tbd(
    install_name: str,
    targets: list[str],
    symbols: list[str],
    current_version: str = "1.0",
    compatibility_version: str = "1.0",
    reexports: list[str] | None = None,
) -> str:
    """A TAPI v4 stub exporting ``symbols`` for every target (e.g. ``arm64-macos``)."""
    tlist = ", ".join(targets)
    lines = [
        "--- !tapi-tbd",
        "tbd-version:     4",
        f"targets:         [ {tlist} ]",
        f"install-name:    '{install_name}'",
        f"current-version: {current_version}",
        f"compatibility-version: {compatibility_version}",
    ]
    if reexports:
        lines += [
            "reexported-libraries:",
            f"  - targets:   [ {tlist} ]",
            "    libraries: [ " + ", ".join(f"'{r}'" for r in reexports) + " ]",
        ]
    if symbols:
        quoted = ", ".join(f"'{s}'" for s in symbols)
        lines += ["exports:", f"  - targets:   [ {tlist} ]", f"    symbols:   [ {quoted} ]"]
    lines.append("...")
    return "\n".join(lines) + "\n"
