"""An independent reader of a cache's ObjC optimization and metadata, for the ObjC reader tests.

Written from the C declarations, not from dyldcache: objc4's ``objc-runtime-new.h`` and
``objc-abi.h`` (class_t, class_ro_t, method_list_t, protocol_t, category_t, objc_image_info),
dyld's ``include/objc-shared-cache.h`` (objc_opt_t v15 and v16, objc_stringhash_t,
objc_clsopt_t, header_info lists) and ``common/OptimizerObjC.h`` (the dyld-1162 string and
object hash tables), and Bob Jenkins' public-domain ``lookup8.c`` for the hash. It shares no code
with ``dyldcache``: memory comes from the emulator (tests/emulator.py maps every mapping at a
slide and applies the slide info with its own chain walker), so every pointer this module reads
is a runtime value, which it unslides itself. Everything is a plain per-field Python read,
meant to be obviously right rather than fast.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emulator import LoadedCache, Machine, load_at_vmaddr, load_cache, load_standalone

LIBOBJC = "/usr/lib/libobjc.A.dylib"
_M64 = (1 << 64) - 1

# ---------------------------------------------------------------------------------------------
# Bob Jenkins' lookup8 (hash() of lookup8.c), transcribed: 64-bit words, wrap-around arithmetic


def _mix64(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - b - c) & _M64
    a ^= c >> 43
    b = (b - c - a) & _M64
    b ^= (a << 9) & _M64
    c = (c - a - b) & _M64
    c ^= b >> 8
    a = (a - b - c) & _M64
    a ^= c >> 38
    b = (b - c - a) & _M64
    b ^= (a << 23) & _M64
    c = (c - a - b) & _M64
    c ^= b >> 5
    a = (a - b - c) & _M64
    a ^= c >> 35
    b = (b - c - a) & _M64
    b ^= (a << 49) & _M64
    c = (c - a - b) & _M64
    c ^= b >> 11
    a = (a - b - c) & _M64
    a ^= c >> 12
    b = (b - c - a) & _M64
    b ^= (a << 18) & _M64
    c = (c - a - b) & _M64
    c ^= b >> 22
    return a, b, c


def lookup8(k: bytes, level: int) -> int:
    length = len(k)
    a = b = level & _M64
    c = 0x9E3779B97F4A7C13
    p = 0
    remaining = length
    while remaining >= 24:
        a = (a + int.from_bytes(k[p : p + 8], "little")) & _M64
        b = (b + int.from_bytes(k[p + 8 : p + 16], "little")) & _M64
        c = (c + int.from_bytes(k[p + 16 : p + 24], "little")) & _M64
        a, b, c = _mix64(a, b, c)
        p += 24
        remaining -= 24
    c = (c + length) & _M64
    # the switch with fall-through: bytes 16..22 go to c above its low byte, 8..15 to b, 0..7 to a
    for i in range(remaining - 1, -1, -1):
        byte = k[p + i]
        if i >= 16:
            c = (c + (byte << (8 * (i - 15)))) & _M64
        elif i >= 8:
            b = (b + (byte << (8 * (i - 8)))) & _M64
        else:
            a = (a + (byte << (8 * i))) & _M64
    return _mix64(a, b, c)[2]


def section_table(header: bytes, shift: int) -> dict[tuple[str, str], tuple[int, int]]:
    """(segname, sectname) -> (addr + ``shift``, size) from a mach header and its load commands."""
    ncmds = struct.unpack_from("<I", header, 16)[0]
    out, at = {}, 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", header, at)
        body, at = header[at : at + size], at + size
        if cmd != 0x19:  # LC_SEGMENT_64
            continue
        for i in range(struct.unpack_from("<I", body, 64)[0]):
            s = 72 + 80 * i
            sect = body[s : s + 16].rstrip(b"\0").decode()
            seg = body[s + 16 : s + 32].rstrip(b"\0").decode()
            addr, sect_size = struct.unpack_from("<2Q", body, s + 32)
            out[(seg, sect)] = (shift + addr, sect_size)
    return out


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Table:
    address: int
    legacy: bool
    capacity: int
    occupied: int
    shift: int
    mask: int
    salt: int
    scramble: list[int]
    tab: bytes
    checkbytes: bytes
    offsets: list[int]
    #: slot -> string
    strings: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Opt:
    legacy: bool
    version: int
    flags: int
    base_selector: int | None
    #: (mach header, objc_image_info version, flags, isLoaded or None)
    header_infos: list[tuple[int, int, int, bool | None]]
    selectors: Table | None
    classes: Table | None
    protocols: Table | None
    #: (name, object address, objc index)
    class_objects: list[tuple[str, int, int | None]]
    protocol_objects: list[tuple[str, int, int | None]]


@dataclass
class Klass:
    address: int
    meta: bool
    name: str
    superclass: int
    superclass_name: str | None
    ro_flags: int
    instance_start: int
    instance_size: int
    #: (selector, types, imp) in list order
    methods: list[tuple[str, str, int]]
    protocols: list[str]


@dataclass
class PreoptCache:
    """objc4's preopt_cache_t (v2, dyld's ImpCacheHeader_v2 and ImpCacheEntry_v2) as a class's
    cache word points at it."""

    address: int
    #: the class address plus fallback_class_offset (int64)
    fallback: int
    shift: int
    mask: int
    occupied: int
    has_inlines: bool
    bit_one: bool
    #: bucket index -> (sel_offs, IMP: the class address minus imp_offs << 2), empty buckets out
    buckets: dict[int, tuple[int, int]]


#: preopt_cache_entry_t.sel_offs of an empty bucket (all 26 bits set)
PREOPT_EMPTY_SEL = (1 << 26) - 1


# ---------------------------------------------------------------------------------------------
# the reader


class ObjCMemory:
    """ObjC metadata read from emulator memory: ``raw`` reads at an address of the reader's own
    space, ``ptr`` turns a pointer field into an address of that space (0 stays 0), and
    ``sections`` gives an image's sections in that space. Subclasses: ObjCOracle (a cache at a
    slide; addresses are unslid cache addresses) and StandaloneObjC (input dylibs mapped by the
    emulator at random bases; addresses are runtime addresses)."""

    m: Machine

    def raw(self, a: int, n: int) -> bytes:
        raise NotImplementedError

    def ptr(self, a: int) -> int:
        raise NotImplementedError

    def sections(self, install_name: str) -> dict[tuple[str, str], tuple[int, int]]:
        raise NotImplementedError

    def u32(self, a: int) -> int:
        return int(struct.unpack("<I", self.raw(a, 4))[0])

    def i32(self, a: int) -> int:
        return int(struct.unpack("<i", self.raw(a, 4))[0])

    def u64(self, a: int) -> int:
        return int(struct.unpack("<Q", self.raw(a, 8))[0])

    def i64(self, a: int) -> int:
        return int(struct.unpack("<q", self.raw(a, 8))[0])

    def cstr(self, a: int) -> bytes:
        out = b""
        while True:
            chunk = self.raw(a + len(out), 64)
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end]
            out += chunk

    def text(self, a: int) -> str:
        return self.cstr(a).decode("utf-8", "surrogateescape") if a else ""

    def pointer_section(self, install_name: str, sectname: str) -> list[int]:
        for (seg, sect), (addr, size) in self.sections(install_name).items():
            if sect == sectname and seg != "__TEXT":
                return [self.ptr(addr + 8 * i) for i in range(size // 8)]
        return []

    def selector_references(self, install_name: str) -> list[tuple[int, int]]:
        """(location, selector address) of every __objc_selrefs entry of the image."""
        for (seg, sect), (addr, size) in self.sections(install_name).items():
            if sect == "__objc_selrefs" and seg != "__TEXT":
                return [(addr + 8 * i, self.ptr(addr + 8 * i)) for i in range(size // 8)]
        return []

    # -- metadata ------------------------------------------------------------------------------------

    def method_list(self, a: int, base_selector: int | None) -> list[tuple[str, str, int]]:
        if not a:
            return []
        entsize_flags, count = self.u32(a), self.u32(a + 4)
        entsize = entsize_flags & 0xFFFC
        out = []
        for i in range(count):
            e = a + 8 + i * entsize
            if entsize_flags & 0x80000000:  # small: three int32 offsets from their own fields
                name_off, types_off, imp_off = self.i32(e), self.i32(e + 4), self.i32(e + 8)
                if entsize_flags & 0x40000000:  # the builder made the name the selector itself
                    sel = (base_selector if base_selector is not None else e) + name_off
                else:  # the name is a selector reference
                    sel = self.ptr(e + name_off)
                out.append((self.text(sel), self.text(e + 4 + types_off), e + 8 + imp_off if imp_off else 0))
            else:
                out.append((self.text(self.ptr(e)), self.text(self.ptr(e + 8)), self.ptr(e + 16)))
        return out

    def method_list_selectors(self, a: int, base_selector: int | None) -> tuple[int, list[int]]:
        """(entsize and flags word, selector address of each entry) of the list at ``a``."""
        entsize_flags, count = self.u32(a), self.u32(a + 4)
        entsize = entsize_flags & 0xFFFC
        out = []
        for i in range(count):
            e = a + 8 + i * entsize
            if not entsize_flags & 0x80000000:
                out.append(self.ptr(e))
            elif entsize_flags & 0x40000000:
                out.append((base_selector if base_selector is not None else e) + self.i32(e))
            else:
                out.append(self.ptr(e + self.i32(e)))
        return entsize_flags, out

    def method_list_addresses(self, install_name: str) -> list[tuple[str, int]]:
        """(owner, address) of every method list the image's classes, metaclasses, categories and
        protocols point at."""
        out = []
        for a in self.pointer_section(install_name, "__objc_classlist"):
            for cls in (a, self.ptr(a)):
                ro = self.ptr(cls + 32) & 0x00007FFFFFFFFFF8
                owner = ("+" if cls != a else "-") + self.text(self.ptr(ro + 24))
                base = self.ptr(ro + 32)
                lists = [la for _i, la in self.list_of_lists(base & ~1)] if base & 1 else [base]
                out += [(owner, la) for la in lists]
        for a in self.pointer_section(install_name, "__objc_catlist"):
            name = self.text(self.ptr(a))
            out += [(f"-({name})", self.ptr(a + 16)), (f"+({name})", self.ptr(a + 24))]
        for a in self.pointer_section(install_name, "__objc_protolist"):
            name = self.text(self.ptr(a + 8))
            out += [(f"<{name}>[{k}]", self.ptr(a + 24 + 8 * k)) for k in range(4)]
        return [(owner, list_address) for owner, list_address in out if list_address]

    def list_of_lists(self, a: int) -> list[tuple[int, int]]:
        """(imageIndex, list address) of each entry of the relative_list_list_t at ``a`` (tag bit
        cleared): objc4's relative_list_list_entry_t, imageIndex:16 then a signed 48-bit offset
        from the entry."""
        entsize, count = self.u32(a), self.u32(a + 4)
        out = []
        for i in range(count):
            e = a + 8 + i * entsize
            out.append((self.u64(e) & 0xFFFF, e + (self.i64(e) >> 16)))
        return out

    def own_list(self, value: int) -> int:
        """A class_ro_t list field: the list itself, or with tag bit 0 (dyld's pre-attached
        categories) the last list of the list-of-lists, the class's own."""
        if value & 1:
            lists = self.list_of_lists(value & ~1)
            return lists[-1][1] if lists else 0
        return value

    def protocol_list(self, a: int) -> list[str]:
        if not a:
            return []
        return [self.text(self.ptr(self.ptr(a + 8 + 8 * i) + 8)) for i in range(self.u64(a))]

    def one_class(self, a: int, base_selector: int | None) -> Klass:
        superclass = self.ptr(a + 8)
        ro = self.ptr(a + 32) & 0x00007FFFFFFFFFF8
        flags, start, size = self.u32(ro), self.u32(ro + 4), self.u32(ro + 8)
        return Klass(
            a,
            bool(flags & 1),
            self.text(self.ptr(ro + 24)),
            superclass,
            self._super_name(superclass),
            flags,
            start,
            size,
            self.method_list(self.own_list(self.ptr(ro + 32)), base_selector),
            self.protocol_list(self.own_list(self.ptr(ro + 40))),
        )

    def _super_name(self, cls: int) -> str | None:
        """The name of the class at ``cls``; None for no class or one without a class_ro_t (a
        stand-in library's zeroed data, tests/standins.py)."""
        if not cls:
            return None
        ro = self.ptr(cls + 32) & 0x00007FFFFFFFFFF8
        return self.text(self.ptr(ro + 24)) if ro else None

    def classes(self, install_name: str, base_selector: int | None) -> list[Klass]:
        out = []
        for a in self.pointer_section(install_name, "__objc_classlist"):
            out.append(self.one_class(a, base_selector))
            out.append(self.one_class(self.ptr(a), base_selector))  # its metaclass (isa)
        return out

    def protocols(self, install_name: str, base_selector: int | None) -> list[tuple[str, int, list]]:
        """(name, address, [instance, class, optional instance, optional class methods])."""
        out = []
        for a in self.pointer_section(install_name, "__objc_protolist"):
            lists = [self.method_list(self.ptr(a + 24 + 8 * k), base_selector) for k in range(4)]
            out.append((self.text(self.ptr(a + 8)), a, lists))
        return out

    def categories(
        self, install_name: str, base_selector: int | None
    ) -> list[tuple[str, str | None, list, list]]:
        """(name, class name, instance methods, class methods)."""
        out = []
        for a in self.pointer_section(install_name, "__objc_catlist"):
            out.append(
                (
                    self.text(self.ptr(a)),
                    self._super_name(self.ptr(a + 8)),
                    self.method_list(self.ptr(a + 16), base_selector),
                    self.method_list(self.ptr(a + 24), base_selector),
                )
            )
        return out

    def image_info(self, install_name: str) -> tuple[int, int] | None:
        for (seg, sect), (addr, _size) in self.sections(install_name).items():
            if sect == "__objc_imageinfo" and seg != "__TEXT":
                return self.u32(addr), self.u32(addr + 4)
        return None


class ObjCOracle(ObjCMemory):
    """A cache mapped by the emulator at ``slide`` (its slide info applied by the emulator's own
    walker), read at unslid addresses: the ObjC optimization tables and every image's metadata."""

    def __init__(self, main_path: str, slide: int) -> None:
        with open(main_path, "rb") as f:
            self.header = f.read(0x200)
        arch = self.header[:16].rstrip(b"\0").split()[-1].decode()
        self.arch = arch
        self.mapping_offset = struct.unpack_from("<I", self.header, 0x10)[0]
        self.cache: LoadedCache = load_cache(main_path, arch, slide)
        self.slide = slide
        self.m = self.cache.machine
        if self.mapping_offset > 0xE0:
            self.base = struct.unpack_from("<Q", self.header, 0xE0)[0]
        else:
            self.base = struct.unpack_from("<Q", self.header, self.mapping_offset)[0]

    def raw(self, a: int, n: int) -> bytes:
        return self.m.read(a + self.slide, n)

    def ptr(self, a: int) -> int:
        """A pointer field: its runtime value, unslid (0 stays 0)."""
        v = self.u64(a)
        return v - self.slide if v else 0

    def sections(self, install_name: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(segname, sectname) -> (addr, size) from the image's LC_SEGMENT_64 commands."""
        return section_table(self.cache.header_bytes(install_name)[1], 0)

    def preopt_cache(self, cls: int) -> PreoptCache | None:
        """The preoptimized cache class_t's word 3 (cache_t._originalPreoptCache) points at: a
        16-byte header {int64 fallback_class_offset; u16 shift:5 mask:11; u16 occupied:14
        has_inlines:1 padding:1; u32 unused:31 bit_one:1}, then mask + 1 u64 entries
        {int64 raw_imp_offs:38; u64 sel_offs:26}."""
        a = self.ptr(cls + 24)
        if not a:
            return None
        hash_params, flags = struct.unpack("<HH", self.raw(a + 8, 4))
        shift, mask = hash_params & 0x1F, hash_params >> 5
        buckets = {}
        for i in range(mask + 1):
            word = self.u64(a + 16 + 8 * i)
            sel_offs = word >> 38
            raw_imp = word & ((1 << 38) - 1)
            if raw_imp >> 37:
                raw_imp -= 1 << 38
            if sel_offs != PREOPT_EMPTY_SEL:
                buckets[i] = (sel_offs, cls - (raw_imp << 2))
        return PreoptCache(
            a,
            cls + self.i64(a),
            shift,
            mask,
            flags & 0x3FFF,
            bool(flags >> 14 & 1),
            bool(self.u32(a + 12) >> 31),
            buckets,
        )

    def opt_offsets(self) -> list[int] | None:
        """libobjc's objc_opt_offsets[4] (exported as _objc_opt_offsets), unslid; None without it."""
        at = self.cache.lookup(LIBOBJC, "_objc_opt_offsets")
        if at is None:
            return None
        return [self.ptr(at - self.slide + 8 * i) for i in range(4)]

    # -- the optimization tables ---------------------------------------------------------------------

    def table(self, a: int, legacy: bool) -> Table:
        if legacy:  # objc_stringhash_t: capacity, occupied, shift, mask, unused1, unused2, salt
            capacity, occupied, shift, mask = struct.unpack("<4I", self.raw(a, 16))
        else:  # StringHashTable: version, capacity, occupied, shift, mask, (pad), salt
            capacity, occupied, shift, mask = struct.unpack("<4I", self.raw(a + 4, 16))
        salt = self.u64(a + 24)
        scramble = list(struct.unpack("<256I", self.raw(a + 32, 1024)))
        t = Table(a, legacy, capacity, occupied, shift, mask, salt, scramble, b"", b"", [])
        if not capacity:
            return t
        t.tab = self.raw(a + 1056, mask + 1)
        t.checkbytes = self.raw(a + 1056 + mask + 1, capacity)
        off_at = a + 1056 + mask + 1 + capacity
        t.offsets = list(struct.unpack(f"<{capacity}i", self.raw(off_at, 4 * capacity)))
        t.strings = {i: self.cstr(a + o) for i, o in enumerate(t.offsets) if o}
        return t

    def slot(self, t: Table, key: bytes) -> int | None:
        """tryGetIndex / getIndex of the headers: the slot of ``key`` or None."""
        if not t.capacity or not key:
            return None
        v = lookup8(key, t.salt)
        high = 0 if t.shift == 64 else (v >> t.shift) & 0xFFFFFFFF
        index = high ^ t.scramble[t.tab[v & t.mask]]
        if index >= t.capacity:
            return None
        if t.checkbytes[index] != ((key[0] & 7) << 5) | (len(key) & 0x1F):
            return None
        if t.offsets[index] == 0 or self.cstr(t.address + t.offsets[index]) != key:
            return None
        return index

    def objects(self, t: Table, ro: tuple[int, int] | None) -> list[tuple[str, int, int | None]]:
        """(name, object, objc index) of a class/protocol table; ``ro``: (first RO entry, entsize)."""
        if not t.capacity:
            return []
        at = t.address + 1056 + t.mask + 1 + 5 * t.capacity
        dup_count = self.u32(at + 8 * t.capacity)
        dups = at + 8 * t.capacity + 4
        out = []

        def one(entry: int, name: str) -> tuple[str, int, int | None]:
            if t.legacy:  # objc_classheader_t {clsOffset, hiOffset}, from the table
                cls, hi = self.i32(entry), self.i32(entry + 4)
                assert ro is not None
                return name, t.address + cls, (t.address + hi - ro[0]) // ro[1]
            raw = self.u64(entry)  # ObjectData: isDuplicate:1, objectCacheOffset:47, dylibObjCIndex:16
            return name, self.base + ((raw >> 1) & ((1 << 47) - 1)), raw >> 48

        for slot, key in sorted(t.strings.items()):
            name = key.decode()
            entry = at + 8 * slot
            if t.legacy:
                cls, hi = self.i32(entry), self.i32(entry + 4)
                dup, first, count = bool(cls & 1), hi, (cls & 0xFFFFFFFF) >> 1
            else:
                raw = self.u64(entry)
                dup, first, count = bool(raw & 1), (raw >> 1) & ((1 << 47) - 1), raw >> 48
            if not dup:
                out.append(one(entry, name))
                continue
            assert first + count <= dup_count
            out += [one(dups + 8 * k, name) for k in range(first, first + count)]
        return out

    def header_infos(self, ro: int, rw: int | None) -> list[tuple[int, int, int, bool | None]]:
        count, entsize = self.u32(ro), self.u32(ro + 4)
        rw_count = self.u32(rw) if rw else 0
        out = []
        for i in range(count):
            e = ro + 8 + i * entsize
            mh = e + self.i64(e)
            info = e + 8 + self.i64(e + 8)
            loaded = bool(self.u64(rw + 8 + 8 * i) & 1) if rw and i < rw_count else None
            out.append((mh, self.u32(info), self.u32(info + 4), loaded))
        return out

    def opt(self) -> Opt | None:
        """Where dyld-1162's DyldSharedCache::objcOpts()/oldObjcOpt() look, with v15 read as v15."""
        if self.mapping_offset > 0x1D8:  # the header reaches objcOptsSize
            off = struct.unpack_from("<Q", self.header, 0x1D0)[0]
            if not off:
                return None
            h = self.base + off
            version, flags = self.u32(h), self.u32(h + 4)
            ro, rw, sel, cls, pro, rel = (self.base + self.u64(h + 8 + 8 * i) for i in range(6))
            return self._opt(False, version, flags, ro, rw, sel, cls, pro, rel)
        if LIBOBJC not in self.cache.images:
            return None
        sect = self.sections(LIBOBJC).get(("__TEXT", "__objc_opt_ro"))
        if sect is None:
            return None
        o = sect[0]
        version, flags = self.u32(o), self.u32(o + 4)
        sel, hro, clsopt, _proto_old, hrw, proto2 = (self.i32(o + 8 + 4 * i) for i in range(6))
        if version == 15:
            return self._opt(True, version, flags, o + hro, o + hrw, o + sel, o + clsopt, o + proto2, None)
        if version == 16:
            cls, pro = self.i32(o + 32), self.i32(o + 36)
            rel = self.i64(o + 40)
            return self._opt(
                False, version, flags, o + hro, o + hrw, o + sel, o + cls, o + pro, o + rel if rel else None
            )
        return None

    def _opt(
        self,
        legacy: bool,
        version: int,
        flags: int,
        ro: int,
        rw: int,
        sel: int,
        cls: int,
        pro: int,
        rel: int | None,
    ) -> Opt:
        ro_list = (ro + 8, self.u32(ro + 4))
        sel_t, cls_t, pro_t = self.table(sel, legacy), self.table(cls, legacy), self.table(pro, legacy)
        return Opt(
            legacy,
            version,
            flags,
            rel,
            self.header_infos(ro, rw),
            sel_t,
            cls_t,
            pro_t,
            self.objects(cls_t, ro_list),
            self.objects(pro_t, ro_list),
        )


class StandaloneObjC(ObjCMemory):
    """Input dylibs mapped by the emulator (tests/emulator.py load_standalone: each at a random
    base, its rebases and binds applied with LIEF), read at runtime addresses."""

    def __init__(self, paths: list[str], arch: str, seed: int, *, partial: bool = False) -> None:
        self.m, self.images = load_standalone(paths, arch, seed, partial=partial)
        #: install name -> what is added to the image's VM addresses in memory
        self.shift = {name: img.base for name, img in self.images.items()}

    @classmethod
    def at_vmaddr(cls, paths: list[str], arch: str) -> StandaloneObjC:
        """Dylibs extracted from a cache, mapped at their own VM addresses (load_at_vmaddr)."""
        self = cls.__new__(cls)
        self.m, self.images = load_at_vmaddr(paths, arch)
        self.shift = dict.fromkeys(self.images, 0)
        return self

    def raw(self, a: int, n: int) -> bytes:
        return self.m.read(a, n)

    def ptr(self, a: int) -> int:
        return self.u64(a)

    def sections(self, install_name: str) -> dict[tuple[str, str], tuple[int, int]]:
        base = self.images[install_name].base
        sizeofcmds = struct.unpack_from("<I", self.m.read(base, 32), 20)[0]
        return section_table(self.m.read(base, 32 + sizeofcmds), self.shift[install_name])

    def image_of(self, address: int) -> tuple[str, int]:
        """(install name, input VM address) of a runtime address."""
        for name, img in self.images.items():
            if img.span[0] <= address < img.span[1]:
                return name, address - img.base
        raise KeyError(f"{address:#x} is in no input image")
