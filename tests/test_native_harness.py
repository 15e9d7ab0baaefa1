"""The fixture dylibs' sources, objects and stubs (tests/fixtures): the native oracle and the
committed objects' contents.

The native harness is checked against values worked out by hand from the C sources; the objects
are checked with llvm-objdump-22 / llvm-nm-22 (relocation kinds the linker must handle, unwind
sections, exported test functions) and against the .tbd stubs and README tables.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from conftest import EXAMPLES, FIXTURES, LLVM_OBJDUMP, tool


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fixtures_{name}", FIXTURES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


harness = _load("native_harness")
objinfo = _load("objinfo")

ARCHS = objinfo.ARCHS
OBJECTS = objinfo.OBJECTS
LLVM_NM = "llvm-nm-22"


@pytest.fixture(scope="module")
def native() -> dict[tuple[str, str, tuple[int, ...]], int]:
    tool("gcc")
    tool("objcopy")
    return harness.expected_results()  # type: ignore[no-any-return]


# ---- the native oracle ----


def test_one_integer_per_listed_call(native: dict[tuple[str, str, tuple[int, ...]], int]) -> None:
    calls = harness.load_calls()
    assert len(calls) >= 40
    assert sorted(native) == sorted(c.key for c in calls)
    assert all(type(v) is int for v in native.values())
    # every dylib with C test functions contributes
    assert {c.dylib for c in calls} == set(harness.NATIVE_DYLIBS)


def test_results_agree_with_the_sources_by_hand(native: dict[tuple[str, str, tuple[int, ...]], int]) -> None:
    # worked out from the sources, independently of the harness
    hand = {
        ("liba", "fxa_globals", ()): 42 + 5 + 19,  # fxa_counter + fxa_static_bias + fxa_primes[7]
        ("liba", "fxa_poly", (5,)): 3 * 5 + 5 * 5,
        ("liba", "fxa_apply", (7, 100, -100)): 100,  # 7 & 3 = 3: max
        ("liba", "fxa_unary_apply", (5, 6)): -6,  # 5 % 3 = 2: negate
        ("liba", "fxa_strings", ()): (4 + 3 + 3 + 5) + 100 * 3 + 1000 * 15 + 10000,
        ("liba", "fxa_big_table_check", ()): 6144,
        # sum of i % 7 for i < 6144 = 6144 // 7 * 21 + (0 + 1 + 2 + 3 + 4), times the seed
        ("liba", "fxa_big_table_sum", (3,)): 3 * (877 * 21 + 10),
        ("liba", "fxa_use_weak", (10,)): 17,
        ("liba", "fxa_system", (1,)): 1 + 1162 + len("fxSystem"),
        ("libb", "fxb_read_binds", ()): 42 + 50 + 15 + 1000,
        ("libb", "fxb_cell_offset", ()): 100,
        ("libb", "fxb_call_ptr", (-5, -9)): 100 * (-14) + (-5),
        ("libb", "fxb_strings", (4,)): 3 + 10 * 5 + 100 * len("beta"),
        ("libb", "fxb_malloc_copy", (1000,)): 200 + 3 + 8000,
        ("libb", "fxb_weak_present", ()): 1,
        ("libb", "fxb_call_optional", ()): 11 + 100,
        ("libb", "fxb_weak_missing", ()): 1,
        ("libb", "fxb_weak_missing_data", ()): 111,
        ("libc", "fxc_call_a", (5,)): 4 + 10,
        ("libc", "fxc_cleanup", (9,)): 81 + 1000,
        ("libd", "fxd_run", (4, -3)): (-4) + (-2),  # 4 % 3 = 1: dec + inc
        ("libd", "fxd_via_reexport", (2, 3)): 5 + 4,
        ("libd", "fxd_init_state", ()): 1,
    }
    assert {k: native[k] for k in hand} == hand


def test_results_do_not_depend_on_optimization(native: dict[tuple[str, str, tuple[int, ...]], int]) -> None:
    # undefined behaviour in a source would likely show up as a difference between -O0 and -O2
    assert harness.run(opt="-O0") == native


def test_load_calls_rejects_malformed_lists(tmp_path: Path) -> None:
    good = json.loads(harness.EXPECTED_JSON.read_text())
    bad_docs = []
    for mutate in (
        lambda d: d["dylibs"]["liba"]["calls"].append({"function": "fxa_poly", "args": [1, 2]}),
        lambda d: d["dylibs"]["liba"]["calls"].append({"function": "fxa_poly", "args": [2**31]}),
        lambda d: d["dylibs"]["liba"]["calls"].append({"function": "fxa poly", "args": []}),
        lambda d: d["dylibs"]["liba"]["calls"].append(dict(d["dylibs"]["liba"]["calls"][0])),
        lambda d: d["dylibs"]["objc"]["calls"].append({"function": "fxobjc_exercise", "args": [1]}),
        lambda d: d.pop("dylibs"),
    ):
        doc = json.loads(json.dumps(good))
        mutate(doc)
        bad_docs.append(doc)
    for i, doc in enumerate(bad_docs):
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(harness.NativeHarnessError):
            harness.load_calls(p)


def test_parse_output_checks_both_passes() -> None:
    calls = [harness.Call("liba", "f", ()), harness.Call("liba", "g", (1,))]
    assert harness.parse_output("0 0 5\n0 1 6\n1 1 6\n1 0 5\n", calls) == {
        ("liba", "f", ()): 5,
        ("liba", "g", (1,)): 6,
    }
    for text in ("0 0 5\n0 1 6\n1 1 7\n1 0 5\n", "0 0 5\n0 1 6\n1 1 6\n", "0 0 5\n0 1 6\n1 1 6\n1 0 5 9\n"):
        with pytest.raises(harness.NativeHarnessError):
            harness.parse_output(text, calls)


def test_generated_main_calls_every_function_twice() -> None:
    calls = harness.load_calls()
    main = harness.generate_main(calls)
    for i, c in enumerate(calls):
        assert main.count(f'"%d %d %d\\n", 0, {i}, {c.function}(') == 1
        assert main.count(f'"%d %d %d\\n", 1, {i}, {c.function}(') == 1


# ---- the committed objects ----


def _defined_externals(path: Path) -> dict[str, str]:
    """name -> nm type letter, for the external symbols an object defines."""
    out = subprocess.run(
        [tool(LLVM_NM), "-g", "--defined-only", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {parts[2]: parts[1] for parts in (line.split() for line in out.splitlines()) if len(parts) == 3}


def _undefined(path: Path) -> set[str]:
    out = subprocess.run([tool(LLVM_NM), "-u", str(path)], capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def test_every_object_is_committed_for_every_arch() -> None:
    for arch in ARCHS:
        for name in OBJECTS:
            data = (EXAMPLES / "obj" / arch / f"{name}.o").read_bytes()
            assert data[:4] == b"\xcf\xfa\xed\xfe", (arch, name)  # MH_MAGIC_64
            assert int.from_bytes(data[12:16], "little") == 1, (arch, name)  # MH_OBJECT
            # no build paths leaked into the objects (they must be reproducible anywhere)
            assert b"/work/" not in data and b"/tmp/" not in data and b"src/" not in data, (arch, name)


def test_test_functions_are_exported_text_symbols() -> None:
    calls = harness.load_calls()
    for arch in ARCHS:
        for dylib in {c.dylib for c in calls}:
            defined = _defined_externals(EXAMPLES / "obj" / arch / f"{dylib}.o")
            for c in calls:
                if c.dylib == dylib:
                    assert defined.get(c.symbol) == "T", (arch, dylib, c.symbol)


def test_relocation_kinds_the_linker_must_handle() -> None:
    tool(LLVM_OBJDUMP)
    wanted = {
        "arm64": {
            "UNSIGNED",
            "SUBTRACTOR",
            "BRANCH26",
            "PAGE21",
            "PAGEOFF12",
            "GOT_LOAD_PAGE21",
            "GOT_LOAD_PAGEOFF12",
            "POINTER_TO_GOT",
            "ADDEND",
        },
        "x86_64": {"UNSIGNED", "SIGNED", "SIGNED_1", "BRANCH", "GOT_LOAD", "GOT", "SUBTRACTOR"},
    }
    # arm64e: arm64's kinds, plus signed pointers
    wanted["arm64e"] = wanted["arm64"] | {"AUTHENTICATED_POINTER"}
    for arch in ARCHS:
        seen: set[str] = set()
        for name in OBJECTS:
            seen |= set(objinfo.type_counts(EXAMPLES / "obj" / arch / f"{name}.o", arch))
        assert wanted[arch] <= seen, (arch, wanted[arch] - seen)

    # arm64e: every object with pointers to code in its data signs them; plain arm64 never does
    def auth(arch: str, name: str) -> int:
        return int(objinfo.type_counts(EXAMPLES / "obj" / arch / f"{name}.o", arch)["AUTHENTICATED_POINTER"])

    for name in ("liba", "libb", "libd", "libobjc", "objc"):
        assert auth("arm64e", name) > 0, name
        assert auth("arm64", name) == 0, name


def test_unwind_sections() -> None:
    tool(LLVM_OBJDUMP)
    for arch in ARCHS:
        for name in OBJECTS:
            secs = objinfo.sections(EXAMPLES / "obj" / arch / f"{name}.o")
            assert "__LD,__compact_unwind" in secs, (arch, name)
            if arch == "x86_64":
                assert "__TEXT,__eh_frame" in secs, name
        # the cleanup in libc and the @try in objc need an LSDA
        for name in ("libc", "objc"):
            assert "__TEXT,__gcc_except_tab" in objinfo.sections(EXAMPLES / "obj" / arch / f"{name}.o")


def _tbd_symbols(path: Path) -> set[str]:
    doc = yaml.safe_load(re.sub(r"^--- !tapi-tbd", "---", path.read_text(), flags=re.M))
    names: set[str] = set()
    for section in doc["exports"]:
        names |= set(section.get("symbols", [])) | set(section.get("weak-symbols", []))
        for cls in section.get("objc-classes", []):
            names |= {f"_OBJC_CLASS_$_{cls}", f"_OBJC_METACLASS_$_{cls}"}
    return names


def test_tbd_stubs_match_the_objects() -> None:
    tbd = EXAMPLES / "tbd"
    for arch in ARCHS:
        obj = EXAMPLES / "obj" / arch
        assert _tbd_symbols(tbd / "libSystem.tbd") == set(_defined_externals(obj / "libsystem.o"))
        assert _tbd_symbols(tbd / "libobjc.tbd") == set(_defined_externals(obj / "libobjc.o"))
        missing = {s for s in _undefined(obj / "libb.o") if s.startswith("_fx_missing")}
        assert missing and missing == _tbd_symbols(tbd / "libfxmissing.tbd")
        # objc.o's runtime imports are all provided by the fake libobjc or libSystem
        provided = _tbd_symbols(tbd / "libobjc.tbd") | _tbd_symbols(tbd / "libSystem.tbd")
        assert _undefined(obj / "objc.o") <= provided


def test_readme_tables_are_current() -> None:
    tool(LLVM_OBJDUMP)
    readme = (FIXTURES / "README.md").read_text()
    m = re.search(r"<!-- objinfo:begin -->\n(.*?)<!-- objinfo:end -->", readme, re.S)
    assert m is not None
    assert m[1] == objinfo.markdown_tables()
