"""Relative install names and loads (@rpath, @loader_path, @executable_path), and
``--install-name-map``.

The root (tests/fixtures/install_names/root, linked by ld64.lld-22 from the bundled objects;
build.sh says what each dylib is) holds dylibs whose LC_ID_DYLIB is relative and whose loads go
through LC_RPATH and the loader's folder. The expected placement, eviction reasons and cached
load-command names below are what dyld's rules give for this layout (written out by hand from
build.sh, not read from the builder): @loader_path is the loader's folder, @rpath tries each
LC_RPATH in order, a cache has no main executable, a weak load that leads nowhere is dropped.
The fixtures' code then runs at a random slide against gcc's results.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import objdump
import pytest
from cache_fixtures import RawCache, emulate_calls, random_slide
from conftest import FIXTURES, python_module, run_cli, tool

from dyldcache.builder.install_names import parse_install_name_map
from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache
from dyldcache.errors import NothingPlacedError, UsageError

ROOT = FIXTURES / "install_names" / "root"
SYSTEM = "/usr/lib/libSystem.B.dylib"
A, B, C, D = (f"/opt/app/lib/libfx{x}.dylib" for x in "abcd")
NORPATH, EXEC = "/opt/other/libfxnorpath.dylib", "/opt/other/libfxexec.dylib"
LC_ID_DYLIB, LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB, LC_RPATH = (
    0xD,
    0xC,
    0x80000018,
    0x8000001F,
    0x8000001C,
)

#: install name -> (its LC_ID_DYLIB, its loads) in the cache, by dyld's rules for this root
EXPECTED_COMMANDS = {
    SYSTEM: (SYSTEM, []),
    # @rpath/libfxa.dylib, installed at /opt/app/lib
    A: (A, [(LC_LOAD_DYLIB, SYSTEM)]),
    # @rpath/libfxa.dylib through LC_RPATH @loader_path; the weak @rpath/libfxmissing.dylib is in
    # no folder its rpaths name: dropped, so its command keeps the name dyld will not find
    B: (B, [(LC_LOAD_DYLIB, A), (LC_LOAD_DYLIB, SYSTEM), (LC_LOAD_WEAK_DYLIB, "@rpath/libfxmissing.dylib")]),
    # LC_RPATH /nowhere/lib has no libfxa.dylib; @loader_path/../lib has
    C: (C, [(LC_REEXPORT_DYLIB, A), (LC_LOAD_DYLIB, SYSTEM)]),
    # @loader_path/libfxc.dylib from /opt/app/lib
    D: (D, [(LC_LOAD_DYLIB, C)]),
}
EXPECTED_EVICTIONS = {
    NORPATH: "Could not find dependency '@rpath/libfxa.dylib' (the loading dylib has no LC_RPATH)",
    EXEC: (
        "Could not find dependency '@executable_path/../lib/libfxa.dylib' "
        "(a shared cache has no main executable; give it with --install-name-map)"
    ),
}
#: expected.json's objects, where this root installs them
PLACES = {"libsystem": SYSTEM, "liba": A, "libb": B, "libc": C, "libd": D}


@dataclass
class Built:
    result: BuildResult
    out: Path

    @property
    def main(self) -> str:
        return str(self.result.files[0])


def _build(tmp: Path, **options: object) -> Built:
    out = tmp / "out"
    result = build_cache(BuildOptions(arch="arm64", output_dir=str(out), root=str(ROOT), jobs=1, **options))  # type: ignore[arg-type]
    return Built(result, out)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("install-names"))


def _dylib_commands(raw: RawCache, name: str) -> tuple[str | None, list[tuple[int, str]], int]:
    """(LC_ID_DYLIB name, [(cmd, name)] of the loads, number of LC_RPATH) of a cached image."""
    ident, loads, rpaths = None, [], 0
    for cmd, body in raw.load_commands(name):
        if cmd == LC_RPATH:
            rpaths += 1
        if cmd not in (LC_ID_DYLIB, LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB):
            continue
        (offset,) = struct.unpack_from("<I", body, 8)
        text = body[offset:].split(b"\0", 1)[0].decode()
        if cmd == LC_ID_DYLIB:
            ident = text
        else:
            loads.append((cmd, text))
    return ident, loads, rpaths


def test_the_inputs_are_what_build_sh_says() -> None:
    """llvm-objdump: the relative names the test relies on are in the committed dylibs."""
    assert objdump.dylibs_used(ROOT / "opt/app/lib/libfxd.dylib")[0][0] == "@executable_path/libfxd.dylib"
    rpaths = objdump.private_headers(ROOT / "opt/app/lib/libfxc.dylib").commands_named("LC_RPATH")
    assert [r["path"].rsplit(" (offset", 1)[0] for r in rpaths] == ["/nowhere/lib", "@loader_path/../lib"]


def test_placement_and_evictions_follow_dyld(built: Built) -> None:
    assert sorted(built.result.dylibs) == sorted(EXPECTED_COMMANDS)
    assert {e.path: e.reason for e in built.result.evictions} == EXPECTED_EVICTIONS


def test_cached_load_commands_carry_absolute_paths(built: Built) -> None:
    raw = RawCache(built.main)
    for name, (ident, loads) in EXPECTED_COMMANDS.items():
        got_id, got_loads, rpaths = _dylib_commands(raw, name)
        assert (got_id, got_loads) == (ident, loads), name
        assert rpaths == 0, f"{name}: the cache keeps no LC_RPATH"
    doc = json.loads(Path(built.main + ".json").read_text(encoding="utf-8"))
    inputs = {img["path"]: img.get("input-install-name") for img in doc["images"]}
    assert inputs[A] == "@rpath/libfxa.dylib" and inputs[D] == "@executable_path/libfxd.dylib"
    assert inputs[SYSTEM] is None


def test_extracted_dylibs_name_absolute_paths(built: Built, tmp_path: Path) -> None:
    """DyldExtractor extracts every image; llvm-objdump reads the absolute names back."""
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    gate = run_gate(built.main, outdir=tmp_path)
    assert sorted(gate.extracted) == sorted(built.result.dylibs)
    missing = "Unable to find dependency: b'@rpath/libfxmissing.dylib\\x00'"
    assert {k: v for k, v in gate.failures.items() if v != [missing]} == {}
    used = objdump.dylibs_used(gate.extracted[D])
    assert [n for n, _ in used] == [D, C]


def test_fixture_calls_match_native_at_a_random_slide(built: Built) -> None:
    python_module("unicorn")
    tool("gcc")
    tool("objcopy")
    slide = random_slide(built.main)
    run = emulate_calls(built.main, "arm64", slide, PLACES)
    assert run.calls >= 30
    assert run.mismatches == {}, f"slide {slide:#x}"


def test_install_name_map_gives_the_executable_path(tmp_path: Path) -> None:
    """A map entry for the folder @executable_path/../lib/ lets libfxexec in; its load then
    names the mapped path."""
    names = tmp_path / "names.map"
    names.write_text(
        "# where the app's executable would find its libraries\n@executable_path/../lib/ -> /opt/app/lib/\n"
    )
    b = _build(tmp_path, install_name_map=str(names))
    assert EXEC in b.result.dylibs
    assert {e.path for e in b.result.evictions} == {NORPATH}
    _, loads, _ = _dylib_commands(RawCache(b.main), EXEC)
    assert loads == [(LC_REEXPORT_DYLIB, A), (LC_LOAD_DYLIB, SYSTEM)]


def test_apple_rules_restore_the_shared_cache_locations(tmp_path: Path) -> None:
    """dyld-1162: nothing outside /usr/lib, /System/Library, ...; and lld wrote no split seg info
    for libSystem either, so nothing at all is placed."""
    with pytest.raises(NothingPlacedError) as err:
        _build(tmp_path, apple_rules=True)
    expected = dict.fromkeys([A, B, C, D, NORPATH, EXEC], "path is not in a shared cache location")
    expected[SYSTEM] = "Missing split seg info"
    assert {e.path: e.reason for e in err.value.evictions} == expected


def test_load_commands_that_no_longer_fit_evict_with_the_sizes(tmp_path: Path) -> None:
    """libSystem renamed to a very long path: every dylib that loads it would need more room
    for its load commands than lies before its first section (llvm-objdump's numbers)."""
    root = tmp_path / "root"
    shutil.copytree(ROOT, root, symlinks=True)
    long = "/usr/lib/" + "/".join(["x" * 200] * 3) + "/libSystem.B.dylib"
    (root / long.lstrip("/")).parent.mkdir(parents=True)
    (root / long.lstrip("/")).symlink_to("/usr/lib/libSystem.B.dylib")  # absolute: inside the root
    names = tmp_path / "names.map"
    names.write_text(f"{SYSTEM} -> {long}\n")
    with pytest.raises(Exception) as err:
        build_cache(
            BuildOptions(
                arch="arm64",
                output_dir=str(tmp_path / "out"),
                root=str(root),
                jobs=1,
                install_name_map=str(names),
            )
        )
    evictions = {e.path: e.reason for e in getattr(err.value, "evictions", [])}
    room_evicted = {p: r for p, r in evictions.items() if "before its first section" in r}
    assert long in room_evicted, evictions
    for path, reason in room_evicted.items():
        host = root / (SYSTEM if path == long else path).lstrip("/")
        ph = objdump.private_headers(host)
        first = min(s.offset for s in ph.sections if s.size and s.segname == "__TEXT")
        assert f"more than the {first - 32} bytes before its first section" in reason, (path, reason)
        needed = int(reason.split(" take ", 1)[1].split(" bytes", 1)[0])
        assert needed > first - 32


def test_map_file_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"names:2: expected 'OLD -> NEW'"):
        parse_install_name_map("/a -> /b\nno arrow here\n", "names")
    with pytest.raises(UsageError, match=r"names:1: the new name 'lib/x' is not an absolute path"):
        parse_install_name_map("@rpath/x -> lib/x\n", "names")
    with pytest.raises(UsageError, match=r"names:1: a folder renames to a folder"):
        parse_install_name_map("@rpath/ -> /usr/lib\n", "names")
    with pytest.raises(UsageError, match=r"names:2: '/a' is already renamed to '/b'"):
        parse_install_name_map("/a -> /b\n/a -> /c\n", "names")
    m = parse_install_name_map("# c\n\n@rpath/ -> /x/\n@rpath/lib/ -> /y/\n/a -> /b\n", "names")
    assert m.rename("@rpath/lib/z.dylib") == "/y/z.dylib"  # the longest folder wins
    assert m.rename("@rpath/z.dylib") == "/x/z.dylib"
    assert m.rename("/a") == "/b" and m.rename("/c") is None
    bad = tmp_path / "bad.map"
    bad.write_text("nonsense\n")
    proc = run_cli("build", "--arch", "arm64", "-o", str(tmp_path / "out"), "--root", str(ROOT),
                   "--install-name-map", str(bad))  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and f"{bad}:1" in proc.stderr


def test_the_evictions_root_places_its_opt_dylib_by_default(tmp_path: Path, cache_factory: object) -> None:
    """/opt/lib/libfxopt.dylib is evicted under Apple's rules only (test_cache_build checks
    those): by default any absolute path inside the root is eligible."""
    from cache_fixtures import EVICTION_CASES, CacheFactory

    assert isinstance(cache_factory, CacheFactory)
    root = cache_factory.root("arm64", kind="evictions")
    result = build_cache(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=root, jobs=1))
    opt = EVICTION_CASES["ineligible_path"]
    assert opt in result.dylibs
    reasons = {e.path: e.reason for e in result.evictions}
    assert sorted(reasons) == sorted(p for case, p in EVICTION_CASES.items() if case != "ineligible_path")
