"""Split seg info synthesized for dylibs without it (issue 8; dyldcache.synth).

The ground truth is split seg info a linker wrote: ld64-609 (iOS 14.4 arm64, v2), ld64-409
(macOS 10.14 x86_64, v1) and our own linker (the fixture dylibs, v2 and v1). For each such
dylib the synthesizer runs with the original ignored, and every original entry that changes
bytes when segments move apart must come out again, with nothing extra (tests/split_seg_coverage.py
says exactly what is compared). Dylibs ld64.lld-22 linked (committed, tests/fixtures/synth) have
no split seg info: they are checked against the independent scans of test_split_seg_scan and
test_split_seg_v1 (capstone, llvm-objdump, llvm-dwarfdump). Refusals are checked too: each must
name a section (and offset) that llvm-objdump confirms, or a section kind the synthesizer cannot
parse (Swift metadata).

The A64 register decoder the ADRP walk relies on is checked instruction by instruction against
unicorn: a register it says is not read must not change anything when perturbed, and one it says
is overwritten must end the same whatever it held.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import re
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import objdump
import pytest
import split_seg_coverage as cov
import test_split_seg_scan as scan
import test_split_seg_v1 as v1
from conftest import FIXTURES, LLVM_OBJDUMP, python_module, shared_path, tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linked_examples import CONFIGS, NAMES, linked

from dyldcache.errors import DyldCacheError, SplitSegSynthesisError
from dyldcache.macho.file import open_macho, parse_macho
from dyldcache.macho.split_seg import encode_split_seg_v2, read_split_seg
from dyldcache.synth import synthesize_split_seg
from dyldcache.synth.arm64_registers import gpr_effect

LLD = FIXTURES / "synth" / "lld"
LLD_LOH = FIXTURES / "synth" / "lld-loh"
MODES = pytest.mark.parametrize("keep", [False, True], ids=["packed", "keep-page-offsets"])
IOS = ("real", "ios14.4-arm64-procursus")
MACOS = ("real", "macos10.14-x86_64-usr-lib")
#: the macOS 10.14 subset the suite runs (every 3rd dylib by name; benchmarks/synth_split_seg.py
#: runs them all)
MACOS_STRIDE = 3


def _files(*parts: str) -> list[Path]:
    root = shared_path("data", *parts)
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _dylib(path: Path, arch: str | None = None):  # type: ignore[no-untyped-def]
    try:
        image = open_macho(path, arch)
    except DyldCacheError:
        return None
    return image if image.filetype == 6 else None  # MH_DYLIB


def _objdump_line(path: Path, address: int, arch: str | None = None) -> str:
    args = [tool(LLVM_OBJDUMP), "-d", "--no-show-raw-insn", f"--start-address={address:#x}"]
    args += [f"--stop-address={address + 4:#x}", str(path)] + ([f"--arch={arch}"] if arch else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if re.match(rf"\s*{address:x}:", line))


# ---------------------------------------------------------------------------------------------
# against ld64's split seg info


@MODES
def test_ld64_arm64_v2_is_covered(keep: bool) -> None:
    """Every iOS 14.4 dylib with ld64's v2 info: synthesized again, all of it that moves."""
    totals: Counter[str] = Counter()
    refused: dict[str, str] = {}
    for path in _files(*IOS):
        image = _dylib(path)
        if image is None or image.split_seg is None:
            continue
        totals["dylibs"] += 1
        try:
            entries = synthesize_split_seg(image, keep_page_offsets=keep)
        except SplitSegSynthesisError as exc:
            refused[path.name] = str(exc)
            continue
        c = cov.compare(path.read_bytes(), entries, keep_page_offsets=keep)
        assert not c.missing, f"{path}: {len(c.missing)} of {c.required} not covered: {c.missing[:5]}"
        assert not c.extras, f"{path}: entries ld64 did not write: {c.extras[:5]}"
        totals["required"] += c.required
    assert totals["dylibs"] >= 30 and totals["required"] > 10000
    if keep:
        # page offsets kept: an ADRP needs no user, and ld64's output has nothing else we refuse
        assert not refused, refused
    else:
        # refused only because a page register's users could not all be followed
        assert all("cannot pair the ADRP" in why for why in refused.values()), refused
        assert len(refused) <= totals["dylibs"] // 5


def test_ld64_x86_64_v1_is_covered() -> None:
    """A third of the macOS 10.14 /usr/lib x86_64 slices with ld64's v1 info: every kind-1
    location (a 32-bit value in __TEXT that moves with the data) is synthesized again."""
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    files = [p for p in _files(*MACOS) if p.suffix == ".dylib"][::MACOS_STRIDE]
    for path in files:
        image = _dylib(path, "x86_64")
        if image is None or image.split_seg is None:
            continue
        totals["dylibs"] += 1
        try:
            entries = synthesize_split_seg(image)
        except SplitSegSynthesisError as exc:
            assert exc.section is not None, exc
            reasons[exc.message.split(" (")[0]] += 1
            continue
        c = cov.compare(cov.thin(path, "x86_64"), entries, keep_page_offsets=False)
        assert c.version == 1
        assert not c.missing, f"{path}: {len(c.missing)} of {c.required} not covered: {c.missing[:5]}"
        assert not c.extras, f"{path}: 32-bit values ld64 did not list: {c.extras[:5]}"
        totals["required"] += c.required
    assert totals["dylibs"] >= 50 and totals["required"] > 20000
    known = ("DTrace DOF", "bytes control flow reaches are no valid", "a jump table at", "\\d+ bytes that no")
    assert all(re.match("|".join(known), r) for r in reasons), reasons
    assert sum(reasons.values()) <= totals["dylibs"] // 8


# ---------------------------------------------------------------------------------------------
# against our linker's split seg info


#: (arch, fixups, split seg version, lazy binding) of every fixture set our linker makes
FIXTURE_SETS = (
    [(a, f, 2, False) for a, f in CONFIGS]
    + [("x86_64", "chained", 1, False), ("x86_64", "opcodes", 1, False)]
    + [("arm64", "opcodes", 2, True), ("x86_64", "opcodes", 2, True), ("x86_64", "opcodes", 1, True)]
)


@MODES
@pytest.mark.parametrize(
    ("arch", "fixups", "version", "lazy"),
    FIXTURE_SETS,
    ids=[f"{a}-{f}-v{v}" + ("-lazy" if lazy else "") for a, f, v, lazy in FIXTURE_SETS],
)
def test_fixture_dylibs_are_covered(arch: str, fixups: str, version: int, lazy: bool, keep: bool) -> None:
    # called as the other tests call them, so that each set is linked once per session
    if lazy:
        linked_set = linked(arch, fixups, split_seg=version, lazy=True)
    elif version == 1:
        linked_set = linked(arch, fixups, split_seg=1)
    else:
        linked_set = linked(arch, fixups)
    required = 0
    for name, path in linked_set.items():
        entries = synthesize_split_seg(open_macho(path), keep_page_offsets=keep)
        c = cov.compare(path.read_bytes(), entries, keep_page_offsets=keep)
        assert c.version == version
        assert not c.missing, f"{name}: {c.missing[:5]}"
        assert not c.extras, f"{name}: {c.extras[:5]}"
        required += c.required
        # the entries are shaped like decoded v2 entries: they survive the encoder and decoder
        decoded = read_split_seg(encode_split_seg_v2(entries), str(path)).entries
        assert np.array_equal(np.sort(decoded), np.sort(entries))
    assert required > 50


# ---------------------------------------------------------------------------------------------
# ld64.lld-22 dylibs: no split seg info, checked against the independent scans


def _methlist_refs(image: scan.Image) -> list[tuple[int, int]]:
    """(address, target) of every non-zero offset of the relative method lists in
    __objc_methlist (objc4: u32 entsize|flags 0x8000000C, u32 count, {i32 name, types, imp})."""
    out: list[tuple[int, int]] = []
    for s in image.sections:
        if s.sectname != "__objc_methlist":
            continue
        pos = 0
        while pos + 8 <= s.size:
            flags, count = struct.unpack_from("<II", image.data, s.offset + pos)
            if flags == 0:
                pos += 4
                continue
            assert flags == 0x8000000C, f"method list flags {flags:#x}"
            for k in range(3 * count):
                at = pos + 8 + 4 * k
                (rel,) = struct.unpack_from("<i", image.data, s.offset + at)
                if rel:
                    out.append((s.addr + at, s.addr + at + rel))
            pos += 8 + 12 * count
    return out


def _lld_expected(path: Path, arch: str) -> set[tuple[int, int, int]]:
    """(kind, location, target) of every reference of ``path`` that crosses segments, and every
    pointer, from capstone, llvm-objdump and llvm-dwarfdump (no dyldcache code)."""
    image = scan._image(path, arch)
    refs = (scan._scan_x86_64 if arch == "x86_64" else scan._scan_arm64)(image)
    assert not image.unknown
    out = {(r.kind, r.at, r.target) for r in refs if image.segment(r.at) != image.segment(r.target)}
    out = {(k, a, t & ~0xFFF if k == cov.ARM64_ADRP else t) for k, a, t in out}
    out |= {(r.kind, r.at, r.target) for r in scan._pointer_refs(image, "chained")}
    relative = v1.personality_refs(path, image) + _methlist_refs(image)
    relative += v1.lsda_type_refs(path, image, v1.lsda_addresses(path))
    out |= {(cov.DELTA_32, a, t) for a, t in relative if image.segment(a) != image.segment(t)}
    base = image.sections[0].addr - image.sections[0].offset  # __TEXT maps from file offset 0
    out |= {
        (cov.IMAGE_OFF_32, a, base + t)
        for a, t in v1.unwind_personality_refs(path, image)
        if image.segment(a) != image.segment(base + t)
    }
    return out


@MODES
@pytest.mark.parametrize("arch", ["arm64", "x86_64"])
@pytest.mark.parametrize("name", [n for n in NAMES])
def test_lld_dylibs_match_the_independent_scan(arch: str, name: str, keep: bool) -> None:
    python_module("capstone")
    tool("llvm-dwarfdump-22")
    file = {"libsystem": "libSystem.B", "libobjc": "libobjc.A", "objc": "libfxobjc"}.get(
        name, f"libfx{name[3]}"
    )
    path = LLD / arch / f"{file}.dylib"
    image = open_macho(path)
    assert image.split_seg is None, "lld wrote split seg info?"
    entries = synthesize_split_seg(image, keep_page_offsets=keep)
    lay = cov.layout(path.read_bytes())
    got = set()
    for kind, f, t, fo, to in entries.tolist():
        at, target = lay.addr[f] + fo, lay.addr[t] + to
        if kind == cov.ARM64_OFF12 and keep:
            continue
        got.add((kind, at, target & ~0xFFF if kind == cov.ARM64_ADRP else target))
    want = _lld_expected(path, arch)
    if keep:
        want = {w for w in want if w[0] != cov.ARM64_OFF12}
    assert want - got == set(), f"missing: {sorted(want - got)[:8]}"
    assert got - want == set(), f"extra: {sorted(got - want)[:8]}"
    assert any(k != cov.POINTER_64 for k, _, _ in want)


# ---------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("path", sorted(LLD_LOH.glob("*/*.dylib")), ids=lambda p: p.name)
def test_lld_optimization_hints_are_refused(path: Path) -> None:
    """lld's default optimization hints rewrite cross-segment ADRP pairs into ADR / LDR (literal):
    refused, naming an instruction that llvm-objdump shows reaching another segment."""
    image = open_macho(path)
    with pytest.raises(SplitSegSynthesisError) as err:
        synthesize_split_seg(image, keep_page_offsets=True)
    _check_pc_relative_refusal(path, err.value)


def _check_pc_relative_refusal(path: Path, exc: SplitSegSynthesisError, arch: str | None = None) -> None:
    assert exc.section is not None and exc.offset is not None, exc
    m = re.match(r"(ADR|LDR \(literal\)) reaches (0x[0-9a-f]+)", exc.message)
    if m is None:  # another section the image cannot have moved: at least named
        assert exc.section.startswith("__TEXT,__")
        return
    image = open_macho(path, arch)
    segname, sectname = exc.section.split(",")
    sect = image.section(segname, sectname)
    assert sect is not None
    line = _objdump_line(path, sect.addr + exc.offset, arch)
    mnemonic = "adr" if m.group(1) == "ADR" else "ldr"
    assert re.search(rf"\s{mnemonic}\s", line), line
    target = int(m.group(2), 16)
    assert f"{target:x}" in line, line  # llvm-objdump prints the target address
    text = image.segment_for_address(sect.addr)
    assert not text.vmaddr <= target < text.vmend  # type: ignore[union-attr]


def test_ld64_optimization_hints_are_refused() -> None:
    """iOS dylibs ld64 linked outside the shared-region paths have no split seg info and their
    ADRP pairs relaxed: each is refused for a reason llvm-objdump confirms."""
    refused = 0
    for path in _files(*IOS):
        image = _dylib(path)
        if image is None or image.split_seg is not None:
            continue
        try:
            synthesize_split_seg(image, keep_page_offsets=True)
        except SplitSegSynthesisError as exc:
            _check_pc_relative_refusal(path, exc)
            refused += 1
    assert refused >= 5


#: src/reltable.c: s0..s3 = {f0, "a"}, {f1, "b"}, {f0, "c"}, {f1, "d"}; f0(x) = x, f1(x) = x + 1
RELTABLE_OPS = [(0, "a"), (1, "b"), (0, "c"), (1, "d")]
RELTABLE_NAMES = ["zero", "one", "two", "three", "many", "many"]


def test_lld_relative_lookup_table_gets_delta32_entries() -> None:
    """clang -O2 (x86_64) turns ``spick``'s switch over static const objects with pointers into a
    table of ``object - table`` in __TEXT,__const whose objects are in __DATA_CONST: each entry
    gets DELTA_32 from itself to its object, as ld64 would write for the same subtraction (the
    builder adds how much the object moved relative to the table). llvm-objdump gives the table
    (the ``lea`` before the ``movslq``), its length (``cmpl $n, %edi; ja``) and the objects
    (``_s0``.. in the symbol table)."""
    path = LLD / "x86_64" / "libreltable.dylib"
    spick = objdump.run(path, "-d", "--no-show-raw-insn").split("\n_spick:\n", 1)[1].split("\n_", 1)[0]
    check = re.search(r"cmpl\s+\$0x([0-9a-f]+), %edi\n\s+[0-9a-f]+:\s+ja\s", spick)
    lea = re.search(r"leaq\s+0x([0-9a-f]+)\(%rip\), %\w+\n\s+([0-9a-f]+):\s+movslq", spick)
    assert check is not None and lea is not None, spick
    last, table = int(check.group(1), 16), int(lea.group(1), 16) + int(lea.group(2), 16)
    symbols = dict(
        (m.group(2), int(m.group(1), 16))
        for m in re.finditer(r"^([0-9a-f]{16}) .* (_s\d)$", objdump.run(path, "--syms"), re.M)
    )
    want = {(table + 4 * k, symbols[f"_s{k}"]) for k in range(last + 1)}
    entries = synthesize_split_seg(open_macho(path), keep_page_offsets=True)
    lay = cov.layout(path.read_bytes())
    const = lay.names.index("__TEXT,__const")
    got = {
        (lay.addr[f] + fo, lay.addr[t] + to)
        for kind, f, t, fo, to in entries.tolist()
        if kind == cov.DELTA_32 and f == const
    }
    assert got == want
    assert len(want) == 3  # s0..s2; the default case (s3) is a lea of its own


def test_lld_relative_lookup_table_runs_in_a_cache(tmp_path: Path) -> None:
    """libreltable alone in an x86_64 cache, loaded at a random slide: ``spick(i)`` returns the
    address of s_i, whose function pointer and string are the C source's, although __DATA_CONST
    moved relative to __TEXT; ``name(i)`` (a table into __cstring, same segment) too."""
    python_module("unicorn")
    import emulator
    from cache_fixtures import RawCache, input_segments, random_slide

    from dyldcache.builder.pipeline import BuildOptions, build_cache

    name = "/usr/lib/libreltable.dylib"
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    shutil.copy(LLD / "x86_64" / "libreltable.dylib", root / name.lstrip("/"))
    result = build_cache(BuildOptions(arch="x86_64", output_dir=str(tmp_path / "out"), root=str(root)))
    assert result.dylibs == [name] and result.synthesized == [name]
    main = str(result.files[0])
    raw = RawCache(main)
    linked = {seg.name: seg.vmaddr for seg in input_segments(LLD / "x86_64" / "libreltable.dylib")}
    cached = {seg.name: seg.vmaddr for seg in raw.segments(name)}
    moved = cached["__DATA_CONST"] - cached["__TEXT"] - (linked["__DATA_CONST"] - linked["__TEXT"])
    assert moved != 0, "__DATA_CONST kept its distance from __TEXT: nothing was tested"
    slide = random_slide(main)
    loaded = emulator.load_cache(main, "x86_64", slide)
    spick, name_fn = loaded.lookup(name, "_spick"), loaded.lookup(name, "_name")
    assert spick is not None and name_fn is not None

    def cstring(addr: int) -> str:
        data = bytes(loaded.machine.read(addr, 32))
        return data[: data.index(0)].decode()

    for i, (plus, label) in enumerate(RELTABLE_OPS):
        ops = loaded.machine.call(spick, i)
        fn, text = struct.unpack("<QQ", bytes(loaded.machine.read(ops, 16)))
        assert loaded.machine.call(fn, 41) == 41 + plus, (i, slide)
        assert cstring(text) == label, (i, slide)
    for i, want in enumerate(RELTABLE_NAMES):
        assert cstring(loaded.machine.call(name_fn, i)) == want, (i, slide)


def test_swift_metadata_is_refused() -> None:
    """Swift overlays (Apple-linked, no split seg info): every one with __swift* sections is refused
    naming one of them."""
    seen = 0
    for path in _files("real", "no-split-seg", "swift4-ios-app-embedded"):
        image = _dylib(path, "arm64")
        if image is None:
            continue
        headers = objdump.run(path, "--section-headers", "--arch=arm64")
        swift = set(re.findall(r"\s(__swift\w+)\s", headers))
        if not swift:
            continue
        seen += 1
        with pytest.raises(SplitSegSynthesisError) as err:
            synthesize_split_seg(image, keep_page_offsets=True)
        assert err.value.section is not None
        assert err.value.section.split(",")[1] in swift, err.value
        assert "Swift" in err.value.message
    assert seen >= 10


def _patched_copy(tmp_path: Path) -> tuple[Path, int, int]:
    """A copy of the lld arm64 libfxb with the first cross-segment ``adrp xN`` + ``ldr _, [xN, #o]``
    pair's LDR replaced by ``str xN, [sp, #8]``: the page goes to memory, where no walk follows.
    Returns the copy, the ADRP's address and the STR's address (found with llvm-objdump)."""
    src = LLD / "arm64" / "libfxb.dylib"
    image = scan._image(src, "arm64")
    text = next(s for s in image.sections if s.sectname == "__text")
    out = subprocess.run(
        [tool(LLVM_OBJDUMP), "-d", "--no-show-raw-insn", "--section=__text", str(src)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [m.groups() for m in re.finditer(r"^\s*([0-9a-f]+):\s+(\w+)\s+(.*)$", out, re.M)]
    for (a, op, args), (b, op2, args2) in itertools.pairwise(lines):
        if op != "adrp" or op2 != "ldr":
            continue
        reg = args.split(",")[0]
        page = int(args.split(",")[1].split()[0], 16)
        if f"[{reg}," not in args2 or image.segment(page) == "__TEXT":
            continue
        at, user = int(a, 16), int(b, 16)
        data = bytearray(src.read_bytes())
        store = 0xF90007E0 | int(reg[1:])  # str xN, [sp, #8]
        struct.pack_into("<I", data, text.offset + user - text.addr, store)
        dst = tmp_path / "libfxb.dylib"
        dst.write_bytes(bytes(data))
        assert "str" in _objdump_line(dst, user)
        return dst, at, user
    raise AssertionError("no cross-segment ADRP + LDR pair in libfxb")


def test_adrp_whose_user_cannot_be_found(tmp_path: Path) -> None:
    path, adrp, store = _patched_copy(tmp_path)
    image = open_macho(path)
    with pytest.raises(SplitSegSynthesisError) as err:
        synthesize_split_seg(image)
    text = image.section("__TEXT", "__text")
    assert text is not None
    assert err.value.section == "__TEXT,__text" and err.value.offset == store - text.addr, err.value
    assert f"{adrp:#x}" in err.value.message
    # with page offsets kept the ADRP alone is enough: it still gets its entry
    entries = synthesize_split_seg(image, keep_page_offsets=True)
    adrps = entries[entries["kind"] == cov.ARM64_ADRP]
    located = zip(adrps["from_section"].tolist(), adrps["from_offset"].tolist(), strict=True)
    assert (text.index, adrp - text.addr) in set(located)


# ---------------------------------------------------------------------------------------------
# bad input


def test_fuzzed_files_only_raise_project_errors() -> None:
    for path in _files("fuzzed"):
        with contextlib.suppress(DyldCacheError):
            synthesize_split_seg(parse_macho(path.read_bytes(), str(path)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_sections_only_raise_project_errors(data: st.DataObject) -> None:
    """Random bytes written over the sections the synthesizer parses or decodes."""
    arch = data.draw(st.sampled_from(["arm64", "x86_64"]))
    path = LLD / arch / "libfxobjc.dylib"
    raw = bytearray(path.read_bytes())
    image = open_macho(path)
    names = ("__unwind_info", "__eh_frame", "__gcc_except_tab", "__objc_methlist", "__text", "__stubs")
    sect = data.draw(st.sampled_from([s for s in image.sections if s.sectname in names and s.size]))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, sect.size - 1))
        raw[sect.offset + at] = data.draw(st.integers(0, 255))
    keep = data.draw(st.booleans())
    with contextlib.suppress(DyldCacheError):
        synthesize_split_seg(parse_macho(bytes(raw), "corrupt.dylib"), keep_page_offsets=keep)


# ---------------------------------------------------------------------------------------------
# the A64 register decoder against unicorn


def _real_words(count: int) -> list[int]:
    """Distinct non-branch instruction words from the __text of the iOS dylibs ld64 linked."""
    words: set[int] = set()
    for path in _files(*IOS):
        image = _dylib(path)
        if image is None or image.split_seg is None:
            continue
        text = image.section("__TEXT", "__text")
        if text is not None:
            words.update(np.frombuffer(bytes(image.section_content(text)), dtype="<u4").tolist())
    rng = random.Random(8)
    pool = sorted(w for w in words if (w >> 26) & 7 != 0b101)  # not branches, exceptions, system
    return rng.sample(pool, min(count, len(pool)))


def test_register_effects_match_unicorn() -> None:
    python_module("unicorn")
    from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc, UcError
    from unicorn.arm64_const import UC_ARM64_REG_NZCV, UC_ARM64_REG_SP, UC_ARM64_REG_X0

    code, data_lo, size = 0x10000, 0x100000, 0x200000
    regs = [UC_ARM64_REG_X0 + r for r in range(29)]  # x0..x28 are contiguous in unicorn
    from unicorn.arm64_const import UC_ARM64_REG_X29, UC_ARM64_REG_X30

    regs += [UC_ARM64_REG_X29, UC_ARM64_REG_X30]
    rng = random.Random(1)
    memory = bytes(rng.getrandbits(8) for _ in range(size))
    checked = 0
    for word in _real_words(500):
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.mem_map(code, 0x1000)
        uc.mem_map(data_lo, size)
        uc.mem_write(code, struct.pack("<I", word))
        base = [data_lo + 0x80000 + 0x100 * rng.randrange(0x800) for _ in range(31)]

        def run(values: list[int], uc=uc) -> tuple[list[int], bytes, int] | None:
            uc.mem_write(data_lo, memory)
            for r, v in zip(regs, values, strict=True):
                uc.reg_write(r, v)
            uc.reg_write(UC_ARM64_REG_SP, data_lo + 0x100000)
            uc.reg_write(UC_ARM64_REG_NZCV, 0)
            try:
                uc.emu_start(code, code + 4, count=1)
            except UcError:
                return None
            return (
                [uc.reg_read(r) for r in regs],
                bytes(uc.mem_read(data_lo, size)),
                uc.reg_read(UC_ARM64_REG_NZCV),
            )

        before = run(base)
        if before is None:
            continue
        reads, writes = gpr_effect(word)
        checked += 1
        for r in range(31):
            other = list(base)
            other[r] = base[r] + 0x40 + 0x100 * rng.randrange(1, 0x40)
            after = run(other)
            assert after is not None, f"{word:#010x}: faults only when x{r} changes"
            regs_a, mem_a, flags_a = after
            regs_b, mem_b, flags_b = before
            changed = [k for k in range(31) if k != r and regs_a[k] != regs_b[k]]
            if not reads >> r & 1:
                assert not changed and mem_a == mem_b and flags_a == flags_b, (
                    f"{word:#010x} reads x{r} (changes {changed}), the decoder says it does not"
                )
                assert regs_a[r] in (other[r], regs_b[r]), (
                    f"{word:#010x}: x{r} is neither kept nor overwritten"
                )
            if writes >> r & 1 and not reads >> r & 1:
                assert regs_a[r] == regs_b[r], f"{word:#010x}: x{r} is not fully overwritten"
    assert checked >= 350
