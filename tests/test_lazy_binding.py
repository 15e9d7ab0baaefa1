"""Lazy binding (``-lazy_binding``, opcode fixups): how ld64 linked dylibs before chained fixups.

Each call to an import goes through a __stubs entry that jumps through a __la_symbol_ptr slot.
The slot starts at the import's __stub_helper entry (a rebase). That entry pushes or loads the
offset of the import's record in the lazy bind opcodes, then jumps to the helper header. The
header passes __dyld_private and jumps through the GOT slot bound to dyld_stub_binder
(mach-o/loader.h; docs/linker-notes.md, stubs). The cache builder binds every lazy pointer
ahead of time, after its rebase, and, like dyld-1162, zeroes the lazy bind range of the cached
LC_DYLD_INFO.

Oracles: llvm-objdump-22 (tables, indirect symbols), capstone (the stub and helper code), the
lazy bind records decoded by tests/emulator.py's own decoder, and emulation in which our
dyld_stub_binder hook really binds on the first call (tests/emulator.py, lazy=True). The
caches ``x86_64-lazy`` and ``arm64-lazy`` of cache_fixtures.CACHES also run through the
DyldExtractor, emulation, slid-pointer and format checks of test_cache_build.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import objdump
import pytest
import test_split_seg_scan as scan
from cache_fixtures import CacheFactory, RawCache
from conftest import FIXTURES, python_module, tool
from linked_examples import NAMES, linked
from test_split_seg_v1 import check_v1

from dyldcache.errors import LinkError
from dyldcache.examples import EXAMPLE_DYLIBS, OBJ_DIR
from dyldcache.link.linker import LinkInput, LinkOptions, link
from dyldcache.macho.tbd import format_tbd

sys.path.insert(0, str(FIXTURES))
from native_harness import expected_results, load_calls

#: (arch, split seg version) of the lazily bound example sets (all opcode fixups)
LAZY = [("x86_64", 1), ("x86_64", 2), ("arm64", 2)]
LAZY_IDS = [f"{a}-v{v}" for a, v in LAZY]
INSTALL_NAME = {d.name: d.install_name for d in EXAMPLE_DYLIBS}


def _path(arch: str, version: int, name: str) -> Path:
    return linked(arch, "opcodes", split_seg=version, lazy=True).path(name)


def _disasm(arch: str, code: bytes, addr: int) -> list[object]:
    import capstone

    if arch == "x86_64":
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    else:
        md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md.detail = True
    return list(md.disasm(code, addr))


def _section_bytes(path: Path, sectname: str) -> tuple[int, bytes]:
    sect = next(s for s in objdump.private_headers(path).sections if s.sectname == sectname)
    data = path.read_bytes()
    return sect.addr, data[sect.offset : sect.offset + sect.size]


def _u64_at(path: Path, address: int) -> int:
    ph = objdump.private_headers(path)
    seg = next(s for s in ph.segments if s.vmaddr <= address < s.vmaddr + s.filesize)
    return int(struct.unpack_from("<Q", path.read_bytes(), seg.fileoff + address - seg.vmaddr)[0])


def _arm64_pair(insns: list[object], i: int) -> int:
    """The address an ADRP at ``i`` and the ADD/LDR after it reach."""
    adrp, use = insns[i], insns[i + 1]
    assert adrp.mnemonic == "adrp", adrp.mnemonic  # type: ignore[attr-defined]
    page = adrp.operands[1].imm  # type: ignore[attr-defined]
    if use.mnemonic == "add":  # type: ignore[attr-defined]
        return int(page + use.operands[2].imm)  # type: ignore[attr-defined]
    assert use.mnemonic == "ldr", use.mnemonic  # type: ignore[attr-defined]
    return int(page + use.operands[1].mem.disp)  # type: ignore[attr-defined]


def _lazy_bind_stream(path: Path) -> tuple[bytes, list[int]]:
    """The lazy bind opcodes of LC_DYLD_INFO_ONLY and the vmaddr of each segment."""
    data = path.read_bytes()
    ncmds = struct.unpack_from("<I", data, 16)[0]
    off, stream, segs = 32, b"", []
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x19:
            segs.append(struct.unpack_from("<Q", data, off + 24)[0])
        elif cmd == 0x80000022:
            lazy_off, lazy_size = struct.unpack_from("<II", data, off + 32)
            stream = data[lazy_off : lazy_off + lazy_size]
        off += size
    return stream, segs


# ---------------------------------------------------------------------------------------------
# the linked dylibs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("arch", "version"), LAZY, ids=LAZY_IDS)
def test_objdump_reads_lazy_dylibs(arch: str, version: int, name: str) -> None:
    out = objdump.run_raw(
        _path(arch, version, name),
        "--private-headers", "--lazy-bind", "--bind", "--rebase", "--indirect-symbols", "--exports-trie",
    )  # fmt: skip
    assert out.returncode == 0 and out.stderr == "", out.stderr


@pytest.mark.parametrize("name", [n for n in NAMES if n != "libsystem"])
@pytest.mark.parametrize(("arch", "version"), LAZY, ids=LAZY_IDS)
def test_every_stub_reaches_its_lazy_bind(arch: str, version: int, name: str) -> None:
    """stub -> __la_symbol_ptr slot -> (rebase) helper entry -> record offset -> lazy bind of that
    slot to the stub's own symbol; helper header -> __dyld_private and dyld_stub_binder's GOT."""
    python_module("capstone")
    from emulator import _lazy_record

    path = _path(arch, version, name)
    stub_syms = {a: sym for a, _, sym in objdump.indirect_symbols(path)[("__TEXT", "__stubs")]}
    lazy = {addr: (lib, sym) for _, sect, addr, lib, sym in objdump.lazy_bind_table(path)}
    assert lazy, "no lazy binds"
    rebased = {addr for _, _, addr, _ in objdump.rebase_table(path)}
    binds = {b.address: b.symbol for b in objdump.bind_table(path)}
    sections = {s.sectname: s for s in objdump.private_headers(path).sections}
    helper, data = sections["__stub_helper"], sections["__data"]
    stream, seg_addrs = _lazy_bind_stream(path)

    # stubs: each jumps through the slot that is lazily bound to its symbol
    stubs_addr, stubs_code = _section_bytes(path, "__stubs")
    insns = _disasm(arch, stubs_code, stubs_addr)
    slots = {}
    if arch == "x86_64":
        for insn in insns:
            assert insn.mnemonic == "jmp"  # type: ignore[attr-defined]
            slots[insn.address] = insn.address + insn.size + insn.operands[0].mem.disp  # type: ignore[attr-defined]
    else:
        for i in range(0, len(insns), 3):
            assert insns[i + 2].mnemonic == "br"  # type: ignore[attr-defined]
            slots[insns[i].address] = _arm64_pair(insns, i)  # type: ignore[attr-defined]
    lazy_stubs = {a: slot for a, slot in slots.items() if slot in lazy}
    assert len(set(lazy_stubs.values())) == len(lazy_stubs) == len(lazy), "one slot per lazy stub"
    for stub, slot in lazy_stubs.items():
        assert lazy[slot][1] == stub_syms[stub], (hex(stub), lazy[slot], stub_syms[stub])

    # helper entries: each slot starts at one, which names the slot's record
    helper_addr, helper_code = _section_bytes(path, "__stub_helper")
    header = 16 if arch == "x86_64" else 24
    entry_size = 10 if arch == "x86_64" else 12
    assert len(helper_code) == header + entry_size * len(lazy)
    for slot, (_, sym) in lazy.items():
        assert slot in rebased, f"lazy pointer {slot:#x} is not rebased"
        entry = _u64_at(path, slot)
        assert helper.addr + header <= entry < helper.addr + helper.size
        assert (entry - helper.addr - header) % entry_size == 0
        code = helper_code[entry - helper_addr : entry - helper_addr + entry_size]
        if arch == "x86_64":
            push, jmp = _disasm(arch, code, entry)
            assert push.mnemonic == "push" and jmp.mnemonic == "jmp"  # type: ignore[attr-defined]
            offset = push.operands[0].imm  # type: ignore[attr-defined]
            assert jmp.operands[0].imm == helper.addr  # type: ignore[attr-defined]
        else:
            ldr, b = _disasm(arch, code[:8], entry)
            assert (ldr.mnemonic, ldr.op_str) == ("ldr", "w16, #" + hex(entry + 8))  # type: ignore[attr-defined]
            assert b.mnemonic == "b" and b.operands[0].imm == helper.addr  # type: ignore[attr-defined]
            offset = struct.unpack_from("<I", code, 8)[0]
        seg, seg_off, _ordinal, record_sym = _lazy_record(stream, offset)
        assert (seg_addrs[seg] + seg_off, record_sym) == (slot, sym)

    # the header
    code = _disasm(arch, helper_code[:header], helper_addr)
    if arch == "x86_64":
        lea, push, jmp, nop = code
        assert (lea.mnemonic, push.op_str, jmp.mnemonic, nop.mnemonic) == ("lea", "r11", "jmp", "nop")  # type: ignore[attr-defined]
        private = lea.address + lea.size + lea.operands[1].mem.disp  # type: ignore[attr-defined]
        binder_slot = jmp.address + jmp.size + jmp.operands[0].mem.disp  # type: ignore[attr-defined]
    else:
        private = _arm64_pair(code, 0)
        assert (code[2].mnemonic, code[2].op_str) == ("stp", "x16, x17, [sp, #-0x10]!")  # type: ignore[attr-defined]
        binder_slot = _arm64_pair(code, 3)
        assert code[5].mnemonic == "br"  # type: ignore[attr-defined]
    assert data.addr <= private < data.addr + data.size and private % 8 == 0
    assert binds[binder_slot] == "dyld_stub_binder"


@pytest.mark.parametrize(("arch", "version"), LAZY, ids=LAZY_IDS)
def test_split_seg_covers_the_stub_helpers(arch: str, version: int) -> None:
    """v2: every reference of the code, the helpers and the lazy pointers has its entry (the scan of
    test_split_seg_scan); v1: every 32-bit field of __TEXT reaching __DATA is listed."""
    python_module("capstone")
    for name in NAMES:
        path = _path(arch, version, name)
        if version == 1:
            check_v1(path)
            continue
        image = scan._image(path, arch)
        refs = scan.expected_refs(image, "opcodes")
        problems = scan.check(image, scan._entries(path), refs)
        assert not problems, f"{path}:\n" + "\n".join(problems[:40])
        helper = next((s for s in image.sections if s.sectname == "__stub_helper"), None)
        if helper is not None and arch == "arm64":
            # the helper entries' record offsets are data (.long), which capstone cannot decode
            literals = {helper.addr + 24 + 12 * i + 8 for i in range((helper.size - 24) // 12)}
            image.unknown = [a for a in image.unknown if a not in literals]
        assert not image.unknown, [hex(a) for a in image.unknown]
        if helper is not None:
            pointers = {r.at for r in refs if r.kind == scan.POINTER_64}
            lazy = {addr for _, _, addr, _, _ in objdump.lazy_bind_table(path)}
            assert lazy <= pointers, "lazy pointers need POINTER_64 entries (they are rebased)"


@pytest.mark.parametrize("seed", (1, 20240517))
@pytest.mark.parametrize(("arch", "version"), LAZY, ids=LAZY_IDS)
def test_calls_bind_lazily_and_match_native(arch: str, version: int, seed: int) -> None:
    """Every call of expected.json, with lazy pointers bound only when first called through the
    helpers (our dyld_stub_binder hook), returns what the native build does."""
    python_module("unicorn")
    python_module("lief")
    tool("gcc")
    tool("objcopy")
    from emulator import load_standalone

    native = expected_results()
    s = linked(arch, "opcodes", split_seg=version, lazy=True)
    machine, images = load_standalone([str(p) for p in s.paths], arch, seed, lazy=True)
    wrong = []
    for call in load_calls():
        fn = images[INSTALL_NAME[call.dylib]].exports[call.symbol]
        got = machine.call_int(fn, *call.args)
        if got != native[call.key]:
            wrong.append((call.key, got, native[call.key]))
    assert not wrong
    lazy_slots = sum(len(objdump.lazy_bind_table(p)) for p in s.paths)
    # each slot is bound at most once (after that the stub jumps straight to the target)
    assert 10 <= machine.lazy_binds <= lazy_slots


def test_lazy_binding_needs_opcodes_and_dyld_stub_binder(tmp_path: Path) -> None:
    obj = OBJ_DIR / "arm64"
    with pytest.raises(LinkError, match="opcode"):
        link(
            LinkOptions(
                arch="arm64",
                output=str(tmp_path / "a.dylib"),
                install_name="/usr/lib/libfxa.dylib",
                inputs=[LinkInput(str(obj / "liba.o"))],
                lazy_binding=True,
            )
        )
    # a libSystem stub without dyld_stub_binder: liba's calls cannot be lazy
    system = linked("arm64", "opcodes").path("libsystem")
    from dyldcache.macho.file import open_macho

    names = sorted(e.name for e in open_macho(system).exports if e.name != "dyld_stub_binder")
    tbd = tmp_path / "libSystem.tbd"
    tbd.write_text(format_tbd("/usr/lib/libSystem.B.dylib", ["arm64-macos"], names), encoding="utf-8")
    with pytest.raises(LinkError, match="dyld_stub_binder"):
        link(
            LinkOptions(
                arch="arm64",
                output=str(tmp_path / "a.dylib"),
                install_name="/usr/lib/libfxa.dylib",
                inputs=[LinkInput(str(obj / "liba.o")), LinkInput(str(tbd))],
                fixups="opcodes",
                lazy_binding=True,
            )
        )
    assert not list(tmp_path.glob("*.dylib"))


# ---------------------------------------------------------------------------------------------
# in the cache


@pytest.mark.parametrize("key", ["x86_64-lazy", "arm64-lazy"])
def test_cached_dyld_info_keeps_only_the_exports(cache_factory: CacheFactory, key: str) -> None:
    """dyld-1162 (NewAdjustDylibSegments, case LC_DYLD_INFO) zeroes rebase, bind, weak bind and
    lazy bind ranges in cached dylibs: every pointer is fixed up in the cache already."""
    built = cache_factory.build(key)
    raw = RawCache(built.main)
    for name, _ in raw.images:
        body = next(b for c, b in raw.load_commands(name) if c == 0x80000022)
        fields = struct.unpack_from("<10I", body, 8)
        assert fields[:8] == (0,) * 8, name
        assert fields[8] and fields[9], f"{name}: no exports trie"
