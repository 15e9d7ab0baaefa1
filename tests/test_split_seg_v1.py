"""Split seg info v1: x86_64 dylibs as ld64 links them by default (issue 2, item 2; issue 3).

v1 (docs/cache-format.md, split seg; dyld's AdjustDylibSegments ``adjustCode``) lists, per kind,
the locations in __TEXT of values that must move when the data segments move away from the code:
kind 1 a 32-bit value (x86_64 RIP-relative displacements), kind 2 a 64-bit value. Everything
else is left to the rebases, and all data must slide by one amount, so a v1 dylib has a single
writable segment, __DATA.

Oracles: the stream is decoded here by hand; the code is scanned with capstone (the scan of
test_split_seg_scan); llvm-objdump-22 reads the dylibs. The caches built from v1 inputs run
through the DyldExtractor, llvm-objdump, emulation and header checks of test_cache_build (keys
``x86_64-v1`` and ``x86_64-v1-opcodes`` of cache_fixtures.CACHES).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import objdump
import pytest
import test_split_seg_scan as scan
from cache_fixtures import CacheFactory
from conftest import python_module, tool
from linked_examples import NAMES, linked
from oracles import LC_SEGMENT_SPLIT_INFO, decode_split_seg_v1, load_command_payload, read_uleb

from dyldcache.builder.pipeline import BuildOptions, build_cache
from dyldcache.errors import LinkError
from dyldcache.examples import OBJ_DIR
from dyldcache.link.linker import LinkInput, LinkOptions, link
from dyldcache.macho.file import open_macho

FIXUPS = ("chained", "opcodes")


def personality_refs(path: Path, image: scan.Image) -> list[tuple[int, int]]:
    """(address, target) of each pc-relative personality pointer of the CIEs in __eh_frame
    (DWARF CFI: length, CIE id 0, version, augmentation "zP...", code/data alignment, return
    register, augmentation length, then the 'P' encoding byte and the pointer). The targets are
    checked against llvm-dwarfdump-22's "Personality Address"."""
    sect = next((s for s in image.sections if s.sectname == "__eh_frame"), None)
    if sect is None:
        return []
    data = image.data[sect.offset : sect.offset + sect.size]
    out, pos = [], 0
    while pos + 8 <= len(data):
        length, cie_id = struct.unpack_from("<II", data, pos)
        if length == 0:
            break
        start, pos = pos, pos + 4 + length
        if cie_id != 0:
            continue  # an FDE: its pc-relative fields stay within __TEXT
        at = start + 9
        aug = data[at : data.index(b"\0", at)].decode()
        at += len(aug) + 1
        if not aug.startswith("z") or "P" not in aug:
            continue
        _, at = read_uleb(data, at)  # code alignment
        _, at = read_uleb(data, at)  # data alignment (sleb: only skipped)
        at += 1  # return address register (version 1: one byte)
        _, at = read_uleb(data, at)  # augmentation length
        for c in aug[1:]:
            if c == "P":
                enc = data[at]
                assert enc & 0x7F == 0x1B, f"personality encoding {enc:#x} (want pcrel sdata4)"
                (disp,) = struct.unpack_from("<i", data, at + 1)
                out.append((sect.addr + at + 1, sect.addr + at + 1 + disp))
                break
            at += 1  # 'L' and 'R': one encoding byte each
    dump = subprocess.run(
        [tool("llvm-dwarfdump-22"), "--eh-frame", str(path)], capture_output=True, text=True, check=True
    ).stdout
    listed = sorted(
        int(line.split(":")[1], 16) for line in dump.splitlines() if "Personality Address:" in line
    )
    assert sorted(t for _, t in out) == listed
    return out


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    value, end = read_uleb(data, pos)
    bits = 7 * (end - pos)
    return (value - (1 << bits) if value & (1 << (bits - 1)) else value), end


def unwind_personality_refs(path: Path, image: scan.Image) -> list[tuple[int, int]]:
    """(address, target) of each entry of __unwind_info's personality array: 32-bit image offsets
    of GOT slots (compact unwind header: version, common encodings offset and count, personality
    array offset and count, ...). Checked against llvm-objdump-22 --unwind-info."""
    sect = next((s for s in image.sections if s.sectname == "__unwind_info"), None)
    if sect is None:
        return []
    _version, _ce_off, _ce_count, p_off, p_count = struct.unpack_from("<5I", image.data, sect.offset)
    values = struct.unpack_from(f"<{p_count}I", image.data, sect.offset + p_off)
    assert dict(enumerate(values, 1)) == objdump.unwind_info(path).personalities
    return [(sect.addr + p_off + 4 * i, v) for i, v in enumerate(values)]


def lsda_type_refs(path: Path, image: scan.Image, lsdas: set[int]) -> list[tuple[int, int]]:
    """(address, target) of the non-null pc-relative entries of each LSDA's type table (the
    Itanium C++ ABI LSDA: @LPStart encoding, @TType encoding and offset, call-site encoding and
    table, action table; type entry i sits i entries before the @TType base)."""
    out: list[tuple[int, int]] = []
    sect = next((s for s in image.sections if s.sectname == "__gcc_except_tab"), None)
    if sect is None:
        assert not lsdas
        return out

    def at(addr: int) -> int:
        return sect.offset + addr - sect.addr

    d = image.data
    for lsda in sorted(lsdas):
        pos = at(lsda)
        assert d[pos] == 0xFF, "an @LPStart"
        ttype_enc, pos = d[pos + 1], pos + 2
        if ttype_enc == 0xFF:
            continue
        assert ttype_enc & 0x7F == 0x1B, f"@TType encoding {ttype_enc:#x} (want pcrel sdata4)"
        ttype_off, pos = read_uleb(d, pos)
        base = pos + ttype_off
        cs_enc, pos = d[pos], pos + 1
        cs_len, pos = read_uleb(d, pos)
        actions_at, cs_end, actions = pos + cs_len, pos + cs_len, []
        while pos < cs_end:
            for _ in range(3):  # start, length, landing pad
                pos = read_uleb(d, pos)[1] if cs_enc == 0x01 else pos + 4
            action, pos = read_uleb(d, pos)
            if action:
                actions.append(actions_at + action - 1)
        filters = set()
        for a in actions:
            while True:
                flt, nxt_at = _sleb(d, a)
                filters.add(flt)
                nxt, _ = _sleb(d, nxt_at)
                if nxt == 0:
                    break
                a = nxt_at + nxt
        for i in range(1, max(filters, default=0) + 1):
            entry = base - 4 * i
            (disp,) = struct.unpack_from("<i", d, entry)
            if disp:
                addr = sect.addr + entry - sect.offset
                out.append((addr, addr + disp))
    return out


def lsda_addresses(path: Path) -> set[int]:
    """The LSDAs that compact unwind (llvm-objdump-22) and the FDEs (llvm-dwarfdump-22) name."""
    found = {lsda for _, lsda in objdump.unwind_info(path).lsdas}
    dump = subprocess.run(
        [tool("llvm-dwarfdump-22"), "--eh-frame", str(path)], capture_output=True, text=True, check=True
    ).stdout
    found |= {int(line.split(":")[1], 16) for line in dump.splitlines() if "LSDA Address:" in line}
    return found


def _payload(path: Path) -> bytes:
    raw = load_command_payload(path.read_bytes(), LC_SEGMENT_SPLIT_INFO)
    assert raw, f"{path} has no split seg info"
    return raw


def expected_v1(path: Path) -> list[tuple[int, int]]:
    """The (kind 1, offset) entries a v1 dylib needs, from the independent scans: every rel32 of
    the code and every pc-relative or image-relative 32-bit field of __eh_frame, the LSDAs and
    __unwind_info that reaches a segment other than __TEXT."""
    image = scan._image(path, "x86_64")
    refs = scan._scan_x86_64(image)
    assert not image.unknown
    text_end = next(s.vmaddr + s.vmsize for s in image.segments if s.name == "__TEXT")
    reach = [(r.at, r.target) for r in refs] + personality_refs(path, image)
    reach += unwind_personality_refs(path, image) + lsda_type_refs(path, image, lsda_addresses(path))
    return sorted({(1, at) for at, t in reach if image.segment(t) not in ("__TEXT", None) and at < text_end})


def check_v1(path: Path) -> list[tuple[int, int]]:
    """Assert the v1 stream of ``path`` is exactly what its code and tables need; returns it."""
    raw = _payload(path)
    assert raw[0] != 0x7F, "a v2 stream"
    entries = decode_split_seg_v1(raw)
    assert sorted(set(entries)) == expected_v1(path), path
    assert len(entries) == len(set(entries)), "a location is listed twice"
    ours = open_macho(path).split_seg
    assert ours is not None and ours.version == 1
    assert list(zip(ours.entries["kind"].tolist(), ours.entries["offset"].tolist(), strict=True)) == entries
    return entries


@pytest.mark.parametrize("fixups", FIXUPS)
@pytest.mark.parametrize("name", NAMES)
def test_v1_lists_every_code_reference_into_the_data(fixups: str, name: str) -> None:
    """Kind 1 at exactly the 32-bit fields of __TEXT that reach another segment; ours decodes the same."""
    python_module("capstone")
    entries = check_v1(linked("x86_64", fixups, split_seg=1).path(name))
    # pointers live in __DATA and are rebased: no kind 2 in __TEXT for these examples
    assert all(k == 1 for k, _ in entries)


def test_v1_examples_have_cross_segment_references() -> None:
    """The examples exercise v1: code reaching __DATA (GOT loads, data pointers)."""
    total = sum(
        len(decode_split_seg_v1(_payload(p))) for _, p in linked("x86_64", "chained", split_seg=1).items()
    )
    assert total >= 20


@pytest.mark.parametrize("fixups", FIXUPS)
@pytest.mark.parametrize("name", NAMES)
def test_v1_dylibs_have_one_writable_segment(fixups: str, name: str) -> None:
    path = linked("x86_64", fixups, split_seg=1).path(name)
    out = objdump.run_raw(path, "--private-headers", "--exports-trie", "--unwind-info")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    ph = objdump.private_headers(path)
    names = [s.name for s in ph.segments]
    assert "__DATA_CONST" not in names
    assert names[0] == "__TEXT" and names[-1] == "__LINKEDIT"
    got = [s for s in ph.sections if s.sectname == "__got"]
    assert all(s.segname == "__DATA" for s in got)
    # the v2 link of the same objects keeps its GOT read-only after fixups
    v2_sections = objdump.private_headers(linked("x86_64", fixups).path(name)).sections
    v2 = [s for s in v2_sections if s.sectname == "__got"]
    assert [s.segname for s in v2] == ["__DATA_CONST"] * len(got)


def test_v1_is_refused_for_arm64(tmp_path: Path) -> None:
    with pytest.raises(LinkError, match="x86_64"):
        link(
            LinkOptions(
                arch="arm64",
                output=str(tmp_path / "liba.dylib"),
                install_name="/usr/lib/liba.dylib",
                inputs=[LinkInput(str(OBJ_DIR / "arm64" / "liba.o"))],
                split_seg_version=1,
            )
        )
    assert not list(tmp_path.iterdir())


def test_v1_code_moves_with_the_data(cache_factory: CacheFactory) -> None:
    """In the cache each kind-1 displacement grew by how far __DATA moved relative to __TEXT."""
    from cache_fixtures import RawCache, input_segments

    built = cache_factory.build("x86_64-v1")
    raw = RawCache(built.main)
    moved = 0
    for name, _ in raw.images:
        path = Path(built.input_path(name))
        seg_in = {s.name: s for s in input_segments(path)}
        seg_out = {s.name: s for s in raw.segments(name)}
        delta = (seg_out["__DATA"].vmaddr - seg_in["__DATA"].vmaddr) - (
            seg_out["__TEXT"].vmaddr - seg_in["__TEXT"].vmaddr
        )
        data = path.read_bytes()
        for kind, off in decode_split_seg_v1(_payload(path)):
            assert kind == 1
            (before,) = struct.unpack_from("<i", data, seg_in["__TEXT"].fileoff + off)
            (after,) = struct.unpack("<i", raw.read(seg_out["__TEXT"].vmaddr + off, 4))
            assert after == before + delta, (name, hex(off))
            moved += delta != 0
    assert moved > 0, "no displacement had to change"


def _set_first_v1_kind(path: Path, kind: int) -> None:
    data = bytearray(path.read_bytes())
    off = 32
    for _ in range(struct.unpack_from("<I", data, 16)[0]):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == LC_SEGMENT_SPLIT_INFO:
            dataoff = struct.unpack_from("<I", data, off + 8)[0]
            assert data[dataoff] == 1
            data[dataoff] = kind
            path.write_bytes(bytes(data))
            return
        off += size
    raise AssertionError("no LC_SEGMENT_SPLIT_INFO")


def test_unsupported_v1_kind_evicts_the_dylib(cache_factory: CacheFactory, tmp_path: Path) -> None:
    """Kind 3 (an arm64 ADRP) in an x86_64 v1 dylib: evicted with the reason, the rest builds."""
    root = tmp_path / "root"
    shutil.copytree(cache_factory.root("x86_64", split_seg=1), root, symlinks=True)
    victim = "/usr/lib/libfxd.dylib"
    _set_first_v1_kind(root / victim.lstrip("/"), 3)
    out = str(tmp_path / "out")
    result = build_cache(
        BuildOptions(arch="x86_64", platform="macos", output_dir=out, root=str(root), jobs=1)
    )
    assert victim not in result.dylibs
    reasons = {e.path: e.reason for e in result.evictions}
    assert "split seg v1 kind 0x3" in reasons[victim]
    assert len(result.dylibs) == len(NAMES) - 1


def test_v1_values_must_end_inside_text() -> None:
    """A kind-1 value is 4 bytes and a kind-2 value 8: each must end within __TEXT (here 0x1000)."""
    from dyldcache.macho.split_seg import SPLIT_SEG_V1_DTYPE, unsupported_v1_entry

    def check(*rows: tuple[int, int]) -> str | None:
        return unsupported_v1_entry(np.array(list(rows), dtype=SPLIT_SEG_V1_DTYPE), 0x1000)

    assert check((1, 0xFFC), (2, 0xFF8), (4, 0x10)) is None
    assert check((1, 0xFFC), (2, 0xFFC)) == "split seg v1 location 0xffc is outside __TEXT"
    assert check((1, 0xFFD)) == "split seg v1 location 0xffd is outside __TEXT"
    assert check((1, 0x10), (3, 0x20), (1, 0x2000)) == (
        "split seg v1 kind 0x3 is not supported (only 1, 2 and 4, as x86_64 uses)"
    )
