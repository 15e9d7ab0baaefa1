"""``dyldcache macho FILE`` (macho/describe.py): what it reports about an image is checked against
llvm-objdump-22 and LIEF, and against split seg info decoded by hand in tests/oracles.py, never
against our own numbers. Text mode, and fat files built here with a hand-written fat header.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import objdump
import pytest
from conftest import run_cli, shared_path
from linked_examples import CONFIG_IDS, CONFIGS, linked
from oracles import (
    AUTH_BIND,
    AUTH_REBASE,
    BIND,
    REBASE,
    SPLIT_KIND_NAMES,
    lief_chained_fixups,
    split_seg_entries,
)

APPLE = ["fixup-chains-arm64.dylib", "fixup-chains-arm64e.dylib", "fixup-dyldinfo.dylib", "libexports.dylib"]


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from dyldcache.cli import main

    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return status, out.out, out.err


def _json(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> object:
    status, out, err = _main(capsys, "macho", str(path), "--json", *extra)
    assert status == 0 and err == "", err
    return json.loads(out)


def _expected_fixups(path: Path) -> tuple[dict[str, int], int | None, str]:
    """(counts by kind, number of imports or None, source) from llvm-objdump or LIEF."""
    ph = objdump.private_headers(path)
    names = {c.get("cmd") for c in ph.commands}
    if "LC_DYLD_CHAINED_FIXUPS" in names:
        listing = objdump.chained_fixups(path)
        formats = {seg["pointer_format"] for seg in listing.segments.values()}
        if formats <= {2, 6}:  # llvm-objdump decodes these itself
            kinds = Counter(row.kind for row in objdump.dyld_info(path))
            counts = {"rebase": kinds["rebase"], "bind": kinds["bind"], "auth_rebase": 0, "auth_bind": 0}
        else:
            kinds = Counter(f.kind for f in lief_chained_fixups(path))
            counts = {
                "rebase": kinds[REBASE],
                "bind": kinds[BIND],
                "auth_rebase": kinds[AUTH_REBASE],
                "auth_bind": kinds[AUTH_BIND],
            }
        return counts, len(listing.imports), "chained"
    if "LC_DYLD_INFO_ONLY" in names or "LC_DYLD_INFO" in names:
        binds = objdump.bind_table(path)
        lazy = objdump.lazy_bind_table(path)
        counts = {
            "rebase": len(objdump.rebase_table(path)),
            "bind": len(binds) + len(lazy),
            "auth_rebase": 0,
            "auth_bind": 0,
        }
        return counts, None, "opcodes"
    return {"rebase": 0, "bind": 0, "auth_rebase": 0, "auth_bind": 0}, 0, "none"


def _check_description(d: dict[str, object], path: Path) -> None:
    ph = objdump.private_headers(path)
    # identity
    (ident,) = ph.commands_named("LC_ID_DYLIB")
    assert d["install_name"] == ident["name"].split(" (offset")[0]
    assert (d["current_version"], d["compatibility_version"]) == (
        ident["current version"],
        ident["compatibility version"],
    )
    (uuid,) = ph.commands_named("LC_UUID")
    assert d["uuid"] == uuid["uuid"]
    assert d["filetype"] == ph.header[4].lower()
    assert [lc["cmd"] for lc in d["load_commands"]] == [c["cmd"] for c in ph.commands]  # type: ignore[attr-defined]
    # segments and sections
    segs = [
        (
            s["name"],
            s["vmaddr"],
            s["vmsize"],
            s["fileoff"],
            s["filesize"],
            [(x["name"], x["addr"], x["size"]) for x in s["sections"]],
        )
        for s in d["segments"]  # type: ignore[attr-defined]
    ]
    assert segs == [
        (
            s.name,
            s.vmaddr,
            s.vmsize,
            s.fileoff,
            s.filesize,
            [(x.sectname, x.addr, x.size) for x in s.sections],
        )
        for s in ph.segments
    ]
    # dependencies: path and kind
    used = objdump.dylibs_used(path)[1:]
    kind_of = {"weak": "weak", "reexport": "reexport", "upward": "upward"}
    assert [(x["path"], x["kind"]) for x in d["dependencies"]] == [  # type: ignore[attr-defined]
        (name, next((kind_of[w] for w in attrs.replace(",", " ").split() if w in kind_of), "load"))
        for name, attrs in used
    ]
    # fixups by kind
    counts, imports, source = _expected_fixups(path)
    fx = d["fixups"]
    assert fx["source"] == source  # type: ignore[index]
    assert fx["counts"] == counts  # type: ignore[index]
    if imports is not None:
        assert fx["imports"] == imports  # type: ignore[index]
    # split seg entries by kind, decoded by hand
    entries = split_seg_entries(path)
    if entries is None:
        assert d["split_seg"] is None
        assert not ph.commands_named("LC_SEGMENT_SPLIT_INFO")
    else:
        assert d["split_seg"] == {
            "version": 2,
            "counts": {SPLIT_KIND_NAMES[k]: n for k, n in sorted(Counter(e.kind for e in entries).items())},
        }
    # exports
    rows = objdump.exports_trie(path)
    base = ph.segments[0].vmaddr
    exports = d["exports"]
    assert sorted(e["name"] for e in exports) == sorted(r.name for r in rows)  # type: ignore[attr-defined]
    addr = {r.name: r.address for r in rows if r.address is not None and "absolute" not in r.attributes}
    for e in exports:  # type: ignore[attr-defined]
        if e["name"] in addr:
            assert e["address"] + base == addr[e["name"]], e
    # symbol table and function starts
    (symtab,) = ph.commands_named("LC_SYMTAB")
    assert d["symbols"] == int(symtab["nsyms"])
    assert d["function_starts"] == len(objdump.function_starts(path))


def _describe_targets() -> list[object]:
    params: list[object] = [
        pytest.param("linked", a, f, id=f"linked-{i}") for (a, f), i in zip(CONFIGS, CONFIG_IDS, strict=True)
    ]
    params += [pytest.param("apple", name, "", id=name) for name in APPLE]
    return params


@pytest.mark.parametrize(("where", "what", "fixups"), _describe_targets())
def test_json_agrees_with_objdump_and_lief(
    where: str, what: str, fixups: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if where == "apple":
        paths = [shared_path("data", "macho", what)]
    else:
        s = linked(what, fixups)
        paths = [s.path("libb"), s.path("objc"), s.path("libc")]
    for path in paths:
        d = _json(capsys, path)
        assert isinstance(d, dict)
        _check_description(d, path)


def test_text_mode(capsys: pytest.CaptureFixture[str]) -> None:
    path = linked("arm64e").path("libc")
    status, out, err = _main(capsys, "macho", str(path))
    assert status == 0 and err == ""
    assert out.startswith(f"{path} (arm64e dylib)\n")
    assert "install name: /usr/lib/libfxc.dylib" in out
    assert "reexport /usr/lib/libfxa.dylib" in out
    assert "split seg v2: " in out and "THREADED_POINTER_64" in out
    for seg in objdump.private_headers(path).segments:
        assert f"    {seg.name} " in out
    for e in objdump.exports_trie(path):
        assert f" {e.name}" in out
    # the same in a real process
    proc = run_cli("macho", str(path), timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == out


# ---------------------------------------------------------------------------------------------
# fat files

CPU = {"arm64": (0x0100000C, 0), "x86_64": (0x01000007, 3)}


def _fat(slices: list[tuple[str, bytes]], align: int = 14) -> bytes:
    """A fat file: big-endian fat_header {magic 0xCAFEBABE, nfat_arch}, then one fat_arch
    {cputype, cpusubtype, offset, size, align (log2)} per slice; slices at 2^align boundaries."""
    page = 1 << align
    table = struct.pack(">II", 0xCAFEBABE, len(slices))
    placed = []
    offset = page
    for arch, data in slices:
        cputype, cpusubtype = CPU[arch]
        table += struct.pack(">iiIII", cputype, cpusubtype, offset, len(data), align)
        placed.append((offset, data))
        offset += -(-len(data) // page) * page
    out = bytearray(table)
    for start, data in placed:
        out += bytes(start - len(out)) + data
    return bytes(out)


def test_fat_file_lists_both_slices_and_arch_picks_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thin = {arch: linked(arch).path("liba") for arch in ("arm64", "x86_64")}
    fat = tmp_path / "libfxa.dylib"
    fat.write_bytes(_fat([(arch, p.read_bytes()) for arch, p in thin.items()]))
    # llvm-objdump agrees that this is a well-formed fat file with both slices
    headers = objdump.run(fat, "--universal-headers")
    assert "nfat_arch 2" in headers
    assert headers.count("cputype CPU_TYPE_ARM64") == 1 and headers.count("cputype CPU_TYPE_X86_64") == 1
    both = _json(capsys, fat)
    assert isinstance(both, list) and [d["arch"] for d in both] == ["arm64", "x86_64"]
    for d, arch in zip(both, ("arm64", "x86_64"), strict=True):
        _check_description(d, thin[arch])
    one = _json(capsys, fat, "--arch", "x86_64")
    assert isinstance(one, dict) and one["arch"] == "x86_64"
    _check_description(one, thin["x86_64"])
    status, out, err = _main(capsys, "macho", str(fat), "--arch", "arm64")
    assert status == 0 and out.startswith(f"{fat} (arm64 dylib)") and out.count(" dylib)\n") == 1
    status, out, err = _main(capsys, "macho", str(fat))
    assert status == 0 and out.count(" dylib)\n") == 2
    # a slice that is not there: bad input, one line
    status, out, err = _main(capsys, "macho", str(fat), "--arch", "arm64e")
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"dyldcache macho: error: {fat}")
