"""Run code from our outputs in unicorn: the semantic check that binds, rebases and split-seg
adjustments are right.

Deliberately independent of dyldcache's own readers: standalone dylibs are loaded with LIEF
(segments, rebases, binds, exports), and caches with the small readers below, written
from the format rules (docs/validators.md Appendix A).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import unicorn as uc
from oracles import read_uleb, trie_lookup
from unicorn import arm64_const as A
from unicorn import x86_const as X

PAGE = 0x4000
SENTINEL = 0xDEAD0000  # return address nobody maps: emulation stops there
STACK_TOP = 0x7000_0000_0000
STACK_SIZE = 0x100000
MAX_INSNS = 2_000_000
#: _COMM_PAGE_START_ADDRESS of a 64-bit process: (x86_64, arm64)
COMMPAGE = {False: 0x7FFFFFE00000, True: 0x0000000FFFFFC000}
#: thread-specific data of the one emulated thread
TSD_BASE = 0x7100_0000_0000


def _round_down(x: int) -> int:
    return x & ~(PAGE - 1)


def _round_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


class EmulationError(AssertionError):
    pass


class Machine:
    """A unicorn CPU with a stack, able to call C functions and read memory."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        if arch.startswith("arm64"):
            self.mu = uc.Uc(uc.UC_ARCH_ARM64, uc.UC_MODE_ARM)
            if arch == "arm64e":
                # the MAX cpu has pointer authentication; with no keys set, auth is a no-op
                self.mu.ctl_set_cpu_model(A.UC_CPU_ARM64_MAX)
        else:
            self.mu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
        self.mapped: list[tuple[int, int]] = []
        self.map(STACK_TOP - STACK_SIZE, STACK_SIZE)
        # What a Darwin process has before any library code runs, and real system code reads:
        # the commpage (CPU capabilities, time base; all zero here, so code takes its portable
        # paths), and thread-specific data reached through GS (x86_64) or TPIDRRO_EL0 (arm64),
        # where libc finds its per-thread locale (zero: the global one).
        self.map(COMMPAGE[arch.startswith("arm64")], PAGE)
        # (a page either side: a key that libc's initializer never set is -1)
        self.map(TSD_BASE - PAGE, 2 * PAGE)
        if arch.startswith("arm64"):
            self.mu.reg_write(A.UC_ARM64_REG_TPIDRRO_EL0, TSD_BASE)
        else:
            self.mu.reg_write(X.UC_X86_REG_GS_BASE, TSD_BASE)
        #: binds made by the lazy binder hook (load_standalone(lazy=True))
        self.lazy_binds = 0

    def map(self, addr: int, size: int) -> None:
        lo, hi = _round_down(addr), _round_up(addr + size)
        # skip pages already mapped (segments of one image can share a 16 KiB page)
        for a in range(lo, hi, PAGE):
            if any(s <= a < e for s, e in self.mapped):
                continue
            self.mu.mem_map(a, PAGE, uc.UC_PROT_ALL)
            self.mapped.append((a, a + PAGE))

    def write(self, addr: int, data: bytes) -> None:
        self.mu.mem_write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.mu.mem_read(addr, size))

    def read_u64(self, addr: int) -> int:
        return int(struct.unpack("<Q", self.read(addr, 8))[0])

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def call(self, fn: int, *args: int) -> int:
        """Call ``fn`` with integer arguments; returns the 64-bit return register."""
        sp = STACK_TOP - 0x1000
        mu = self.mu
        try:
            if self.arch.startswith("arm64"):
                for i, a in enumerate(args):
                    mu.reg_write(A.UC_ARM64_REG_X0 + i, a & 0xFFFFFFFFFFFFFFFF)
                mu.reg_write(A.UC_ARM64_REG_SP, sp)
                mu.reg_write(A.UC_ARM64_REG_LR, SENTINEL)
                mu.emu_start(fn, SENTINEL, count=MAX_INSNS)
                if mu.reg_read(A.UC_ARM64_REG_PC) != SENTINEL:
                    raise EmulationError(f"call of {fn:#x} did not return within {MAX_INSNS} instructions")
                return int(mu.reg_read(A.UC_ARM64_REG_X0))
            regs = [
                X.UC_X86_REG_RDI,
                X.UC_X86_REG_RSI,
                X.UC_X86_REG_RDX,
                X.UC_X86_REG_RCX,
                X.UC_X86_REG_R8,
                X.UC_X86_REG_R9,
            ]
            for r, a in zip(regs, args, strict=False):
                mu.reg_write(r, a & 0xFFFFFFFFFFFFFFFF)
            sp = (sp & ~0xF) - 8
            mu.mem_write(sp, struct.pack("<Q", SENTINEL))
            mu.reg_write(X.UC_X86_REG_RSP, sp)
            mu.emu_start(fn, SENTINEL, count=MAX_INSNS)
            if mu.reg_read(X.UC_X86_REG_RIP) != SENTINEL:
                raise EmulationError(f"call of {fn:#x} did not return within {MAX_INSNS} instructions")
            return int(mu.reg_read(X.UC_X86_REG_RAX))
        except uc.UcError as exc:
            pc = mu.reg_read(A.UC_ARM64_REG_PC if self.arch.startswith("arm64") else X.UC_X86_REG_RIP)
            raise EmulationError(f"call of {fn:#x} faulted at pc {pc:#x}: {exc}") from None

    def call_int(self, fn: int, *args: int) -> int:
        """Call a C function returning ``int``: the low 32 bits, sign-extended."""
        r = self.call(fn, *args) & 0xFFFFFFFF
        return r - (1 << 32) if r & 0x80000000 else r

    def call_double(self, fn: int, *args: float) -> float:
        """Call a C function of ``double`` arguments returning ``double`` (the first arguments go
        in XMM0.. on x86_64, D0.. on arm64, as both ABIs say)."""
        arm = self.arch.startswith("arm64")
        regs = [A.UC_ARM64_REG_D0 + i if arm else X.UC_X86_REG_XMM0 + i for i in range(len(args))]
        for reg, value in zip(regs, args, strict=True):
            self.mu.reg_write(reg, struct.unpack("<Q", struct.pack("<d", value))[0])
        self.call(fn)
        raw = self.mu.reg_read(A.UC_ARM64_REG_D0 if arm else X.UC_X86_REG_XMM0)
        return float(struct.unpack("<d", struct.pack("<Q", int(raw) & 0xFFFFFFFFFFFFFFFF))[0])


# ---------------------------------------------------------------------------------------------
# standalone dylibs, loaded with LIEF


@dataclass
class LoadedImage:
    install_name: str
    base: int
    #: symbol -> address (absolute, after the slide)
    exports: dict[str, int] = field(default_factory=dict)
    #: symbol -> (install name of the dylib it is re-exported from, name there)
    reexports: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: install names of re-exported dylibs (LC_REEXPORT_DYLIB)
    reexported_dylibs: list[str] = field(default_factory=list)
    initializers: list[int] = field(default_factory=list)
    #: (start, end) of the image's mapped segments (absolute)
    span: tuple[int, int] = (0, 0)
    #: LC_DYLD_INFO lazy bind opcodes, segment vmaddrs and dependent install names by ordinal
    lazy_opcodes: bytes = b""
    segments: list[int] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)


def _lief():
    import lief

    lief.logging.disable()
    return lief


def _lazy_record(opcodes: bytes, offset: int) -> tuple[int, int, int, str]:
    """(segment, offset, ordinal, symbol) of the lazy bind record at ``offset`` (the opcodes of
    mach-o/loader.h, as dyld's lazy binder runs them: state until DO_BIND)."""
    pos, seg, seg_off, ordinal, name = offset, -1, 0, 0, ""
    while True:
        op, imm = opcodes[pos] & 0xF0, opcodes[pos] & 0x0F
        pos += 1
        if op == 0x10:  # SET_DYLIB_ORDINAL_IMM
            ordinal = imm
        elif op == 0x20:  # SET_DYLIB_ORDINAL_ULEB
            ordinal, pos = read_uleb(opcodes, pos)
        elif op == 0x30:  # SET_DYLIB_SPECIAL_IMM
            ordinal = imm - 16 if imm else 0
        elif op == 0x40:  # SET_SYMBOL_TRAILING_FLAGS_IMM
            end = opcodes.index(b"\0", pos)
            name, pos = opcodes[pos:end].decode(), end + 1
        elif op == 0x70:  # SET_SEGMENT_AND_OFFSET_ULEB
            seg = imm
            seg_off, pos = read_uleb(opcodes, pos)
        elif op == 0x90:  # DO_BIND
            return seg, seg_off, ordinal, name
        else:
            raise EmulationError(f"lazy bind opcode {op | imm:#x} at {pos - 1:#x} in a lazy record")


_LIEF_CPU = {"x86_64": "X86_64", "arm64": "ARM64", "arm64e": "ARM64"}


def _slice(lief: Any, fat: Any, arch: str, path: str) -> Any:
    """The ``arch`` slice of a parsed (fat or thin) file, owned by the caller."""
    b = fat.take(getattr(lief.MachO.Header.CPU_TYPE, _LIEF_CPU[arch]))
    if b is None:
        raise EmulationError(f"{path}: no {arch} slice")
    return b


def load_standalone(
    paths: list[str], arch: str, seed: int, lazy: bool = False, *, partial: bool = False
) -> tuple[Machine, dict[str, LoadedImage]]:
    """Map each dylib at a random base (a fat file: its ``arch`` slice), apply its fixups (binds
    resolved to the others), run initializers. Returns the machine and the images by install name.

    With ``partial`` (metadata readers: a few images of a root, not its whole closure), a bind to
    an image not given is null and no initializer runs.

    With ``lazy``, lazy binds are left to a dyld_stub_binder of ours: the lazy pointers keep
    their rebased __stub_helper targets, and a hook on each dyld_stub_binder export does what
    dyld's does (the record offset and the image's __dyld_private are on the stack), so every
    first call of an import really runs through the image's stubs and stub helper.
    ``Machine.lazy_binds`` counts the binds it made."""
    lief = _lief()
    rng = random.Random(seed)
    m = Machine(arch)
    images: dict[str, LoadedImage] = {}
    parsed = []
    for i, p in enumerate(paths):
        fat = lief.MachO.parse(p)
        if fat is None:
            raise EmulationError(f"LIEF cannot parse {p}")
        b = _slice(lief, fat, arch, p)
        base = 0x1_0000_0000 + i * 0x1000_0000 + rng.randrange(1, 0x400) * PAGE
        ids = [lib.name for lib in b.libraries if lib.command == lief.MachO.LoadCommand.TYPE.ID_DYLIB]
        name = ids[0] if ids else p
        img = LoadedImage(name, base)
        mapped = [s for s in b.segments if s.virtual_size]
        img.span = (
            base + min(s.virtual_address for s in mapped),
            base + max(s.virtual_address + s.virtual_size for s in mapped),
        )
        img.segments = [s.virtual_address for s in b.segments]
        id_dylib = lief.MachO.LoadCommand.TYPE.ID_DYLIB
        img.dependents = [lib.name for lib in b.libraries if lib.command != id_dylib]
        if b.has_dyld_info:
            img.lazy_opcodes = bytes(b.dyld_info.lazy_bind_opcodes)
        for seg in b.segments:
            if seg.virtual_size == 0:
                continue
            m.map(base + seg.virtual_address, seg.virtual_size)
            content = bytes(seg.content)
            if content:
                m.write(base + seg.virtual_address, content[: seg.virtual_size])
        for lib in b.libraries:
            if lib.command == lief.MachO.LoadCommand.TYPE.REEXPORT_DYLIB:
                img.reexported_dylibs.append(lib.name)
        for sym in b.exported_symbols:
            info = sym.export_info
            flags = int(info.flags) if info is not None else 0
            if flags & 0x08:  # EXPORT_SYMBOL_FLAGS_REEXPORT
                lib = info.alias_library.name if info.alias_library is not None else ""
                alias = info.alias.name if info.alias is not None and info.alias.name else sym.name
                img.reexports[sym.name] = (lib, alias)
            elif flags & 0x03 == 0x02:  # EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE
                img.exports[sym.name] = info.address
            else:
                img.exports[sym.name] = base + (info.address if info is not None else sym.value)
        images[name] = img
        parsed.append((b, img))

    def lookup(dylib: str, symbol: str, depth: int = 0) -> int | None:
        img = images.get(dylib)
        if img is None or depth > 8:
            return None
        if symbol in img.exports:
            return img.exports[symbol]
        if symbol in img.reexports:
            lib, name = img.reexports[symbol]
            return lookup(lib, name, depth + 1)
        for sub in img.reexported_dylibs:
            found = lookup(sub, symbol, depth + 1)
            if found is not None:
                return found
        return None

    for b, img in parsed:
        base = img.base
        for r in b.relocations:
            if type(r).__name__ == "RelocationFixup":
                m.write_u64(base + r.address, base + r.target)
            elif type(r).__name__ == "RelocationDyld":
                m.write_u64(base + r.address, base + m.read_u64(base + r.address))
        for bi in b.bindings:
            sym = bi.symbol.name
            ordinal = getattr(bi, "library_ordinal", None)
            # LIEF keeps a chained bind's inline addend apart from its import's addend
            addend = bi.addend + (bi.sign_extended_addend if type(bi).__name__ == "ChainedBindingInfo" else 0)
            if lazy and str(getattr(bi, "binding_class", "")).endswith("LAZY"):
                continue  # left to the stub binder
            if str(getattr(bi, "binding_class", "")).endswith("WEAK"):
                # weak-bind table (coalescing): the first image defining the symbol wins;
                # when none does, the location keeps its rebased value
                winner = next((i.exports[sym] for i in images.values() if sym in i.exports), None)
                if winner is not None:
                    m.write_u64(base + bi.address, winner + addend)
                continue
            if bi.has_library:
                value = lookup(bi.library.name, sym)
            elif ordinal == -3:  # weak lookup: first image that defines it, in load order
                value = next((i.exports[sym] for i in images.values() if sym in i.exports), None)
            else:
                value = None
            if value is None:
                if not getattr(bi, "weak_import", False) and not partial:
                    raise EmulationError(f"{img.install_name}: cannot bind {sym} at {bi.address:#x}")
                value = 0  # a missing weak import is null, whatever its addend
            else:
                value += addend
            m.write_u64(base + bi.address, value)
        for sect in b.sections:
            if sect.type == lief.MachO.Section.TYPE.MOD_INIT_FUNC_POINTERS:
                for k in range(0, sect.size, 8):
                    img.initializers.append(m.read_u64(base + sect.virtual_address + k))
            elif sect.type == lief.MachO.Section.TYPE.INIT_FUNC_OFFSETS:
                for k in range(0, sect.size, 4):
                    off = struct.unpack("<I", m.read(base + sect.virtual_address + k, 4))[0]
                    img.initializers.append(base + off)
    if lazy:
        _install_stub_binder(m, images, lookup)
    # dependencies were listed first, so running initializers in load order is bottom-up
    for _, img in [] if partial else parsed:
        for fn in img.initializers:
            m.call(fn)
    return m, images


def _install_stub_binder(
    m: Machine, images: dict[str, LoadedImage], lookup: Callable[[str, str], int | None]
) -> None:
    """Hook every dyld_stub_binder export: bind the lazy pointer the pushed record names, then
    continue at the bound function as if the stub had jumped there directly."""
    mu = m.mu
    arm = m.arch.startswith("arm64")

    def binder(mu: uc.Uc, _address: int, _size: int, _data: object) -> None:
        if arm:
            sp = mu.reg_read(A.UC_ARM64_REG_SP)
            offset, private = struct.unpack("<QQ", m.read(sp, 16))  # stp x16, x17, [sp, #-16]!
            new_sp = sp + 16
        else:
            sp = mu.reg_read(X.UC_X86_REG_RSP)
            private, offset = struct.unpack("<QQ", m.read(sp, 16))  # push offset; push %r11
            new_sp = sp + 16
        img = next((i for i in images.values() if i.span[0] <= private < i.span[1]), None)
        if img is None:
            raise EmulationError(f"dyld_stub_binder: __dyld_private {private:#x} is in no image")
        seg, seg_off, ordinal, name = _lazy_record(img.lazy_opcodes, offset & 0xFFFFFFFF)
        if not 1 <= ordinal <= len(img.dependents):
            raise EmulationError(f"{img.install_name}: lazy bind of {name} with ordinal {ordinal}")
        target = lookup(img.dependents[ordinal - 1], name)
        if target is None:
            raise EmulationError(f"{img.install_name}: lazy bind of {name}: not found")
        m.write_u64(img.base + img.segments[seg] + seg_off, target)
        m.lazy_binds += 1
        if arm:
            mu.reg_write(A.UC_ARM64_REG_SP, new_sp)
            mu.reg_write(A.UC_ARM64_REG_PC, target)
        else:
            mu.reg_write(X.UC_X86_REG_RSP, new_sp)
            mu.reg_write(X.UC_X86_REG_RIP, target)

    for img in images.values():
        addr = img.exports.get("dyld_stub_binder")
        if addr is not None:
            mu.hook_add(uc.UC_HOOK_CODE, binder, begin=addr, end=addr)


# ---------------------------------------------------------------------------------------------
# caches: an independent reader (format rules of docs/cache-format.md, validators.md App. A)


def _u32(b: bytes, o: int) -> int:
    return int(struct.unpack_from("<I", b, o)[0])


@dataclass
class CacheFileView:
    path: str
    data: bytes
    #: (address, size, file offset, slide info offset, slide info size)
    mappings: list[tuple[int, int, int, int, int]]


def _cache_file(path: str) -> CacheFileView:
    with open(path, "rb") as f:
        d = f.read()
    if not d.startswith(b"dyld_v1"):
        raise EmulationError(f"{path}: not a dyld cache")
    moff, mcount = struct.unpack_from("<II", d, 0x10)
    maps = []
    if moff > 0x138:
        wo, wc = struct.unpack_from("<II", d, 0x138)
        for i in range(wc):
            a, s, fo, so, ss, _fl, _mx, _ip = struct.unpack_from("<6Q2I", d, wo + 56 * i)
            maps.append((a, s, fo, so, ss))
    else:
        for i in range(mcount):
            a, s, fo, _mx, _ip = struct.unpack_from("<3Q2I", d, moff + 32 * i)
            maps.append((a, s, fo, 0, 0))
    return CacheFileView(path, d, maps)


def cache_files(main_path: str) -> list[CacheFileView]:
    main = _cache_file(main_path)
    files = [main]
    moff = _u32(main.data, 0x10)
    if moff > 0x188:
        sc_off, sc_count = struct.unpack_from("<II", main.data, 0x188)
        for i in range(sc_count):
            if moff > 0x1C8:
                raw = main.data[sc_off + 56 * i + 24 : sc_off + 56 * i + 56]
                suffix = raw.split(b"\0")[0].decode()
            else:
                suffix = f".{i + 1}"
            files.append(_cache_file(main_path + suffix))
    return files


def _slide_mapping(m: Machine, f: CacheFileView, mapping: tuple[int, int, int, int, int], slide: int) -> None:
    addr, _size, _fo, so, ss = mapping
    if not ss:
        return
    d = f.data
    ver = _u32(d, so)
    base_va = addr + slide
    if ver == 2:
        _, psz, ps_off, ps_cnt, pe_off, _pe_cnt, dmask, vadd = struct.unpack_from("<6I2Q", d, so)
        shift = (dmask & -dmask).bit_length() - 1 - 2

        def chain(page_va: int, off: int) -> None:
            while True:
                raw = m.read_u64(page_va + off)
                delta = (raw & dmask) >> shift
                val = raw & ~dmask & 0xFFFFFFFFFFFFFFFF
                if val:
                    val += vadd + slide
                m.write_u64(page_va + off, val)
                if delta == 0:
                    return
                off += delta

        for p in range(ps_cnt):
            st = struct.unpack_from("<H", d, so + ps_off + 2 * p)[0]
            if st == 0x4000:
                continue
            if st & 0x8000:
                j = st & 0x3FFF
                while True:
                    e = struct.unpack_from("<H", d, so + pe_off + 2 * j)[0]
                    chain(base_va + p * psz, (e & 0x3FFF) * 4)
                    if e & 0x8000:
                        break
                    j += 1
            else:
                chain(base_va + p * psz, st * 4)
    elif ver in (3, 5):
        if ver == 3:
            _, psz, ps_cnt, _pad, value_add = struct.unpack_from("<4IQ", d, so)
        else:
            _, psz, ps_cnt, _pad, value_add = struct.unpack_from("<4IQ", d, so)
        for p in range(ps_cnt):
            st = struct.unpack_from("<H", d, so + 24 + 2 * p)[0]
            if st == 0xFFFF:
                continue
            va = base_va + p * psz + st
            while True:
                raw = m.read_u64(va)
                if ver == 3:
                    delta = ((raw >> 51) & 0x7FF) * 8
                    if raw >> 63:
                        val = (raw & 0xFFFFFFFF) + value_add + slide
                    else:
                        v51 = raw & 0x7FFFFFFFFFFFF
                        val = (((v51 & 0x0007F80000000000) << 13) | (v51 & 0x000007FFFFFFFFFF)) + slide
                else:
                    delta = ((raw >> 52) & 0x7FF) * 8
                    val = (raw & 0x3FFFFFFFF) + value_add + slide
                    if not raw >> 63:
                        val |= ((raw >> 34) & 0xFF) << 56
                m.write_u64(va, val)
                if delta == 0:
                    break
                va += delta
    else:
        raise EmulationError(f"{f.path}: slide info version {ver} unknown to the emulator")


@dataclass
class LoadedCache:
    machine: Machine
    slide: int
    #: install name -> unslid mach header address
    images: dict[str, int]

    def header_bytes(self, name: str) -> tuple[int, bytes]:
        base = self.images[name] + self.slide
        hdr = self.machine.read(base, 32)
        sizeofcmds = _u32(hdr, 20)
        return base, self.machine.read(base, 32 + sizeofcmds)

    def _commands(self, name: str) -> list[tuple[int, bytes]]:
        _, raw = self.header_bytes(name)
        ncmds = _u32(raw, 16)
        out = []
        off = 32
        for _ in range(ncmds):
            cmd, size = struct.unpack_from("<II", raw, off)
            out.append((cmd, raw[off : off + size]))
            off += size
        return out

    def lookup(self, name: str, symbol: str) -> int | None:
        """Walk the image's export trie (read from emulator memory); returns the slid address."""
        base = self.images[name] + self.slide
        linkedit = trie = None
        for cmd, body in self._commands(name):
            if cmd == 0x19 and body[8:24].rstrip(b"\0") == b"__LINKEDIT":
                vm, _vs, fo = struct.unpack_from("<3Q", body, 24)
                linkedit = (vm, fo)
            elif cmd in (0x22, 0x80000022):
                trie = struct.unpack_from("<II", body, 40)
            elif cmd == 0x80000033:
                trie = struct.unpack_from("<II", body, 8)
        if linkedit is None or trie is None or trie[1] == 0:
            return None
        t = self.machine.read(linkedit[0] + self.slide + (trie[0] - linkedit[1]), trie[1])
        at = trie_lookup(t, symbol)
        if at is None:
            return None
        flags, p = read_uleb(t, at)
        if flags & 0x08:
            raise EmulationError(f"{symbol} is a re-export in {name}")
        return base + read_uleb(t, p)[0]

    def initializers(self, name: str) -> list[int]:
        base = self.images[name] + self.slide
        out = []
        for cmd, body in self._commands(name):
            if cmd != 0x19:
                continue
            nsects = _u32(body, 64)
            for k in range(nsects):
                so = 72 + 80 * k
                addr, size = struct.unpack_from("<2Q", body, so + 32)
                flags = _u32(body, so + 64)
                if flags & 0xFF == 0x9:
                    out += [self.machine.read_u64(addr + self.slide + i) for i in range(0, size, 8)]
                elif flags & 0xFF == 0x16:
                    out += [
                        base + _u32(self.machine.read(addr + self.slide + i, 4), 0) for i in range(0, size, 4)
                    ]
        return out


def load_cache(main_path: str, arch: str, slide: int) -> LoadedCache:
    """Map every file's mappings at address + slide and apply their slide info."""
    files = cache_files(main_path)
    m = Machine(arch)
    for f in files:
        for addr, size, fo, _so, _ss in f.mappings:
            m.map(addr + slide, size)
            m.write(addr + slide, f.data[fo : fo + size])
    for f in files:
        for mapping in f.mappings:
            _slide_mapping(m, f, mapping, slide)
    main = files[0].data
    moff = _u32(main, 0x10)
    if moff > 0x1C4 and _u32(main, 0x1C4):
        ioff, icnt = struct.unpack_from("<II", main, 0x1C0)
    else:
        ioff, icnt = struct.unpack_from("<II", main, 0x18)
    images = {}
    for i in range(icnt):
        addr, _mt, _ino, po = struct.unpack_from("<3QI", main, ioff + 32 * i)
        images[main[po : main.index(b"\0", po)].decode()] = addr
    return LoadedCache(m, slide, images)


# ---------------------------------------------------------------------------------------------
# dylibs extracted from a cache (dyldcache extract), mapped at their own addresses


def load_at_vmaddr(paths: list[str], arch: str) -> tuple[Machine, dict[str, LoadedImage]]:
    """Map each dylib's segments (read with LIEF) at the VM addresses its load commands give,
    without any fixup: an extracted cache dylib holds final pointers and no rebase info, so it
    runs only where the cache had it. __LINKEDIT is left out (every image extracted from one
    cache claims the cache's LINKEDIT address, and no code reads it). Initializers are not run.
    Returns the machine and the images by install name (exports at absolute addresses)."""
    lief = _lief()
    m = Machine(arch)
    images: dict[str, LoadedImage] = {}
    for p in paths:
        fat = lief.MachO.parse(p)
        if fat is None:
            raise EmulationError(f"LIEF cannot parse {p}")
        b = fat.at(0)
        header = next(s for s in b.segments if s.file_offset == 0 and s.file_size)
        base = header.virtual_address
        ids = [lib.name for lib in b.libraries if lib.command == lief.MachO.LoadCommand.TYPE.ID_DYLIB]
        img = LoadedImage(ids[0] if ids else p, base)
        for seg in b.segments:
            if seg.name == "__LINKEDIT" or not seg.virtual_size:
                continue
            m.map(seg.virtual_address, seg.virtual_size)
            content = bytes(seg.content)
            if content:
                m.write(seg.virtual_address, content[: seg.virtual_size])
        for sym in b.exported_symbols:
            info = sym.export_info
            flags = int(info.flags)
            if flags & 0x08:  # EXPORT_SYMBOL_FLAGS_REEXPORT
                continue
            img.exports[sym.name] = info.address if flags & 0x03 == 0x02 else base + info.address
        images[img.install_name] = img
    for p, img in zip(paths, images.values(), strict=True):
        b = lief.MachO.parse(p).at(0)
        for sect in b.sections:
            if sect.type == lief.MachO.Section.TYPE.MOD_INIT_FUNC_POINTERS:
                img.initializers += [m.read_u64(sect.virtual_address + k) for k in range(0, sect.size, 8)]
            elif sect.type == lief.MachO.Section.TYPE.INIT_FUNC_OFFSETS:
                for k in range(0, sect.size, 4):
                    img.initializers.append(img.base + _u32(m.read(sect.virtual_address + k, 4), 0))
    return m, images
