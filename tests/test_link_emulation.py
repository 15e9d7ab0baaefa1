"""The linked examples run: every arch and fixup style, loaded standalone with LIEF at random bases
(tests/emulator.py, independent of our reader), initializers run, and every test function of
expected.json called in unicorn. Results must equal what the C sources compute when compiled
natively with gcc (tests/fixtures/native_harness.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
from conftest import FIXTURES, python_module, tool
from linked_examples import CONFIG_IDS, CONFIGS, linked

from dyldcache.examples import EXAMPLE_DYLIBS

sys.path.insert(0, str(FIXTURES))
from native_harness import Call, expected_results, load_calls

if TYPE_CHECKING:
    from emulator import LoadedImage, Machine

SEEDS = (1, 20240517)
INSTALL_NAME = {d.name: d.install_name for d in EXAMPLE_DYLIBS}


@pytest.fixture(scope="module")
def native() -> dict[tuple[str, str, tuple[int, ...]], int]:
    tool("gcc")
    tool("objcopy")
    return expected_results()


def _run_all(
    arch: str, fixups: str, weak_dylib: bool, seed: int
) -> tuple[list[tuple[Call, int]], Machine, dict[str, LoadedImage]]:
    python_module("unicorn")
    python_module("lief")
    from emulator import load_standalone

    s = linked(arch, fixups, weak_dylib)
    machine, images = load_standalone([str(p) for p in s.paths], arch, seed)
    bases = {img.base for img in images.values()}
    assert len(bases) == len(s.paths), "every dylib has its own base"
    assert all(b % 0x4000 == 0 and b >= 0x1_0000_0000 for b in bases), "bases are slid, never 0"
    results = []
    for call in load_calls():
        image = images[INSTALL_NAME[call.dylib]]
        fn = image.exports[call.symbol]
        results.append((call, machine.call_int(fn, *call.args)))
    return results, machine, images


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("arch", "fixups"), CONFIGS, ids=CONFIG_IDS)
def test_every_call_matches_native(
    arch: str, fixups: str, seed: int, native: dict[tuple[str, str, tuple[int, ...]], int]
) -> None:
    results, _, _ = _run_all(arch, fixups, False, seed)
    wrong = [(c.key, got, native[c.key]) for c, got in results if got != native[c.key]]
    assert not wrong, f"{len(wrong)} of {len(results)} calls differ (key, emulated, native): {wrong}"
    assert len(results) == len(native)


@pytest.mark.parametrize(("arch", "fixups"), CONFIGS, ids=CONFIG_IDS)
def test_weak_dylib_that_does_not_exist(
    arch: str, fixups: str, native: dict[tuple[str, str, tuple[int, ...]], int]
) -> None:
    """libb's weak imports come from an LC_LOAD_WEAK_DYLIB that never exists: they bind to 0 and
    every result is still what the native program computes (where they are also absent)."""
    s = linked(arch, fixups, weak_dylib=True)
    from dyldcache.macho.file import open_macho

    libb = open_macho(s.path("libb"))
    weak = [d for d in libb.dylibs if d.is_weak]
    assert [d.path for d in weak] == ["/usr/lib/libfxmissing.dylib"]
    missing = {"_fx_missing_data", "_fx_missing_fn"}
    ordinal = libb.dylibs.index(weak[0]) + 1
    assert {i.name for i in libb.fixups.imports if i.ordinal == ordinal} == missing
    assert all(i.weak for i in libb.fixups.imports if i.name in missing)
    slots = [
        int(r["address"])
        for r in libb.fixups.records
        if int(r["bind"]) >= 0 and libb.fixups.import_name(r) in missing
    ]
    assert len(slots) >= 4  # GOT slots and data pointers
    for seed in SEEDS:
        results, machine, images = _run_all(arch, fixups, True, seed)
        base = images["/usr/lib/libfxb.dylib"].base
        assert [machine.read_u64(base + a) for a in slots] == [0] * len(slots)
        wrong = [(c.key, got, native[c.key]) for c, got in results if got != native[c.key]]
        assert not wrong, wrong
