"""``dyldcache macho FILE``: what a Mach-O image holds, as text or JSON.

Load commands, segments and sections, dependencies, fixup counts by kind, split seg
entries by kind, and exports; every slice of a fat file unless ``--arch`` picks one.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import MachOFormatError
from ..report import add_json_option, print_json
from . import constants as C
from .fat import is_fat, parse_fat
from .file import MachOFile, MappedFile, format_version, parse_macho

_FILETYPES = {
    C.MH_OBJECT: "object",
    C.MH_EXECUTE: "execute",
    C.MH_DYLIB: "dylib",
    C.MH_BUNDLE: "bundle",
    C.MH_DYLINKER: "dylinker",
    C.MH_DSYM: "dsym",
    C.MH_KEXT_BUNDLE: "kext",
    C.MH_FILESET: "fileset",
}
_HEADER_FLAGS = {
    C.MH_NOUNDEFS: "NOUNDEFS",
    C.MH_DYLDLINK: "DYLDLINK",
    C.MH_TWOLEVEL: "TWOLEVEL",
    C.MH_SUBSECTIONS_VIA_SYMBOLS: "SUBSECTIONS_VIA_SYMBOLS",
    C.MH_WEAK_DEFINES: "WEAK_DEFINES",
    C.MH_BINDS_TO_WEAK: "BINDS_TO_WEAK",
    C.MH_PIE: "PIE",
    C.MH_NO_REEXPORTED_DYLIBS: "NO_REEXPORTED_DYLIBS",
    C.MH_HAS_TLV_DESCRIPTORS: "HAS_TLV_DESCRIPTORS",
    C.MH_APP_EXTENSION_SAFE: "APP_EXTENSION_SAFE",
    C.MH_DYLIB_IN_CACHE: "DYLIB_IN_CACHE",
}


def _version(v: int) -> str:
    """xxxx.yy.zz packed versions of LC_BUILD_VERSION."""
    return format_version(v)


def describe_image(image: MachOFile) -> dict[str, Any]:
    """Everything ``dyldcache macho`` prints about one image, as plain data."""
    fixups = image.fixups
    split = image.split_seg
    exports = image.exports
    bv = image.build_versions[0] if image.build_versions else None
    out: dict[str, Any] = {
        "path": image.path,
        "arch": image.arch,
        "filetype": _FILETYPES.get(image.filetype, hex(image.filetype)),
        "flags": [name for bit, name in _HEADER_FLAGS.items() if image.flags & bit],
        "uuid": image.uuid_string,
        "install_name": image.install_name,
        "current_version": format_version(image.id_dylib.current_version) if image.id_dylib else None,
        "compatibility_version": format_version(image.id_dylib.compatibility_version)
        if image.id_dylib
        else None,
        "platform": bv.platform_name if bv else None,
        "minos": _version(bv.minos) if bv else None,
        "sdk": _version(bv.sdk) if bv else None,
        "load_commands": [
            {"cmd": lc.name, "offset": lc.offset - image.header_offset, "size": lc.size}
            for lc in image.load_commands
        ],
        "segments": [
            {
                "name": seg.name,
                "vmaddr": seg.vmaddr,
                "vmsize": seg.vmsize,
                "fileoff": seg.fileoff,
                "filesize": seg.filesize,
                "maxprot": seg.maxprot,
                "initprot": seg.initprot,
                "sections": [
                    {
                        "name": s.sectname,
                        "segment": s.segname,
                        "addr": s.addr,
                        "size": s.size,
                        "offset": s.offset,
                        "align": 1 << s.align,
                        "type": s.type,
                        "flags": s.flags,
                    }
                    for s in seg.sections
                ],
            }
            for seg in image.segments
        ],
        "dependencies": [
            {
                "path": d.path,
                "kind": d.kind,
                "current_version": format_version(d.current_version),
                "compatibility_version": format_version(d.compatibility_version),
            }
            for d in image.dylibs
        ],
        "rpaths": list(image.rpaths),
        "fixups": {
            "source": fixups.source,
            "counts": fixups.counts(),
            "imports": len(fixups.imports),
            "pointer_formats": sorted(set(fixups.pointer_formats.values())),
        },
        "split_seg": None
        if split is None
        else {
            "version": split.version,
            "counts": {
                C.SPLIT_SEG_KIND_NAMES.get(k, str(k)): n for k, n in sorted(split.counts_by_kind().items())
            },
        },
        "exports": [
            {
                "name": e.name,
                "flags": e.flags,
                "address": e.address,
                **({"ordinal": e.ordinal, "import_name": e.import_name} if e.is_reexport else {}),
                **({"resolver": e.resolver} if e.is_resolver else {}),
            }
            for e in exports
        ],
        "symbols": len(image.symbol_table.nlist),
        "function_starts": len(image.function_starts),
    }
    return out


def describe_file(path: str, arch: str | None = None) -> list[dict[str, Any]]:
    """One description per selected slice (all slices of a fat file when ``arch`` is None)."""
    if os.path.isdir(path):
        raise MachOFormatError(path, None, "is a directory, not a Mach-O file")
    mapped = MappedFile(path)
    if is_fat(mapped.data) and arch is None:
        slices = parse_fat(mapped.data, path)
        return [describe_image(parse_macho(mapped.data, path, s.arch)) for s in slices]
    return [describe_image(parse_macho(mapped.data, path, arch))]


def _print_text(d: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"{d['path']} ({d['arch']} {d['filetype']})\n")
    if d["install_name"]:
        w(
            f"  install name: {d['install_name']} (current {d['current_version']}, "
            f"compatibility {d['compatibility_version']})\n"
        )
    w(f"  uuid: {d['uuid']}\n  flags: {' '.join(d['flags'])}\n")
    if d["platform"]:
        w(f"  platform: {d['platform']} minos {d['minos']} sdk {d['sdk']}\n")
    w("  load commands:\n")
    for lc in d["load_commands"]:
        w(f"    {lc['cmd']:<26} offset {lc['offset']:#06x} size {lc['size']}\n")
    w("  segments:\n")
    for seg in d["segments"]:
        w(
            f"    {seg['name']:<16} vm {seg['vmaddr']:#012x}+{seg['vmsize']:#x} file {seg['fileoff']:#x}+"
            f"{seg['filesize']:#x} prot {seg['initprot']}/{seg['maxprot']}\n"
        )
        for s in seg["sections"]:
            w(
                f"      {s['name']:<18} {s['addr']:#012x}+{s['size']:#x} align {s['align']} "
                f"type {s['type']:#x}\n"
            )
    if d["dependencies"]:
        w("  dependencies:\n")
        for dep in d["dependencies"]:
            w(f"    {dep['kind']:<8} {dep['path']} (compatibility {dep['compatibility_version']})\n")
    fx = d["fixups"]
    counts = ", ".join(f"{k} {v}" for k, v in fx["counts"].items() if v)
    w(f"  fixups ({fx['source']}): {counts or 'none'}; {fx['imports']} imports\n")
    if d["split_seg"]:
        kinds = ", ".join(f"{k} {v}" for k, v in d["split_seg"]["counts"].items())
        w(f"  split seg v{d['split_seg']['version']}: {kinds or 'no entries'}\n")
    else:
        w("  split seg: none\n")
    w(f"  symbols: {d['symbols']}, function starts: {d['function_starts']}\n")
    w(f"  exports ({len(d['exports'])}):\n")
    for e in d["exports"]:
        if "ordinal" in e:
            w(f"    [re-export] {e['name']} (from ordinal {e['ordinal']} {e['import_name'] or e['name']})\n")
        else:
            w(f"    {e['address']:#010x} {e['name']}" + (" [weak]" if e["flags"] & 4 else "") + "\n")


def _run(args: argparse.Namespace) -> int:
    descs = describe_file(args.file, args.arch)
    if args.json:
        print_json(descs if len(descs) > 1 else descs[0])
    else:
        for d in descs:
            _print_text(d)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "macho", help="describe a Mach-O file (load commands, fixups, split seg, exports)"
    )
    p.add_argument("file", help="a Mach-O file (thin or fat)")
    p.add_argument("--arch", help="slice of a fat file to describe (default: all)")
    add_json_option(p)
    p.set_defaults(func=_run)
