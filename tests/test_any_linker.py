"""Dylibs that LLVM's ld64.lld-22 linked (no LC_SEGMENT_SPLIT_INFO) in arm64 and x86_64 caches.

The inputs are the bundled fixtures linked with lld (tests/fixtures/synth/build_lld.sh; committed,
CI has no lld). By default the builder synthesizes their split seg info (``dyldcache.synth``) and
places every one; the caches must then run every fixture call of expected.json at a random slide
with the results gcc's native build of the same C computes (tests/fixtures/native_harness.py),
pass ``dyldcache verify`` and DyldExtractor's gate. ``--apple-rules`` evicts them all, in Apple's
words. Dylibs whose references cannot all be moved (lld's default optimization hints turn
cross-segment ADRP pairs into ADR / LDR literal) are evicted with a reason naming the section
and offset, checked against llvm-objdump.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import objdump
import pytest
from cache_fixtures import RawCache, emulate_calls, input_segments, random_slide
from conftest import FIXTURES, python_module, run_cli, tool

from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache
from dyldcache.errors import NothingPlacedError

LLD = FIXTURES / "synth" / "lld"
LLD_LOH = FIXTURES / "synth" / "lld-loh"
ARCHS = ("arm64", "x86_64")


def _install_name(path: Path) -> str:
    (ident,) = objdump.private_headers(path).commands_named("LC_ID_DYLIB")
    return str(ident["name"]).rsplit(" (offset ", 1)[0]


def _root(source: Path, dest: Path) -> tuple[Path, dict[str, Path]]:
    """Each dylib of ``source`` at its install name under ``dest`` (as llvm-objdump reads it)."""
    names = {}
    for p in sorted(source.glob("*.dylib")):
        name = _install_name(p)
        target = dest / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, target)
        names[name] = p
    return dest, names


@dataclass
class LldBuild:
    arch: str
    root: Path
    #: install name -> the committed lld dylib
    inputs: dict[str, Path]
    result: BuildResult

    @property
    def main(self) -> str:
        return str(self.result.files[0])


@pytest.fixture(scope="module", params=ARCHS)
def lld(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LldBuild:
    arch = request.param
    base = tmp_path_factory.mktemp(f"lld-{arch}")
    root, names = _root(LLD / arch, base / "root")
    result = build_cache(BuildOptions(arch=arch, output_dir=str(base / "out"), root=str(root), jobs=1))
    return LldBuild(arch, root, names, result)


def _split_seg_commands(path: Path) -> list[dict[str, Any]]:
    return objdump.private_headers(path).commands_named("LC_SEGMENT_SPLIT_INFO")


def test_lld_dylibs_have_no_split_seg_info_and_are_placed(lld: LldBuild) -> None:
    """Every lld dylib lacks split seg info (llvm-objdump), and every one is placed with
    synthesized info (libreltable's relative lookup table reaching __DATA_CONST included: its
    entries get DELTA_32, tests/test_split_seg_synth.py runs it)."""
    assert len(lld.inputs) >= 7
    for path in lld.inputs.values():
        assert _split_seg_commands(path) == [], path
    expected = sorted(lld.inputs)
    assert sorted(lld.result.dylibs) == expected
    assert sorted(lld.result.synthesized) == expected
    assert lld.result.evictions == []


def test_maps_name_the_synthesized_dylibs(lld: LldBuild) -> None:
    doc = json.loads(Path(lld.main + ".json").read_text(encoding="utf-8"))
    kinds = {img["path"]: img["split-seg-info"] for img in doc["images"]}
    assert kinds == dict.fromkeys(lld.result.dylibs, "synthesized")
    text = Path(lld.main + ".map").read_text(encoding="utf-8")
    block = text.split("# split seg info synthesized (the input has none): ", 1)[1]
    assert block.startswith(f"{len(lld.result.dylibs)} dylibs\n")
    assert sorted(ln[2:] for ln in block.splitlines()[1:] if ln.startswith("#\t")) == sorted(
        lld.result.dylibs
    )


def test_segments_keep_their_page_offsets(lld: LldBuild) -> None:
    """The promise synthesis relies on (keep_page_offsets): every segment of a synthesized dylib
    sits at an address congruent to its linked one modulo 4 KiB, read from the cache's own
    load commands and the input's."""
    raw = RawCache(lld.main)
    moved = 0
    for name in lld.result.dylibs:
        ins = {s.name: s for s in input_segments(lld.inputs[name])}
        for seg in raw.segments(name):
            if seg.name == "__LINKEDIT":
                continue
            assert seg.vmaddr % 0x1000 == ins[seg.name].vmaddr % 0x1000, (name, seg.name)
            moved += seg.vmaddr - ins[seg.name].vmaddr != raw.image_address(name) - ins["__TEXT"].vmaddr
    assert moved, "some segment moved relative to its __TEXT (else nothing was tested)"


def test_every_fixture_call_matches_native_at_a_random_slide(lld: LldBuild) -> None:
    python_module("unicorn")
    tool("gcc")
    tool("objcopy")
    slide = random_slide(lld.main)
    run = emulate_calls(lld.main, lld.arch, slide)
    assert run.calls >= 40
    assert run.mismatches == {}, f"slide {slide:#x}"
    assert run.initializers["/usr/lib/libfxd.dylib"] == 1


def test_verify_and_dyldextractor(lld: LldBuild, tmp_path: Path) -> None:
    proc = run_cli("verify", lld.main)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    gate = run_gate(lld.main, arm64_fixers=lld.arch != "x86_64", outdir=tmp_path)
    # libfxb weak-links libfxmissing, which exists nowhere (dyld skips it, and so does the
    # cache); DyldExtractor's stub fixer says it cannot find it, and nothing else
    missing = "Unable to find dependency: b'/usr/lib/libfxmissing.dylib\\x00'"
    assert {k: v for k, v in gate.failures.items() if v != [missing]} == {}
    assert set(gate.failures) <= {"/usr/lib/libfxb.dylib"}
    assert sorted(gate.extracted) == sorted(lld.result.dylibs)


@pytest.mark.parametrize("arch", ARCHS)
def test_apple_rules_evict_them_all(arch: str, tmp_path: Path) -> None:
    """dyld-1162 places no dylib without split seg info: with --apple-rules neither do we."""
    root, names = _root(LLD / arch, tmp_path / "root")
    with pytest.raises(NothingPlacedError) as err:
        build_cache(
            BuildOptions(arch=arch, output_dir=str(tmp_path / "out"), root=str(root), apple_rules=True)
        )
    reasons = {e.path: e.reason for e in err.value.evictions}
    assert reasons == dict.fromkeys(names, "Missing split seg info")


def test_adr_and_ldr_literal_across_segments_evict_with_section_and_offset(tmp_path: Path) -> None:
    """lld's default optimization hints rewrite ADRP pairs into ADR / LDR (literal) where the
    target is within 1 MiB, even in another segment: no split seg kind can move those, so such
    a dylib is evicted with the instruction's section and offset, never placed with a guess.
    llvm-objdump confirms the named instruction is an ADR or LDR (literal)."""
    root, names = _root(LLD_LOH / "arm64", tmp_path / "root")
    try:
        result = build_cache(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=str(root)))
        evictions = result.evictions
    except NothingPlacedError as exc:
        evictions = [e for e in exc.evictions if hasattr(e, "reason")]
    pattern = re.compile(
        r"cannot be synthesized: .*: (__TEXT,__\w+)\+(0x[0-9a-f]+): (ADR|LDR \(literal\)) reaches"
    )
    checked = 0
    for e in evictions:
        m = pattern.search(e.reason)
        if m is None:
            assert "which was evicted" in e.reason, e.reason
            continue
        section, offset, what = m.group(1), int(m.group(2), 16), m.group(3)
        sections = objdump.private_headers(names[e.path]).sections
        start = next(s.addr for s in sections if f"{s.segname},{s.sectname}" == section)
        assert _mnemonic_at(names[e.path], start + offset) == ("adr" if what == "ADR" else "ldr"), e.path
        checked += 1
    assert checked >= 3


def _mnemonic_at(path: Path, address: int) -> str:
    """llvm-objdump's mnemonic of the instruction at ``address``."""
    proc = subprocess.run(
        [
            tool("llvm-objdump-22"),
            "-d",
            f"--start-address={address:#x}",
            f"--stop-address={address + 4:#x}",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [ln for ln in proc.stdout.splitlines() if re.match(rf"\s*{address:x}:", ln)]
    assert len(rows) == 1, proc.stdout
    return rows[0].split("\t")[1]
