"""``dyldcache link``: the linker's command line, in ld64's style.

ld64 options are single-dash words whose order matters (dylib ordinals follow the
command line), and ``-lNAME`` glues its value on, so they are parsed here by hand
rather than with argparse.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError, UsageError
from ..macho.tbd import parse_version
from .dylibs import DylibSet
from .linker import LinkInput, LinkOptions, link

USAGE = """\
usage: dyldcache link -arch {arm64,arm64e,x86_64} -o OUT -install_name NAME
                      [-platform macos|ios] [-fixups chained|opcodes] [-L DIR] [-lNAME]
                      [-weak-lNAME] [-reexport-lNAME] [-weak_library PATH] [-reexport_library PATH]
                      [-upward_library PATH] [-current_version X.Y.Z] [-compatibility_version X.Y.Z]
                      [-alias SYMBOL ALIAS] [-split_seg_v1] [-lazy_binding]
                      [-stub_library FILE.tbd [-stub_data_list FILE]] INPUT...

Link relocatable objects into a cache-ready MH_DYLIB with split seg info v2 (-split_seg_v1:
v1, x86_64 only, as ld64 writes by default there). -lazy_binding (with -fixups opcodes) calls
imports through __la_symbol_ptr and __stub_helper, as ld64 did before chained fixups.
INPUT is an object file, a dylib or a .tbd stub.

-stub_library FILE.tbd makes a stand-in for the library the stub describes: the output takes
its install name, versions and re-exported libraries (unless given on the command line) and
exports every symbol it lists for the arch and platform. Input objects, if any, may define some
of them with real code; every other one gets a synthetic definition: a function is a trap
instruction (arm64 brk #1, x86_64 ud2), data is 64 zeroed bytes in __DATA,__bss. ObjC classes,
metaclasses, EH types and ivar offsets are data; so are the names listed, one a line, in the
-stub_data_list FILE. Thread-local symbols are not defined. -platform is needed when there are
no input objects."""

_VALUE_OPTIONS = {
    "-arch",
    "-o",
    "-install_name",
    "-platform",
    "-fixups",
    "-L",
    "-weak_library",
    "-reexport_library",
    "-upward_library",
    "-current_version",
    "-compatibility_version",
    "-stub_library",
    "-stub_data_list",
}


def parse_link_args(argv: list[str]) -> LinkOptions:
    values: dict[str, str] = {}
    search: list[str] = []
    # inputs in command-line order; -l names are resolved once all -L paths are known
    pending: list[tuple[str, str, bool]] = []  # (path or name, mode, is_library_name)
    aliases: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "-help", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if a in _VALUE_OPTIONS:
            if i + 1 >= len(argv):
                raise UsageError(f"{a} needs a value")
            v = argv[i + 1]
            i += 2
            if a == "-L":
                search.append(v)
            elif a in ("-weak_library", "-reexport_library", "-upward_library"):
                pending.append((v, a[1:].split("_")[0], False))
            else:
                values[a] = v
            continue
        if a in ("-split_seg_v1", "-lazy_binding"):
            values[a] = "1"
            i += 1
            continue
        if a == "-alias":
            if i + 2 >= len(argv):
                raise UsageError("-alias needs a symbol and an alias")
            aliases.append((argv[i + 1], argv[i + 2]))
            i += 3
            continue
        for prefix, mode in (
            ("-weak-l", "weak"),
            ("-reexport-l", "reexport"),
            ("-upward-l", "upward"),
            ("-l", "load"),
        ):
            if a.startswith(prefix) and len(a) > len(prefix):
                pending.append((a[len(prefix) :], mode, True))
                break
        else:
            if a.startswith("-"):
                raise UsageError(f"unknown option {a}")
            pending.append((a, "load", False))
        i += 1
    for required in ("-arch", "-o") if "-stub_library" in values else ("-arch", "-o", "-install_name"):
        if required not in values:
            raise UsageError(f"missing {required}")
    if "-stub_data_list" in values and "-stub_library" not in values:
        raise UsageError("-stub_data_list needs -stub_library")
    arch = values["-arch"]
    if arch not in ("arm64", "arm64e", "x86_64"):
        raise UsageError(f"-arch must be arm64, arm64e or x86_64, not {arch!r}")
    platform = values.get("-platform")
    if platform is not None and platform not in ("macos", "ios"):
        raise UsageError(f"-platform must be macos or ios, not {platform!r}")
    fixups = values.get("-fixups", "chained")
    if fixups not in ("chained", "opcodes"):
        raise UsageError(f"-fixups must be chained or opcodes, not {fixups!r}")
    finder = DylibSet(arch, platform, search)
    inputs = [LinkInput(finder.find_library(x) if is_name else x, mode) for x, mode, is_name in pending]
    try:
        current, compat = (
            parse_version(values[v]) if v in values else None
            for v in ("-current_version", "-compatibility_version")
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stub_data = _read_name_list(values["-stub_data_list"]) if "-stub_data_list" in values else frozenset()
    return LinkOptions(
        arch=arch,
        output=values["-o"],
        install_name=values.get("-install_name", ""),
        inputs=inputs,
        platform=platform,
        fixups=fixups,
        search_paths=search,
        current_version=current,
        compatibility_version=compat,
        aliases=aliases,
        split_seg_version=1 if "-split_seg_v1" in values else 2,
        lazy_binding="-lazy_binding" in values,
        stub_library=values.get("-stub_library"),
        stub_data=stub_data,
    )


def _read_name_list(path: str) -> frozenset[str]:
    """Symbol names, one a line; blank lines and lines starting with # are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the name list: {exc}") from None
    return frozenset(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))


def _run(args: argparse.Namespace) -> int:
    options = parse_link_args(list(args.link_args))
    result = link(options)
    for w in result.warnings:
        print(f"dyldcache link: warning: {w}", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "link",
        help="link objects into a cache-ready dylib (ld64-style flags)",
        usage=USAGE,
        add_help=False,
        prefix_chars="+",
    )
    p.add_argument("link_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)
