"""The inspection commands of issue 10 (item 3): ``image``, ``exports``, ``dependents``, ``a2s``,
``s2a`` and ``list --aliases``, on caches we build and on Apple's.

Oracles, never dyldcache's own reader: for our caches, the input dylibs read by llvm-objdump-22
(exports moved by their segment's slide into the cache, ``--dylibs-used``, symbol tables read
with ``struct``) and the cache files read with ``struct`` (tests/cache_fixtures.RawCache); for
Apple's caches, DyldExtractor's extraction of every image read by llvm-objdump-22, and the golden
cache's documented facts (../shared/data/README.md, validators.md §2). Aliases come from the
symlinks of the root a cache is built from.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import objdump
import pytest
from cache_fixtures import (
    CacheFactory,
    RawCache,
    RawFile,
    fixture_install_names,
    input_segments,
    input_symtab,
    slide_of,
)
from conftest import python_module, run_cli, shared_path
from oracles import read_uleb, trie_lookup

from dyldcache import cli
from dyldcache.cache.describe import cache_list
from dyldcache.cache.images import cache_dependents, cache_exports, describe_cache_image
from dyldcache.cache.reader import DyldCache
from dyldcache.cache.symbols import SymbolIndex, addresses_to_symbols, symbols_to_addresses

#: our caches the commands are checked on: single file, subcaches, unmapped locals, x86_64 opcodes
OURS = ["arm64", "x86_64-lazy", "arm64-multi", "arm64e-ios"]
GOLDEN = ("data", "golden", "dyld_shared_cache_arm64-macOS")
APPLE = [
    GOLDEN,
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64-macOS-1042.1"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64-macOS-objc"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64e-macOS-objc"),
]
# ../shared/data/README.md and validators.md §2 (dx_exports.py on the golden cache)
GOLDEN_EXPORTS = {
    "/usr/lib/liba-1.0.dylib": {"_func_in_liba": 0x180004F60, "_what_is_cool": 0x180004F9C},
    "/usr/lib/libb-1.0.dylib": {"_func_in_libb": 0x180008FA0},
}
N_STAB, N_TYPE, N_SECT, N_EXT = 0xE0, 0x0E, 0x0E, 0x01


def apple_id(parts: tuple[str, ...]) -> str:
    return parts[-1]


@pytest.fixture(scope="module")
def apple_dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, dict[str, Path]]]]:
    """Every Apple cache: (its path, install name -> the dylib DyldExtractor extracted for it)."""
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    out = {}
    for parts in APPLE:
        path = shared_path(*parts)
        gate = run_gate(path, arm64_fixers=False, outdir=tmp_path_factory.mktemp("dx"))
        assert not gate.failures, gate.failures
        out[apple_id(parts)] = (path, dict(gate.extracted))
    yield out


def _versions(attrs: str) -> tuple[str, str, str]:
    """llvm's '(compatibility version A, current version B[, weak])' -> (A, B, kind)."""
    parts = [p.strip() for p in attrs.split(",")]
    compat = parts[0].removeprefix("compatibility version ")
    current = parts[1].removeprefix("current version ")
    return compat, current, parts[2] if len(parts) > 2 else "load"


# ---------------------------------------------------------------------------------------------
# image


@pytest.mark.parametrize("key", OURS)
def test_image_is_the_cached_load_commands(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    raw = RawCache(built.main)
    for name, address in raw.images:
        d = describe_cache_image(built.main, name)
        assert (d["install_name"], d["address"], d["filetype"]) == (name, address, "dylib")
        assert "DYLIB_IN_CACHE" in d["flags"]
        assert [
            (s["name"], s["vmaddr"], s["vmsize"], s["fileoff"], s["filesize"]) for s in d["segments"]
        ] == [(s.name, s.vmaddr, s.vmsize, s.fileoff, s.filesize) for s in raw.segments(name)]
        cmds = raw.load_commands(name)
        assert [c["size"] for c in d["load_commands"]] == [len(body) for _, body in cmds]
        uuid = next(body[8:24] for cmd, body in cmds if cmd == 0x1B)  # LC_UUID
        assert d["uuid"].replace("-", "").lower() == uuid.hex()
        # the cache keeps the input's sections, in order
        inp = objdump.private_headers(built.input_path(name))
        assert [(s["segment"], s["name"]) for seg in d["segments"] for s in seg["sections"]] == [
            (s.segname, s.sectname) for s in inp.sections
        ]
    # by file name too; an image is found whatever names it
    assert describe_cache_image(built.main, "libfxa.dylib")["install_name"] == "/usr/lib/libfxa.dylib"


def test_image_on_apple_caches(apple_dx: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    for cache, extracted in apple_dx.values():
        for name, dx_file in extracted.items():
            d = describe_cache_image(str(cache), name)
            ph = objdump.private_headers(dx_file)
            # DyldExtractor rewrites file offsets and LINKEDIT, never where segments are
            assert [
                (s["name"], s["vmaddr"], s["vmsize"]) for s in d["segments"] if s["name"] != "__LINKEDIT"
            ] == [(s.name, s.vmaddr, s.vmsize) for s in ph.segments if s.name != "__LINKEDIT"], name
            assert d["uuid"] == ph.commands_named("LC_UUID")[0]["uuid"], name
            assert d["install_name"] == ph.commands_named("LC_ID_DYLIB")[0]["name"].split(" (")[0]


# ---------------------------------------------------------------------------------------------
# exports


def _by_image(exports: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for e in exports:
        out.setdefault(e["image"], {})[e["name"]] = e
    return out


@pytest.mark.parametrize("key", OURS)
def test_exports_are_the_inputs_moved_into_the_cache(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    raw = RawCache(built.main)
    everything = cache_exports(built.main)
    listed = _by_image(everything)
    assert [e["image"] for e in everything] == sorted(
        (e["image"] for e in everything), key=[p for p, _ in raw.images].index
    )
    for name, _ in raw.images:
        inp = objdump.exports_trie(built.input_path(name))
        assert inp, name
        seg_in, seg_cached = input_segments(built.input_path(name)), raw.segments(name)
        ours = listed.get(name, {})
        assert sorted(ours) == sorted(e.name for e in inp), name
        for e in inp:
            got = ours[e.name]
            if e.address is None:
                assert got["address"] is None and "reexport" in got, (name, e.name)
                continue
            assert got["address"] == e.address + slide_of(seg_in, seg_cached, e.address), (name, e.name)
            assert got["weak"] == ("weak_def" in e.attributes), (name, e.name)
        # one image's list is that image's part of the whole
        assert cache_exports(built.main, name) == [e for e in everything if e["image"] == name]


def test_exports_on_apple_caches(apple_dx: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    for cache, extracted in apple_dx.values():
        listed = _by_image(cache_exports(str(cache)))
        bases = {i["path"]: i["address"] for i in cache_list(str(cache))}
        for name, dx_file in extracted.items():
            theirs = {
                # llvm-objdump adds the image's address to absolute values too
                e.name: e.address - bases[name] if "absolute" in e.attributes and e.address else e.address
                for e in objdump.exports_trie(dx_file)
            }
            assert {n: e["address"] for n, e in listed.get(name, {}).items()} == theirs, name
            assert {n for n, e in listed.get(name, {}).items() if e["kind"] == "absolute"} == {
                e.name for e in objdump.exports_trie(dx_file) if "absolute" in e.attributes
            }
    golden = _by_image(cache_exports(str(shared_path(*GOLDEN))))
    assert {img: {n: e["address"] for n, e in ex.items()} for img, ex in golden.items()} == GOLDEN_EXPORTS


# ---------------------------------------------------------------------------------------------
# dependents


def _check_dependents(d: dict[str, Any], used: list[tuple[str, str]], name: str) -> None:
    own, *deps = used
    assert (d["install_name"], d["compatibility_version"], d["current_version"]) == (
        own[0],
        *_versions(own[1])[:2],
    ), name
    assert [
        (x["path"], x["compatibility_version"], x["current_version"], x["kind"]) for x in d["dependents"]
    ] == [(path, *_versions(attrs)) for path, attrs in deps], name


@pytest.mark.parametrize("key", OURS)
def test_dependents_are_the_inputs_load_commands(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    for name, _ in RawCache(built.main).images:
        d = cache_dependents(built.main, name)
        assert d["image"] == name
        _check_dependents(d, objdump.dylibs_used(built.input_path(name)), name)
    assert any(cache_dependents(built.main, n)["dependents"] for n, _ in RawCache(built.main).images)


def test_dependents_on_apple_caches(apple_dx: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    for cache, extracted in apple_dx.values():
        for name, dx_file in extracted.items():
            _check_dependents(cache_dependents(str(cache), name), objdump.dylibs_used(dx_file), name)


# ---------------------------------------------------------------------------------------------
# a2s and s2a


def test_a2s_and_s2a_on_the_golden_cache() -> None:
    path = str(shared_path(*GOLDEN))
    found = addresses_to_symbols(path, [0x180004F60, 0x180004F64, 0x180004F9C, 0x180008FA0, 0x180008FA3])
    assert [(x.image, x.symbol, x.offset, x.section) for x in found] == [
        ("/usr/lib/liba-1.0.dylib", "_func_in_liba", 0, "__text"),
        ("/usr/lib/liba-1.0.dylib", "_func_in_liba", 4, "__text"),
        ("/usr/lib/liba-1.0.dylib", "_what_is_cool", 0, "__text"),
        ("/usr/lib/libb-1.0.dylib", "_func_in_libb", 0, "__text"),
        ("/usr/lib/libb-1.0.dylib", "_func_in_libb", 3, "__text"),
    ]
    defs = symbols_to_addresses(path, ["_func_in_liba", "_what_is_cool", "_func_in_libb", "_no_such_symbol"])
    assert {n: [(d.image, d.address, d.source) for d in ds] for n, ds in defs.items()} == {
        "_func_in_liba": [("/usr/lib/liba-1.0.dylib", 0x180004F60, "export")],
        "_what_is_cool": [("/usr/lib/liba-1.0.dylib", 0x180004F9C, "export")],
        "_func_in_libb": [("/usr/lib/libb-1.0.dylib", 0x180008FA0, "export")],
        "_no_such_symbol": [],
    }
    # the mach header is in __TEXT but in no section, and before any symbol
    (head,) = addresses_to_symbols(path, [0x180001010])
    assert (head.image, head.segment, head.section, head.symbol, head.offset) == (
        "/usr/lib/liba-1.0.dylib",
        "__TEXT",
        None,
        None,
        0x10,
    )


def _round_trip(index: SymbolIndex, owner: str, name: str, address: int) -> None:
    loc = index.locate(address)
    assert (loc.image, loc.offset) == (owner, 0), (owner, name, loc)
    assert loc.symbol is not None
    # whatever a2s calls the address, s2a finds it there; and s2a finds the export itself
    for symbol in {loc.symbol, name}:
        assert (owner, address) in [(d.image, d.address) for d in index.definitions(symbol)], (owner, symbol)


@pytest.mark.parametrize("key", OURS)
def test_a2s_s2a_round_trip_on_every_export(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    raw = RawCache(built.main)
    with DyldCache.open(built.main) as cache:
        index = SymbolIndex(cache)
        for name, _ in raw.images:
            seg_in, seg_cached = input_segments(built.input_path(name)), raw.segments(name)
            for e in objdump.exports_trie(built.input_path(name)):
                if e.address is not None and "absolute" not in e.attributes:
                    _round_trip(index, name, e.name, e.address + slide_of(seg_in, seg_cached, e.address))


def test_a2s_s2a_round_trip_on_apple_caches(apple_dx: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    for cache_path, extracted in apple_dx.values():
        with DyldCache.open(cache_path) as cache:
            index = SymbolIndex(cache)
            for name, dx_file in extracted.items():
                for e in objdump.exports_trie(dx_file):
                    if e.address is not None and "absolute" not in e.attributes:
                        _round_trip(index, name, e.name, e.address)


def _input_locals(path: str) -> list[tuple[str, int, int]]:
    """(name, n_sect, address) of the input's local section symbols."""
    return [
        (n, s, v)
        for n, t, s, v in input_symtab(path)
        if not t & N_STAB and not t & N_EXT and t & N_TYPE == N_SECT
    ]


def test_unmapped_locals_name_addresses(cache_factory: CacheFactory) -> None:
    """arm64e-ios unmaps locals into .symbols (§2.6): a2s and s2a still know them."""
    built = cache_factory.build("arm64e-ios")
    raw = RawCache(built.main)
    assert raw.symbols is not None
    seen = 0
    with DyldCache.open(built.main) as cache:
        index = SymbolIndex(cache)
        for name, _ in raw.images:
            seg_in, seg_cached = input_segments(built.input_path(name)), raw.segments(name)
            # the mapped symbol table only has stand-ins for them
            mapped = {n for n, t, _, _ in raw.symtab(name) if not t & N_EXT and t & N_TYPE == N_SECT}
            assert mapped <= {"<redacted>"}, name
            for local, _, value in _input_locals(built.input_path(name)):
                at = value + slide_of(seg_in, seg_cached, value)
                loc = index.locate(at)
                assert (loc.image, loc.offset, loc.symbol) == (name, 0, local), (name, local, loc)
                assert loc.source == "local"
                defs = [(d.image, d.address, d.source) for d in index.definitions(local)]
                assert (name, at, "local") in defs, (name, local)
                seen += 1
    assert seen > 20


def test_redacted_locals_without_the_symbols_file(cache_factory: CacheFactory, tmp_path: Path) -> None:
    """With no local symbols info, a2s names a __text local by its mapped stand-in."""
    built = cache_factory.build("arm64e-ios")
    main = tmp_path / os.path.basename(built.main)
    data = bytearray(Path(built.main).read_bytes())
    data[0x190:0x1A0] = bytes(16)  # symbolFileUUID (§1.1): no .symbols file
    main.write_bytes(bytes(data))
    raw = RawCache(built.main)
    name = fixture_install_names()["liba"]
    seg_in, seg_cached = input_segments(built.input_path(name)), raw.segments(name)
    text_locals = [(n, v) for n, s, v in _input_locals(built.input_path(name)) if s == 1]
    assert text_locals
    found = addresses_to_symbols(str(main), [v + slide_of(seg_in, seg_cached, v) for _, v in text_locals])
    assert [(x.symbol, x.source, x.offset) for x in found] == [("<redacted>", "redacted", 0)] * len(found)
    assert symbols_to_addresses(str(main), [text_locals[0][0]])[text_locals[0][0]] == []


# ---------------------------------------------------------------------------------------------
# list --aliases


#: symlinks added to the arm64 examples root: alias -> install name it resolves to
SYMLINKS = {
    "/usr/lib/libfxa.1.dylib": "/usr/lib/libfxa.dylib",
    "/usr/lib/libfxa.A.dylib": "/usr/lib/libfxa.dylib",
    "/usr/lib/libSystem.dylib": "/usr/lib/libSystem.B.dylib",
    # an alias with the file name of another image
    "/usr/lib/alt/libfxb.dylib": "/usr/lib/libfxc.dylib",
}


@pytest.fixture(scope="module")
def aliased_cache(cache_factory: CacheFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    from dyldcache.builder.pipeline import BuildOptions, build_cache

    base = tmp_path_factory.mktemp("aliases")
    root = base / "root"
    shutil.copytree(cache_factory.root("arm64"), root, symlinks=True)
    for alias, target in SYMLINKS.items():
        link = root / alias.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, os.path.dirname(alias)), link)
    result = build_cache(
        BuildOptions(arch="arm64", platform="macos", output_dir=str(base / "out"), root=str(root))
    )
    return str(result.files[0]), root


def test_list_aliases_are_the_roots_symlinks(aliased_cache: tuple[str, Path]) -> None:
    main, root = aliased_cache
    # the symlinks as the root has them, resolved on disk
    links: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(root):
        for leaf in files + dirs:
            p = Path(folder, leaf)
            if p.is_symlink():
                target = "/" + os.path.relpath(os.path.realpath(p), os.path.realpath(root))
                links.setdefault(target, []).append("/" + os.path.relpath(p, root))
    assert sorted(a for v in links.values() for a in v) == sorted(SYMLINKS)
    listed = cache_list(main, aliases=True)
    assert {i["path"]: sorted(i["aliases"]) for i in listed if i["aliases"]} == {
        k: sorted(v) for k, v in links.items()
    }
    assert all("aliases" not in i for i in cache_list(main))
    r = run_cli("list", main, "--aliases", "--vmaddr")
    assert r.returncode == 0, r.stderr
    raw = RawCache(main)
    addr = dict(raw.images)
    for alias, target in SYMLINKS.items():
        assert f"{addr[target]:#011x} {alias} -> {target}" in r.stdout.splitlines()
    assert len(r.stdout.splitlines()) == len(raw.images) + len(SYMLINKS)


def test_a_file_name_two_images_have_is_refused(
    aliased_cache: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    main, _ = aliased_cache
    assert describe_cache_image(main, "libfxc.dylib")["install_name"] == "/usr/lib/libfxc.dylib"
    assert describe_cache_image(main, "/usr/lib/alt/libfxb.dylib")["install_name"] == "/usr/lib/libfxc.dylib"
    line = _one_error_line(capsys, "dependents", main, "libfxb.dylib")
    assert line == (
        f"dyldcache dependents: error: {main}: 'libfxb.dylib' names 2 images "
        "(/usr/lib/libfxb.dylib, /usr/lib/libfxc.dylib); give a full path"
    )


def test_list_aliases_on_apple_caches() -> None:
    for parts in APPLE:
        path = shared_path(*parts)
        f = RawFile(path)
        addr, size = f.field("dylibsTrieAddr"), f.field("dylibsTrieSize")
        m = next(m for m in f.mappings if m.address <= addr < m.end)
        trie = f.data[m.file_offset + addr - m.address :][:size]
        for i, img in enumerate(cache_list(str(path), aliases=True)):
            for p in [img["path"], *img["aliases"]]:
                at = trie_lookup(trie, p)
                assert at is not None and read_uleb(trie, at)[0] == i, (parts, p)
    # the golden cache's trie has three paths for two images (test_cache_reader): liba's alias
    golden = cache_list(str(shared_path(*GOLDEN)), aliases=True)
    assert [(i["path"], i["aliases"]) for i in golden] == [
        ("/usr/lib/liba-1.0.dylib", ["/usr/lib/liba.dylib"]),
        ("/usr/lib/libb-1.0.dylib", []),
    ]
    r = run_cli("list", str(shared_path(*GOLDEN)), "--aliases")
    assert r.stdout.splitlines() == [
        "/usr/lib/liba-1.0.dylib",
        "/usr/lib/liba.dylib -> /usr/lib/liba-1.0.dylib",
        "/usr/lib/libb-1.0.dylib",
    ]
    # an alias names its image for every command
    assert (
        cache_dependents(str(shared_path(*GOLDEN)), "/usr/lib/liba.dylib")["image"]
        == "/usr/lib/liba-1.0.dylib"
    )


# ---------------------------------------------------------------------------------------------
# the command line: text output, --json, and every error path


def test_cli_text_and_json() -> None:
    path = str(shared_path(*GOLDEN))
    r = run_cli("a2s", path, "0x180004f64", "0x180008fa0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "0x180004f64  /usr/lib/liba-1.0.dylib  _func_in_liba+0x4  (__TEXT,__text)",
        "0x180008fa0  /usr/lib/libb-1.0.dylib  _func_in_libb  (__TEXT,__text)",
    ]
    r = run_cli("s2a", path, "_what_is_cool", "--json")
    assert json.loads(r.stdout)["_what_is_cool"][0]["address"] == 0x180004F9C
    r = run_cli("exports", path, "libb-1.0.dylib")
    assert r.stdout.splitlines() == ["0x180008fa0 _func_in_libb"]
    r = run_cli("exports", path)
    assert r.stdout.splitlines() == [
        "/usr/lib/liba-1.0.dylib: 0x180004f60 _func_in_liba",
        "/usr/lib/liba-1.0.dylib: 0x180004f9c _what_is_cool",
        "/usr/lib/libb-1.0.dylib: 0x180008fa0 _func_in_libb",
    ]
    r = run_cli("image", path, "liba.dylib", "--json")
    d = json.loads(r.stdout)
    assert (d["install_name"], d["index"], d["address"], d["aliases"]) == (
        "/usr/lib/liba-1.0.dylib",
        0,
        0x180001000,
        ["/usr/lib/liba.dylib"],
    )
    r = run_cli("image", path, "libb-1.0.dylib")
    assert (
        r.returncode == 0 and r.stdout.startswith("image 1 at 0x180005000\n") and "_func_in_libb" in r.stdout
    )


def test_cli_dependents_text(apple_dx: dict[str, tuple[Path, dict[str, Path]]]) -> None:
    cache, extracted = apple_dx["dyld_shared_cache_arm64-macOS-objc"]
    name = "/usr/lib/libSystem.B.dylib"
    r = run_cli("dependents", str(cache), name, "--versions")
    assert r.returncode == 0, r.stderr
    want = objdump.run(extracted[name], "--dylibs-used").splitlines()[1:]
    # llvm says "(..., reexport)", dyld_shared_cache_util-style output says " [reexport]"
    assert [ln.replace(", reexport)", ") [reexport]") for ln in want] == r.stdout.splitlines()


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(args))
    except SystemExit as exc:  # argparse
        status = int(exc.code or 0)
    out = capsys.readouterr()
    return status, out.out, out.err


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str, *args: str, status: int = 2) -> str:
    code, _, err = _main(capsys, command, *args)
    lines = err.splitlines()
    assert code == status, (command, args, err)
    assert len(lines) == 1 and "Traceback" not in err, (command, args, err)
    return lines[0]


COMMANDS_WITH_IMAGE = [("image",), ("exports",), ("dependents",), ("extract", "OUT")]


@pytest.mark.parametrize("command", COMMANDS_WITH_IMAGE, ids=lambda c: c[0])
def test_unknown_image(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: tuple[str, ...]) -> None:
    path = str(shared_path(*GOLDEN))
    extra = [str(tmp_path / "out")] if len(command) > 1 else []
    line = _one_error_line(capsys, command[0], path, *extra, "/usr/lib/libnope.dylib")
    assert line.startswith(f"dyldcache {command[0]}: error: {path}: no image '/usr/lib/libnope.dylib'")
    assert not (tmp_path / "out").exists()


def test_bad_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(shared_path(*GOLDEN))
    line = _one_error_line(capsys, "a2s", path, "0xzz")
    assert line == "dyldcache a2s: error: '0xzz' is not a hexadecimal address"
    line = _one_error_line(capsys, "a2s", path, "0x1000")
    assert line == f"dyldcache a2s: error: {path}: address 0x1000 is not in any mapping of the cache"
    # in the cache, in no image: said on stdout, exit status 1
    code, out, _ = _main(capsys, "a2s", path, "0x18401c010")
    assert code == 1 and out == f"0x18401c010  (in no image: __LINKEDIT of {path})\n"
    line = _one_error_line(capsys, "s2a", path, "_nope", status=1)
    assert line == "dyldcache s2a: _nope: no image exports or defines it"


def _bad_inputs(tmp_path: Path) -> list[str]:
    return [
        str(shared_path("data", "macho", "libexports.dylib")),  # a Mach-O file, not a cache
        str(shared_path("data", "fuzzed", "dyldcache_read8")),  # a truncated cache header
        str(tmp_path),  # a directory
        str(tmp_path / "absent"),
    ]


@pytest.mark.parametrize(
    "command",
    [
        ("image", "liba.dylib"),
        ("exports",),
        ("dependents", "liba.dylib"),
        ("a2s", "0x180004f60"),
        ("s2a", "_func_in_liba"),
        ("list", "--aliases"),
        ("extract",),
    ],
    ids=lambda c: c[0],
)
def test_unreadable_caches(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    for bad in _bad_inputs(tmp_path):
        args = [bad, str(tmp_path / "out")] if command[0] == "extract" else [bad]
        line = _one_error_line(capsys, command[0], *args, *command[1:])
        assert line.startswith(f"dyldcache {command[0]}: error: {bad}: "), line
    assert not (tmp_path / "out").exists()


def test_malformed_image_is_a_format_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An image whose mach header is gone: one line naming the file, for every command."""
    path = shared_path(*GOLDEN)
    copy = tmp_path / path.name
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 0x5000, 0)  # libb's mach header magic (image 1 at 0x180005000, file 0x5000)
    copy.write_bytes(bytes(data))
    for args in (
        ("image", "libb-1.0.dylib"),
        ("exports",),
        ("dependents", "libb-1.0.dylib"),
        ("a2s", "0x180008fa0"),
        ("s2a", "_func_in_libb"),
        ("extract", str(tmp_path / "out")),
    ):
        line = _one_error_line(capsys, args[0], str(copy), *args[1:])
        assert f"{copy}" in line and "mach header" in line, line


def test_symbol_name_outside_the_string_pool(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = shared_path(*GOLDEN)
    data = bytearray(path.read_bytes())
    # liba's load commands (image 0's mach header is at file offset 0x1000): find LC_SYMTAB
    ncmds = struct.unpack_from("<I", data, 0x1000 + 16)[0]
    off = 0x1000 + 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x2:
            symoff = struct.unpack_from("<I", data, off + 8)[0]
            break
        off += size
    struct.pack_into("<I", data, symoff, 0x7FFFFFF0)  # the first nlist's n_strx
    copy = tmp_path / path.name
    copy.write_bytes(bytes(data))
    for args in (("a2s", "0x180004f60"), ("extract", str(tmp_path / "out"))):
        line = _one_error_line(capsys, args[0], str(copy), *args[1:])
        assert line.startswith(f"dyldcache {args[0]}: error: {copy}: offset 0x") and "string pool" in line
