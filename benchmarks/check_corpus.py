#!/usr/bin/env python3
"""Checks a generated corpus with llvm-objdump-22 (an independent reader, not dyldcache's):

- every dylib: its LC_ID_DYLIB is its install path, and no two dylibs share a UUID;
- a sample of the copies (derive.py; ``--sample N``, 0 for all): the same exports at the same
  addresses as the dylib it copies, each name with the copy's character at index 1
  (derive.VARIANT_CHARS); each bind names a symbol that the dylib of its ordinal exports, itself
  or through its LC_REEXPORT_DYLIBs (weak-lookup binds: the copy's own exports).

    python benchmarks/check_corpus.py ROOT.json [--sample 40] [--seed 1] [--jobs 2]

Exit status 1 and one line per problem when anything is wrong.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from derive import NAME_INDEX, VARIANT_CHARS  # noqa: E402

OBJDUMP = "llvm-objdump-22"


@dataclass(slots=True)
class Dump:
    id_name: str | None
    uuid: str | None
    #: (command, path) of every LC_*_DYLIB but the id
    deps: list[tuple[str, str]]
    #: export name -> address
    exports: dict[str, int]
    #: (dylib column as printed, symbol) of every bind
    binds: list[tuple[str, str]]


def _objdump(path: str, full: bool) -> str:
    args = [OBJDUMP, "--macho", "--private-headers"]
    if full:
        args += ["--exports-trie", "--dyld-info"]
    return subprocess.run([*args, path], capture_output=True, text=True, check=True).stdout


def dump(path: str, full: bool) -> Dump:
    text = _objdump(path, full)
    deps: list[tuple[str, str]] = []
    id_name = uuid = None
    cmd = ""
    exports: dict[str, int] = {}
    binds: list[tuple[str, str]] = []
    section = "headers"
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Exports trie:"):
            section = "exports"
            continue
        if s.startswith("dyld information:"):
            section = "dyld"
            continue
        if s.startswith("Mach header"):
            section = "headers"
            continue
        if section == "headers":
            m = re.match(r"cmd (LC_\w+)$", s)
            if m:
                cmd = m.group(1)
            elif s.startswith("name ") and "DYLIB" in cmd:
                name = s[5:].rsplit(" (offset", 1)[0]
                if cmd == "LC_ID_DYLIB":
                    id_name = name
                else:
                    deps.append((cmd, name))
            elif s.startswith("uuid "):
                uuid = s[5:]
        elif section == "exports":
            m = re.match(r"0x([0-9A-Fa-f]+)\s+(\S+)", s)
            if m:
                exports[m.group(2)] = int(m.group(1), 16)
        else:
            parts = s.split()
            if len(parts) >= 7 and parts[4] == "bind":
                binds.append((parts[6], parts[7] if len(parts) > 7 else ""))
    return Dump(id_name, uuid, deps, exports, binds)


def _leaf(path: str) -> str:
    """The dylib name llvm-objdump prints in --dyld-info: the file name up to its first dot."""
    return os.path.basename(path).split(".")[0]


def check(manifest: str, sample: int, seed: int, jobs: int) -> Iterator[str]:
    with open(manifest, encoding="utf-8") as f:
        corpus = json.load(f)
    root = corpus["root"]
    dylibs = corpus["dylibs"]

    def host(name: str) -> str:
        return os.path.join(root, name.lstrip("/"))

    @functools.cache
    def full(name: str) -> Dump:
        return dump(host(name), True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        headers = dict(
            zip(
                [d["install_name"] for d in dylibs],
                pool.map(lambda d: dump(host(d["install_name"]), False), dylibs),
                strict=True,
            )
        )
    owners: dict[str, str] = {}
    for name, d in headers.items():
        if d.id_name != name:
            yield f"{name}: LC_ID_DYLIB is {d.id_name}"
        if d.uuid is None:
            yield f"{name}: no LC_UUID"
        elif d.uuid in owners:
            yield f"{name}: UUID {d.uuid} is also {owners[d.uuid]}'s"
        else:
            owners[d.uuid] = name
    copies = [d for d in dylibs if d.get("kind") == "copy"]
    if sample:
        copies = random.Random(seed).sample(copies, min(sample, len(copies)))

    def exported(name: str, symbol: str) -> bool:
        d = full(name)
        if symbol in d.exports:
            return True
        return any(exported(p, symbol) for c, p in d.deps if c == "LC_REEXPORT_DYLIB")

    def check_copy(c: dict[str, object]) -> list[str]:
        name, base, variant = str(c["install_name"]), str(c["copy_of"]), int(str(c["variant"]))
        problems = []
        mine, theirs = full(name), full(base)
        expect = {}
        for sym, addr in theirs.exports.items():
            raw = bytearray(sym.encode())
            raw[NAME_INDEX] = VARIANT_CHARS[raw[NAME_INDEX]][variant]
            expect[raw.decode()] = addr
        if mine.exports != expect:
            problems.append(f"{name}: exports differ from {base}'s renamed for copy {variant}")
        leaves = {_leaf(p): p for _c, p in mine.deps}
        for dylib, symbol in mine.binds:
            if dylib == "weak":
                ok = symbol in mine.exports
            elif dylib in leaves:
                ok = exported(leaves[dylib], symbol)
            else:
                problems.append(f"{name}: bind to {symbol} in unknown dylib {dylib}")
                continue
            if not ok:
                problems.append(f"{name}: bind to {symbol} in {dylib}: not exported there")
        return problems

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for problems in pool.map(check_copy, copies):
            yield from problems
    print(
        f"checked {len(headers)} dylibs (ids, UUIDs) and {len(copies)} copies (exports, binds)",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("manifest", help="the corpus manifest (ROOT.json)")
    ap.add_argument("--sample", type=int, default=40, help="copies to check in full (0: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    problems = list(check(args.manifest, args.sample, args.seed, args.jobs))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
