"""llvm-objdump-22 --macho as an oracle: run it on a Mach-O file and parse the listings the Mach-O
tests compare our reader and linker against (load commands, fixups, exports, unwind info, ...).

Every parser here works on llvm-objdump's text only; nothing is computed with dyldcache.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from conftest import LLVM_OBJDUMP, tool


@dataclass(frozen=True)
class Output:
    stdout: str
    stderr: str
    returncode: int


@functools.cache
def _run_cached(path: str, flags: tuple[str, ...], mtime_ns: int) -> Output:
    proc = subprocess.run(
        [tool(LLVM_OBJDUMP), "--macho", *flags, path],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Output(proc.stdout, proc.stderr, proc.returncode)


def run_raw(path: str | Path, *flags: str) -> Output:
    """llvm-objdump's output, whatever its exit status (cached per file version and flags)."""
    p = str(path)
    return _run_cached(p, flags, Path(p).stat().st_mtime_ns)


def prefetch(jobs: list[tuple[str | Path, tuple[str, ...]]], nm_paths: list[Path] | None = None) -> None:
    """Run many listings at once, into the caches (the tools are mostly process start-up)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        done = [pool.submit(run_raw, path, *flags) for path, flags in jobs]
        done += [pool.submit(nm, path) for path in nm_paths or []]
        for f in done:
            f.result()


def run(path: str | Path, *flags: str) -> str:
    """stdout of ``llvm-objdump-22 --macho FLAGS PATH``; fails the test on any error or warning."""
    out = run_raw(path, *flags)
    assert out.returncode == 0 and not out.stderr, (
        f"llvm-objdump {' '.join(flags)} {path}: exit {out.returncode}\n{out.stderr}"
    )
    return out.stdout


# ---------------------------------------------------------------------------------------------
# everything the reader comparison needs, from one llvm-objdump process per image

#: the listings of one combined run; llvm-objdump prints them one after the other, each under its
#: title (LISTING_TITLES), so the output is cut back into them there
LISTING_FLAGS = (
    "--indirect-symbols",
    "--data-in-code",
    "--function-starts",
    "--private-headers",
    "--exports-trie",
    "--rebase",
    "--bind",
    "--lazy-bind",
    "--weak-bind",
    "--chained-fixups",
    "--dyld-info",
)
LISTING_TITLES = {
    "dyld information:": "dyld-info",
    "chained fixups header (LC_DYLD_CHAINED_FIXUPS)": "chained-fixups",
    "Mach header": "private-headers",
    "Exports trie:": "exports-trie",
    "Rebase table:": "rebase",
    "Bind table:": "bind",
    "Lazy bind table:": "lazy-bind",
    "Weak bind table:": "weak-bind",
}


@dataclass(frozen=True)
class Listing:
    """One combined llvm-objdump run on one image (a thin file, or one slice of a fat file)."""

    path: str
    arch: str | None
    output: Output
    #: the text under each title, by LISTING_TITLES value (a title llvm did not print is absent)
    parts: dict[str, str]

    @property
    def problem(self) -> str | None:
        """What llvm-objdump said was wrong with the file (an error, a warning, or that it is no
        object file); None when it listed everything cleanly."""
        out = self.output
        if out.returncode != 0 or out.stderr.strip():
            return out.stderr.strip() or f"exit status {out.returncode}"
        first = out.stdout.splitlines()[0] if out.stdout else ""
        if not first or first.endswith("is not an object file"):
            return first or "no output"
        return None

    def part(self, name: str) -> str:
        return self.parts.get(name, "")

    def private_headers(self) -> PrivateHeaders:
        return parse_private_headers(self.part("private-headers"))

    def exports(self) -> list[ObjExport]:
        return parse_exports_trie(self.part("exports-trie"))

    def tables(self) -> dict[str, list[str]]:
        """The rows of the rebase and bind tables, by table title (as _tables)."""
        text = "\n".join(
            title + "\n" + self.part(name)
            for title, name in LISTING_TITLES.items()
            if name in ("rebase", "bind", "lazy-bind", "weak-bind")
        )
        return _split_tables(text)

    def dyld_info(self) -> list[DyldInfoRow]:
        return parse_dyld_info(self.part("dyld-info"))

    def indirect_symbols(self) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
        return parse_indirect_symbols(self.part("indirect-symbols"))

    def data_in_code(self) -> list[tuple[int, int, str]]:
        return parse_data_in_code(self.part("data-in-code"))

    def function_starts(self) -> list[int]:
        return parse_function_starts(self.part("function-starts"))

    def chained_fixups(self) -> ChainedListing | None:
        text = self.part("chained-fixups")
        return parse_chained_fixups(text) if text.strip() else None


def listing_flags(arch: str | None = None) -> tuple[str, ...]:
    """The flags of a combined listing (``arch``: the slice of a fat file, as llvm names it)."""
    return ((f"--arch={arch}",) if arch else ()) + LISTING_FLAGS


def listing(path: str | Path, arch: str | None = None) -> Listing:
    """The combined listing of ``path`` (of its ``arch`` slice, for a fat file); cached like run_raw,
    so ``prefetch([(path, listing_flags(arch)), ...])`` runs many at once beforehand."""
    out = run_raw(path, *listing_flags(arch))
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.stdout.splitlines():
        name = LISTING_TITLES.get(line.strip())
        if name is not None:
            current = parts.setdefault(name, [])
        elif _FUNCTION_START.match(line):  # function starts have no title
            parts.setdefault("function-starts", []).append(line)
        elif line.startswith("Indirect symbols for ("):  # one title per section, kept
            current = parts.setdefault("indirect-symbols", [])
            current.append(line)
        elif line.startswith("Data in code table ("):
            current = parts.setdefault("data-in-code", [])
        elif current is not None:
            current.append(line)
    return Listing(str(path), arch, out, {k: "\n".join(v) for k, v in parts.items()})


def short_name_matches(install_name: str, llvm_name: str) -> bool:
    """llvm prints a dependency by its short name ("libSystem" for /usr/lib/libSystem.B.dylib,
    "Foundation" for a framework): does ``llvm_name`` denote ``install_name``?"""
    leaf = install_name.rsplit("/", 1)[-1]
    # the leaf, less ".dylib" and a version suffix (libSystem.B.dylib, libc++.1.dylib); a longer
    # name that merely starts the same (libc++abi.dylib for "libc++") does not match
    return bool(llvm_name) and (llvm_name == leaf or leaf.startswith(llvm_name + "."))


#: how llvm-objdump names the special library ordinals
SPECIAL_ORDINALS = {0: "this-image", -1: "main-executable", -2: "flat-namespace", -3: "weak"}


# ---------------------------------------------------------------------------------------------
# --private-headers


@dataclass
class ObjSection:
    sectname: str
    segname: str
    addr: int
    size: int
    offset: int
    align: int
    type: str
    attributes: str
    reserved1: int
    reserved2: int
    reloff: int = 0
    nreloc: int = 0


@dataclass
class ObjSegment:
    name: str
    vmaddr: int
    vmsize: int
    fileoff: int
    filesize: int
    maxprot: str
    initprot: str
    flags: str
    sections: list[ObjSection] = field(default_factory=list)


@dataclass
class PrivateHeaders:
    #: the mach header row: magic cputype cpusubtype caps filetype ncmds sizeofcmds flags...
    header: list[str]
    #: every load command as {field: value text}, in order; "cmd" is its name
    commands: list[dict[str, str]]
    segments: list[ObjSegment]

    def commands_named(self, name: str) -> list[dict[str, str]]:
        return [c for c in self.commands if c.get("cmd") == name]

    @property
    def sections(self) -> list[ObjSection]:
        """Every section in load-command order: sections[i] has split-seg / n_sect index i + 1."""
        return [s for seg in self.segments for s in seg.sections]


_MULTIWORD_KEYS = ("time stamp", "current version", "compatibility version")


def _int(text: str) -> int:
    return int(text.split()[0], 0)


def private_headers(path: str | Path) -> PrivateHeaders:
    return parse_private_headers(run(path, "--private-headers"))


def parse_private_headers(text: str) -> PrivateHeaders:
    """The ``--private-headers`` listing (the mach header and every load command)."""
    lines = text.splitlines()
    header: list[str] = []
    for i, line in enumerate(lines):
        if line.strip().startswith("magic"):
            header = lines[i + 1].split()
            break
    commands: list[dict[str, str]] = []
    sections: list[list[dict[str, str]]] = []
    current: dict[str, str] | None = None
    for line in lines:
        s = line.strip()
        if s.startswith("Load command "):
            current = {}
            commands.append(current)
            sections.append([])
            continue
        if current is None or not s:
            continue
        if s == "Section":
            current = {}
            sections[-1].append(current)
            continue
        for key in _MULTIWORD_KEYS:
            if s.startswith(key + " "):
                current[key] = s[len(key) + 1 :].strip()
                break
        else:
            key, _, value = s.partition(" ")
            current[key] = value.strip()
    segments = []
    for cmd, sects in zip(commands, sections, strict=True):
        if cmd.get("cmd") != "LC_SEGMENT_64":
            continue
        seg = ObjSegment(
            cmd["segname"],
            _int(cmd["vmaddr"]),
            _int(cmd["vmsize"]),
            _int(cmd["fileoff"]),
            _int(cmd["filesize"]),
            cmd["maxprot"],
            cmd["initprot"],
            cmd.get("flags", ""),
        )
        for s in sects:
            seg.sections.append(
                ObjSection(
                    s["sectname"],
                    s["segname"],
                    _int(s["addr"]),
                    _int(s["size"]),
                    _int(s["offset"]),
                    int(re.search(r"\((\d+)\)", s["align"]).group(1)),  # type: ignore[union-attr]
                    s["type"],
                    s.get("attributes", ""),
                    _int(s.get("reserved1", "0")),
                    _int(s.get("reserved2", "0")),
                    _int(s.get("reloff", "0")),
                    _int(s.get("nreloc", "0")),
                )
            )
        segments.append(seg)
    return PrivateHeaders(header, commands, segments)


# ---------------------------------------------------------------------------------------------
# fixups


@dataclass(frozen=True)
class DyldInfoRow:
    """One row of ``--dyld-info`` (chained fixups of formats llvm decodes)."""

    segment: str
    section: str
    address: int
    pointer: int
    kind: str  # "rebase" or "bind"
    #: rebase: target (vm offset as printed); bind: None
    target: int | None
    addend: int | None
    dylib: str | None
    symbol: str | None
    weak_import: bool


def dyld_info(path: str | Path) -> list[DyldInfoRow]:
    return parse_dyld_info(run(path, "--dyld-info"))


def parse_dyld_info(text: str) -> list[DyldInfoRow]:
    rows = []
    for line in text.splitlines():
        p = line.split()
        if len(p) >= 6 and p[4] == "rebase":
            rows.append(
                DyldInfoRow(
                    p[0], p[1], int(p[2], 16), int(p[3], 16), "rebase", int(p[5], 16), None, None, None, False
                )
            )
        elif len(p) >= 8 and p[4] == "bind":
            weak = line.rstrip().endswith("(weak import)")
            rows.append(
                DyldInfoRow(
                    p[0], p[1], int(p[2], 16), int(p[3], 16), "bind", None, int(p[5], 16), p[6], p[7], weak
                )
            )
    return rows


@dataclass(frozen=True)
class BindRow:
    segment: str
    section: str
    address: int
    type: str
    addend: int
    dylib: str
    symbol: str
    weak_import: bool


def _tables(path: str | Path) -> dict[str, list[str]]:
    """The rows of --rebase / --bind / --lazy-bind / --weak-bind, by table title."""
    return _split_tables(run(path, "--rebase", "--bind", "--lazy-bind", "--weak-bind"))


def _split_tables(text: str) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.endswith("table:"):
            current = tables.setdefault(line, [])
            continue
        if current is None or not line.strip() or line.startswith("segment "):
            continue
        if line.endswith(":") and "/" in line:  # the file name line
            continue
        current.append(line)
    return tables


#: how llvm-objdump names a rebase or bind type (``typeName`` of its MachORebaseEntry/BindEntry)
_FIXUP_TYPE = r"(pointer|text abs32|text rel32|unknown)"
_REBASE_ROW = re.compile(rf"^(\S+)\s+(\S+)\s+0x([0-9A-Fa-f]+)\s+{_FIXUP_TYPE}$")
_BIND_ROW = re.compile(
    rf"^(\S+)\s+(\S+)\s+0x([0-9A-Fa-f]+)\s+{_FIXUP_TYPE}\s+(-?\d+)\s+(\S+)\s+(.*?)( \(weak_import\))?$"
)
_LAZY_ROW = re.compile(r"^(\S+)\s+(\S+)\s+0x([0-9A-Fa-f]+)\s+(\S+)\s+(.*)$")
_WEAK_ROW = re.compile(rf"^(\S+)\s+(\S+)\s+0x([0-9A-Fa-f]+)\s+{_FIXUP_TYPE}\s+(-?\d+)\s+(.*)$")


def _row(pattern: re.Pattern[str], line: str, table: str) -> tuple[str, ...]:
    m = pattern.match(line)
    assert m is not None, f"unexpected {table} row: {line!r}"
    return m.groups()


def rebase_table(path: str | Path) -> list[tuple[str, str, int, str]]:
    """(segment, section, address, type) for every rebase of the opcode stream."""
    return parse_rebase_table(_tables(path))


def parse_rebase_table(tables: dict[str, list[str]]) -> list[tuple[str, str, int, str]]:
    out = []
    for line in tables.get("Rebase table:", []):
        seg, sect, addr, typ = _row(_REBASE_ROW, line, "rebase")
        out.append((seg, sect, int(addr, 16), typ))
    return out


def bind_table(path: str | Path) -> list[BindRow]:
    return parse_bind_table(_tables(path))


def parse_bind_table(tables: dict[str, list[str]]) -> list[BindRow]:
    out = []
    for line in tables.get("Bind table:", []):
        seg, sect, addr, typ, addend, dylib, sym, weak = _row(_BIND_ROW, line, "bind")
        out.append(BindRow(seg, sect, int(addr, 16), typ, int(addend), dylib, sym, weak is not None))
    return out


def lazy_bind_table(path: str | Path) -> list[tuple[str, str, int, str, str]]:
    """(segment, section, address, dylib, symbol)."""
    return parse_lazy_bind_table(_tables(path))


def parse_lazy_bind_table(tables: dict[str, list[str]]) -> list[tuple[str, str, int, str, str]]:
    out = []
    for line in tables.get("Lazy bind table:", []):
        seg, sect, addr, lib, sym = _row(_LAZY_ROW, line, "lazy bind")
        out.append((seg, sect, int(addr, 16), lib, sym))
    return out


def weak_bind_table(path: str | Path) -> list[tuple[str, str, int | None, int, str]]:
    """(segment, section, address, addend, symbol); a strong-definition marker has address None."""
    return parse_weak_bind_table(_tables(path))


def parse_weak_bind_table(tables: dict[str, list[str]]) -> list[tuple[str, str, int | None, int, str]]:
    out: list[tuple[str, str, int | None, int, str]] = []
    for line in tables.get("Weak bind table:", []):
        if line.startswith("strong "):
            out.append(("", "", None, 0, line.split(None, 1)[1].strip()))
            continue
        seg, sect, addr, _typ, addend, sym = _row(_WEAK_ROW, line, "weak bind")
        out.append((seg, sect, int(addr, 16), int(addend), sym))
    return out


@dataclass
class ChainedListing:
    header: dict[str, int]
    seg_count: int
    seg_offsets: list[int]
    segments: dict[int, dict[str, object]]
    #: (lib_ordinal, weak_import, name_offset, name, addend)
    imports: list[tuple[int, int, int, str, int]]


def chained_fixups(path: str | Path) -> ChainedListing:
    return parse_chained_fixups(run(path, "--chained-fixups"))


def parse_chained_fixups(text: str) -> ChainedListing:
    head = text.split("chained starts in image")[0]
    header = {k: int(v) for k, v in re.findall(r"^  (\w+)\s+= (\d+)", head, re.M)}
    seg_count = int(re.search(r"seg_count = (\d+)", text).group(1))  # type: ignore[union-attr]
    seg_offsets = [int(v) for v in re.findall(r"seg_offset\[\d+\] = (\d+)", text)]
    segments: dict[int, dict[str, object]] = {}
    for m in re.finditer(r"chained starts in segment (\d+) \(\S+\)\n((?:  .*\n?)*)", text):
        body = m.group(2)
        fields = dict(re.findall(r"^  (\w+) = (\S+)", body, re.M))
        segments[int(m.group(1))] = {
            "size": int(fields["size"]),
            "page_size": int(fields["page_size"], 16),
            "pointer_format": int(fields["pointer_format"]),
            "segment_offset": int(fields["segment_offset"], 16),
            "max_valid_pointer": int(fields["max_valid_pointer"]),
            "page_count": int(fields["page_count"]),
            "page_start": [int(v) for v in re.findall(r"page_start\[\d+\] = (\d+)", body)],
        }
    imports = [
        (int(o), int(w), int(n), name, int(a or 0))
        for o, w, n, name, a in re.findall(
            r"dyld chained import(?: addend(?:64)?)?\[\d+\]\n"
            r"  lib_ordinal = (-?\d+) .*\n  weak_import = (\d)\n"
            r"  name_offset = (\d+) \((.*)\)(?:\n  addend\s+= (-?\d+))?",
            text,
        )
    ]
    return ChainedListing(header, seg_count, seg_offsets, segments, imports)


# ---------------------------------------------------------------------------------------------
# exports, dependencies, symbols


@dataclass(frozen=True)
class ObjExport:
    name: str
    #: printed address (None for re-exports)
    address: int | None
    #: the bracketed attributes: weak_def, per-thread, absolute, resolver=0x...
    attributes: frozenset[str]
    #: re-exports: the dylib's short name and the name there ("" = same name)
    reexport_from: str | None = None
    import_name: str = ""


_EXPORT = re.compile(
    r"^(?:0x([0-9A-F]+)  |\[re-export\] )(\S+)(?: \[([^\]]*)\])?(?: \((?:(\S+) )?from (\S+)\))?$"
)


def exports_trie(path: str | Path) -> list[ObjExport]:
    return parse_exports_trie(run(path, "--exports-trie"))


def parse_exports_trie(text: str) -> list[ObjExport]:
    out = []
    for line in text.splitlines():
        m = _EXPORT.match(line)
        if not m:
            continue
        addr, name, attrs, import_name, dylib = m.groups()
        out.append(
            ObjExport(
                name,
                int(addr, 16) if addr is not None else None,
                frozenset(a.strip() for a in attrs.split(",")) if attrs else frozenset(),
                dylib,
                import_name or "",
            )
        )
    return out


def dylibs_used(path: str | Path) -> list[tuple[str, str]]:
    """(install name, the parenthesized attributes) of every LC_*_DYLIB, incl. LC_ID_DYLIB first."""
    out = []
    for line in run(path, "--dylibs-used").splitlines():
        m = re.match(r"^\t(.*) \((.*)\)$", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


#: a line of --function-starts (its default form: the address only)
_FUNCTION_START = re.compile(r"^([0-9a-f]{16})$")


def function_starts(path: str | Path) -> list[int]:
    return parse_function_starts(run(path, "--function-starts"))


def parse_function_starts(text: str) -> list[int]:
    return [int(x, 16) for x in re.findall(_FUNCTION_START.pattern, text, re.M)]


#: what --indirect-symbols prints instead of an index: INDIRECT_SYMBOL_LOCAL / _ABS (<mach-o/loader.h>)
INDIRECT_SPECIAL = {"LOCAL": 0x80000000, "ABSOLUTE": 0x40000000, "LOCAL ABSOLUTE": 0xC0000000}
_INDIRECT_ROW = re.compile(r"^0x([0-9a-f]+) (?:(LOCAL ABSOLUTE|LOCAL|ABSOLUTE)|\s*(\d+) (.*))$")


def indirect_symbols(path: str | Path) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
    """Per (segment, section): (address, index or LOCAL/ABSOLUTE/LOCAL ABSOLUTE, symbol name) of
    each entry."""
    return parse_indirect_symbols(run(path, "--indirect-symbols"))


def parse_indirect_symbols(text: str) -> dict[tuple[str, str], list[tuple[int, str, str]]]:
    out: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    rows: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        m = re.match(r"^Indirect symbols for \((\S+),(\S+)\) \d+ entries", line)
        if m:
            rows = out.setdefault((m.group(1), m.group(2)), [])
            continue
        m = _INDIRECT_ROW.match(line)
        if m:
            address, special, index, name = m.groups()
            rows.append((int(address, 16), special or index, name or ""))
        else:
            assert not line.startswith("0x"), f"unexpected indirect symbol row: {line!r}"
    return out


#: DICE_KIND_* (<mach-o/loader.h>) by the name --data-in-code prints
DATA_IN_CODE_KINDS = {
    "DATA": 1,
    "JUMP_TABLE8": 2,
    "JUMP_TABLE16": 3,
    "JUMP_TABLE32": 4,
    "ABS_JUMP_TABLE32": 5,
}


def parse_data_in_code(text: str) -> list[tuple[int, int, str]]:
    """(offset, length, kind name) of every --data-in-code row."""
    out = []
    for line in text.splitlines():
        p = line.split()
        if len(p) == 3 and p[0].startswith("0x"):
            out.append((int(p[0], 16), int(p[1]), p[2]))
    return out


def nm(path: str | Path) -> list[tuple[int | None, str, str]]:
    """(value, type letter, name) from llvm-nm-22 (value None for undefined symbols)."""
    return _nm_cached(str(path), Path(path).stat().st_mtime_ns)


@functools.cache
def _nm_cached(path: str, mtime_ns: int) -> list[tuple[int | None, str, str]]:
    proc = subprocess.run(
        [tool("llvm-nm-22"), "--no-sort", path], capture_output=True, text=True, timeout=60, check=True
    )
    out = []
    for line in proc.stdout.splitlines():
        p = line.split()
        if len(p) == 3:
            out.append((int(p[0], 16), p[1], p[2]))
        elif len(p) == 2:
            out.append((None, p[0], p[1]))
    return out


# ---------------------------------------------------------------------------------------------
# unwind info


@dataclass
class UnwindListing:
    personalities: dict[int, int]
    #: top-level index: (function offset, 2nd level page offset, LSDA offset); last one = sentinel
    index: list[tuple[int, int, int]]
    #: (function offset, LSDA offset)
    lsdas: list[tuple[int, int]]
    #: second-level entries in order: (function offset, encoding)
    entries: list[tuple[int, int]]

    @property
    def end(self) -> int:
        """The sentinel's function offset: one past (or at) the end of the last function."""
        return self.index[-1][0]

    def encoding_at(self, offset: int) -> int | None:
        """The encoding of the entry that covers ``offset`` (None if no entry does)."""
        found = None
        for start, enc in self.entries:
            if start <= offset:
                found = enc
            else:
                break
        return found if offset < self.end else None


def unwind_info(path: str | Path, text: str | None = None) -> UnwindListing:
    text = run(path, "--unwind-info") if text is None else text
    pers = {int(k): int(v, 16) for k, v in re.findall(r"personality\[(\d+)\]: (0x[0-9a-f]+)", text)}
    index = [
        (int(a, 16), int(b, 16), int(c, 16))
        for a, b, c in re.findall(
            r"function offset=(0x[0-9a-f]+), 2nd level page offset=(0x[0-9a-f]+), LSDA offset=(0x[0-9a-f]+)",
            text,
        )
    ]
    lsda_text = (
        text.split("LSDA descriptors:")[1].split("Second level indices:")[0]
        if "LSDA descriptors:" in text
        else ""
    )
    lsdas = [
        (int(a, 16), int(b, 16))
        for a, b in re.findall(r"function offset=(0x[0-9a-f]+), LSDA offset=(0x[0-9a-f]+)", lsda_text)
    ]
    second = text.split("Second level indices:")[1] if "Second level indices:" in text else ""
    entries = [
        (int(a, 16), int(b, 16))
        for a, b in re.findall(r"function offset=(0x[0-9a-f]+), encoding(?:\[\d+\])?=(0x[0-9a-f]+)", second)
    ]
    return UnwindListing(pers, index, lsdas, entries)


@dataclass(frozen=True)
class CompactUnwindEntry:
    """One ``__LD,__compact_unwind`` entry of an object file."""

    start: int
    length: int
    encoding: int
    personality: str | None
    lsda: int | None


def object_compact_unwind(path: str | Path) -> list[CompactUnwindEntry]:
    text = run(path, "--unwind-info")
    out = []
    for block in text.split("Entry at offset")[1:]:
        start = int(re.search(r"start:\s+(0x[0-9a-f]+)", block).group(1), 16)  # type: ignore[union-attr]
        length = int(re.search(r"length:\s+(0x[0-9a-f]+)", block).group(1), 16)  # type: ignore[union-attr]
        enc = int(re.search(r"compact encoding:\s+(0x[0-9a-f]+)", block).group(1), 16)  # type: ignore[union-attr]
        pers = re.search(r"personality function:\s+0x[0-9a-f]+ (\S+)", block)
        lsda = re.search(r"LSDA:\s+(0x[0-9a-f]+)", block)
        out.append(
            CompactUnwindEntry(
                start, length, enc, pers.group(1) if pers else None, int(lsda.group(1), 16) if lsda else None
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# --objc-meta-data


@dataclass
class ObjcMethod:
    #: pointer lists: (name address, name) and (types address, types); imp is None (llvm prints a
    #: symbol). Relative lists: llvm prints each offset and its target truncated to 32 bits
    name_address: int
    name: str | None
    types_address: int
    imp_address: int | None


@dataclass
class ObjcClassPart:
    """A class or its metaclass as ``--objc-meta-data`` prints it."""

    isa: int
    superclass: int
    data: int
    flags: int
    instance_start: int
    instance_size: int
    name_address: int
    base_methods: int
    relative: bool = False
    method_count: int = 0
    methods: list[ObjcMethod] = field(default_factory=list)
    base_protocols: int = 0
    protocols: list[int] = field(default_factory=list)


@dataclass
class ObjcListing:
    #: __objc_classlist: (class address, class, metaclass)
    classes: list[tuple[int, ObjcClassPart, ObjcClassPart]]
    #: the pointers of __objc_catlist and __objc_protolist
    categories: list[int]
    protocols: list[int]
    image_info_flags: int | None


_OBJC_FIELD = re.compile(
    r"^ +(isa|superclass|data|flags|instanceStart|instanceSize|name|baseMethods|baseProtocols) (\S+)"
)
_OBJC_SECTION = re.compile(r"^Contents of \((\S+),(\S+)\) section")


def _objc_part(lines: list[str]) -> ObjcClassPart:
    values: dict[str, int] = {}
    part = ObjcClassPart(0, 0, 0, 0, 0, 0, 0, 0)
    in_methods = False
    for line in lines:
        m = _OBJC_FIELD.match(line)
        if m and not line.startswith("\t"):
            key, value = m.groups()
            # only the first occurrence is the class_ro_t's (ivars and properties have names too)
            if key not in values:
                values[key] = int(value, 0)
            in_methods = key == "baseMethods"
            continue
        if line.startswith("\t") and in_methods:
            words = line.split()
            if words[0] == "entsize":
                part.relative = "(relative)" in line
            elif words[0] == "count":
                part.method_count = int(words[1])
            elif words[0] == "name":
                target = int(words[2].strip("()"), 16) if part.relative else int(words[1], 16)
                text = None if part.relative or len(words) < 3 else words[2]
                part.methods.append(ObjcMethod(target, text, 0, None))
            elif words[0] == "types":
                part.methods[-1].types_address = (
                    int(words[2].strip("()"), 16) if part.relative else int(words[1], 16)
                )
            elif words[0] == "imp" and part.relative:
                part.methods[-1].imp_address = int(words[2].strip("()"), 16)
        elif line.startswith("\t") and "list[" in line and "(struct protocol_t *)" in line:
            part.protocols.append(int(line.split()[1], 16))
    part.isa, part.superclass, part.data = values["isa"], values["superclass"], values["data"]
    part.flags, part.instance_start = values["flags"], values["instanceStart"]
    part.instance_size, part.name_address = values["instanceSize"], values["name"]
    part.base_methods, part.base_protocols = values["baseMethods"], values["baseProtocols"]
    return part


def objc_metadata(path: str | Path) -> ObjcListing:
    """``--objc-meta-data``: the class list (each class with its metaclass), the category and
    protocol lists, and the image info flags."""
    text = run(path, "--objc-meta-data")
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        m = _OBJC_SECTION.match(line)
        if m:
            current = sections.setdefault(m.group(2), [])
        else:
            current.append(line)
    entry = re.compile(r"^[0-9a-f]{16} (0x[0-9a-f]+)")
    classes = []
    blocks: list[tuple[int, list[str]]] = []
    for line in sections.get("__objc_classlist", []):
        m = entry.match(line)
        if m:
            blocks.append((int(m.group(1), 16), []))
        elif blocks:
            blocks[-1][1].append(line)
    for address, lines in blocks:
        split = lines.index("Meta Class")
        classes.append((address, _objc_part(lines[:split]), _objc_part(lines[split + 1 :])))

    def pointers(name: str) -> list[int]:
        return [int(m.group(1), 16) for line in sections.get(name, []) if (m := entry.match(line))]

    flags = re.search(r"^\s+flags (0x[0-9a-f]+)", "\n".join(sections.get("__objc_imageinfo", [])), re.M)
    return ObjcListing(
        classes,
        pointers("__objc_catlist"),
        pointers("__objc_protolist"),
        int(flags.group(1), 16) if flags else None,
    )
