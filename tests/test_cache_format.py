"""Cache format records: field offsets from docs/cache-format.md §1-§3, header versions, magic strings,
mapping names, and the golden cache's header compared with DyldExtractor's reading of it."""

from __future__ import annotations

import struct

import pytest
from conftest import python_module, shared_path

from dyldcache.cache import format as F
from dyldcache.errors import CacheFormatError

GOLDEN = ("data", "golden", "dyld_shared_cache_arm64-macOS")


def _header_bytes(values: dict[int, tuple[str, int | bytes]], size: int = 0x200) -> bytearray:
    buf = bytearray(size)
    for off, (fmt, value) in values.items():
        struct.pack_into("<" + fmt, buf, off, value)
    return buf


# offsets and field names straight from the table in cache-format.md §1.1
HEADER_TABLE = {
    0x010: ("I", "mapping_offset"),
    0x014: ("I", "mapping_count"),
    0x018: ("I", "images_offset_old"),
    0x028: ("Q", "code_signature_offset"),
    0x030: ("Q", "code_signature_size"),
    0x048: ("Q", "local_symbols_offset"),
    0x068: ("Q", "cache_type"),
    0x088: ("Q", "images_text_offset"),
    0x098: ("Q", "patch_info_addr"),
    0x0D8: ("I", "platform"),
    0x0DC: ("I", "format_flags"),
    0x0E0: ("Q", "shared_region_start"),
    0x0E8: ("Q", "shared_region_size"),
    0x0F0: ("Q", "max_slide"),
    0x108: ("Q", "dylibs_trie_addr"),
    0x110: ("Q", "dylibs_trie_size"),
    0x138: ("I", "mapping_with_slide_offset"),
    0x13C: ("I", "mapping_with_slide_count"),
    0x148: ("Q", "dylibs_pbl_set_addr"),
    0x168: ("I", "program_trie_size"),
    0x16C: ("I", "os_version"),
    0x170: ("I", "alt_platform"),
    0x178: ("Q", "swift_opts_offset"),
    0x188: ("I", "sub_cache_array_offset"),
    0x18C: ("I", "sub_cache_array_count"),
    0x1A0: ("Q", "rosetta_read_only_addr"),
    0x1C0: ("I", "images_offset"),
    0x1C4: ("I", "images_count"),
    0x1C8: ("I", "cache_sub_type"),
    0x1D0: ("Q", "objc_opts_offset"),
    0x1D8: ("Q", "objc_opts_size"),
    0x1F0: ("Q", "dynamic_data_offset"),
    0x1F8: ("Q", "dynamic_data_max_size"),
}


def test_header_fields_sit_at_the_documented_offsets() -> None:
    # a distinct value per field, written at the table's offset with struct (not our record)
    values = {
        off: (fmt, 0x11 * (i + 1) if name != "mapping_offset" else 0x200)
        for i, (off, (fmt, name)) in enumerate(HEADER_TABLE.items())
    }
    buf = _header_bytes(values)
    buf[0:16] = b"dyld_v1  arm64e\0"
    buf[0x58:0x68] = bytes(range(16))
    buf[0x190:0x1A0] = bytes(range(100, 116))
    h = F.CacheHeader.unpack_from(buf)
    for off, (_fmt, name) in HEADER_TABLE.items():
        assert getattr(h, name) == values[off][1], name
        assert F.CacheHeader.offset_of(name) == off
    assert h.uuid == bytes(range(16))
    assert h.symbol_file_uuid == bytes(range(100, 116))
    assert h.arch == "arm64e"
    assert h.pack() == bytes(buf)


def test_format_flags_bits() -> None:
    # the golden cache's word (validators.md §4): 0x40a = formatVersion 10 + locallyBuiltCache (bit 10)
    h = F.CacheHeader(format_flags=0x40A)
    assert (h.format_version, h.dylibs_expected_on_disk, h.simulator, h.locally_built_cache) == (
        10,
        False,
        False,
        True,
    )
    h = F.CacheHeader(format_flags=(1 << 8) | (1 << 9) | (1 << 11) | 3)
    assert (h.format_version, h.dylibs_expected_on_disk, h.simulator, h.locally_built_cache) == (
        3,
        True,
        True,
        False,
    )
    assert h.built_from_chained_fixups
    assert F.CacheHeader.pack_format_flags(10, locally_built_cache=True) == 0x40A
    assert F.CacheHeader.pack_format_flags(dylibs_expected_on_disk=True, simulator=True) == 0x300
    with pytest.raises(ValueError):
        F.CacheHeader.pack_format_flags(256)


def test_short_header_fields_past_mapping_offset_read_as_zero() -> None:
    # a 0x140 header (dyld-832) followed by a mapping array whose bytes overlap later fields
    buf = _header_bytes({0x10: ("I", 0x140), 0x14: ("I", 1), 0x138: ("I", 0x160), 0x13C: ("I", 1)}, 0x400)
    buf[0:16] = F.cache_magic("arm64")
    buf[0x140:0x400] = b"\xab" * (0x400 - 0x140)
    h = F.CacheHeader.read_any(bytes(buf), "x")
    assert h.mapping_with_slide_offset == 0x160  # offset 0x138 < 0x140: present
    assert h.dylibs_pbl_set_addr == 0 and h.images_offset == 0 and h.cache_sub_type == 0
    assert h.symbol_file_uuid == bytes(16) and h.dynamic_data_max_size == 0
    assert h.has_field("mapping_with_slide_count")
    assert not h.has_field("dylibs_pbl_state_array_addr_unused")  # at 0x140 itself
    assert not h.has_field("cache_sub_type")
    # the same bytes with a full header keep every field
    buf[0x10:0x14] = struct.pack("<I", 0x200)
    assert F.CacheHeader.read_any(bytes(buf), "x").dylibs_pbl_set_addr == 0xABABABABABABABAB


@pytest.mark.parametrize(
    ("data", "offset", "words"),
    [
        (b"", 0, "too small"),
        (b"dyld", 0, "too small"),
        (b"dyld_stu" + bytes(11), 0, "not a dyld shared cache"),
        (b"\xcf\xfa\xed\xfe" + bytes(0x300), 0, "not a dyld shared cache"),
        (b"dyld_v1   arm64\0" + struct.pack("<I", 0x10) + bytes(0x300), 0x10, "smaller than any header"),
        (b"dyld_v1   arm64\0" + struct.pack("<I", 0x200) + bytes(0x100), 0, "extends past the end"),
    ],
)
def test_bad_headers_are_cache_format_errors(data: bytes, offset: int, words: str) -> None:
    with pytest.raises(CacheFormatError) as info:
        F.CacheHeader.read_any(data, "bad")
    assert info.value.offset == offset
    assert words in info.value.message


def test_cache_magic_matches_the_table() -> None:
    # cache-format.md §1.2, written out by hand
    assert F.cache_magic("x86_64") == b"dyld_v1  x86_64\0"
    assert F.cache_magic("x86_64h") == b"dyld_v1 x86_64h\0"
    assert F.cache_magic("arm64") == b"dyld_v1   arm64\0"
    assert F.cache_magic("arm64e") == b"dyld_v1  arm64e\0"
    assert F.cache_magic("arm64_32") == b"dyld_v1arm64_32\0"
    assert F.cache_magic("i386") == b"dyld_v1    i386\0"
    for arch in ("x86_64", "arm64e", "arm64_32"):
        assert F.magic_arch(F.cache_magic(arch)) == arch
    assert F.magic_arch(b"dyld_v0    i386\0") is None
    with pytest.raises(ValueError):
        F.cache_magic("arm64e_long")


def test_record_sizes_match_the_doc() -> None:
    sizes = {
        F.CacheHeader: 0x200,
        F.MappingInfo: 32,
        F.MappingAndSlideInfo: 56,
        F.ImageInfo: 32,
        F.ImageTextInfo: 32,
        F.SubcacheEntryV1: 24,
        F.SubcacheEntry: 56,
        F.LocalSymbolsInfo: 24,
        F.LocalSymbolsEntry64: 16,
        F.LocalSymbolsEntry32: 12,
        F.SlideInfo1: 24,
        F.SlideInfo2: 40,
        F.SlideInfo3: 24,
        F.SlideInfo5: 24,
        F.DynamicDataHeader: 32,
        F.ObjCOptimizationHeader: 56,
        F.SwiftOptimizationHeader: 32,
        F.PatchInfoV2: 104,
        F.PatchInfoV3: 152,
    }
    for cls, size in sizes.items():
        assert size == cls.SIZE, cls.__name__


def test_records_put_fields_where_the_doc_says() -> None:
    # mapping_and_slide_info (§2.2): flags at 40, maxProt at 48, initProt at 52
    raw = struct.pack("<6Q2I", 1, 2, 3, 4, 5, 6, 7, 8)
    m = F.MappingAndSlideInfo.unpack_from(raw)
    assert (m.slide_info_file_offset, m.slide_info_file_size, m.flags, m.max_prot, m.init_prot) == (
        4,
        5,
        6,
        7,
        8,
    )
    # subcache entry (§2.5): suffix at 24, NUL padded
    e = F.SubcacheEntry.unpack_from(
        b"U" * 16 + struct.pack("<Q", 0x2018000) + b".02.dylddata".ljust(32, b"\0")
    )
    assert (e.cache_vm_offset, e.suffix) == (0x2018000, ".02.dylddata")
    # slide info v3 (§2.11): auth_value_add at 16 after 4 bytes of padding
    s3 = F.SlideInfo3.unpack_from(struct.pack("<4IQ", 3, 4096, 7, 0xFFFFFFFF, 0x180000000))
    assert (s3.version, s3.page_size, s3.page_starts_count, s3.auth_value_add) == (3, 4096, 7, 0x180000000)
    # patch table v3/v4 header (§3.1): got location count at 144
    raw = bytearray(152)
    struct.pack_into("<2I", raw, 0, 4, 0)
    struct.pack_into("<Q", raw, 144, 99)
    assert F.PatchInfoV3.unpack_from(raw).got_location_array_count == 99
    # ObjC header (§5.1): relative method selector base at 48
    raw = bytearray(56)
    struct.pack_into("<Q", raw, 48, 0x1234)
    assert F.ObjCOptimizationHeader.unpack_from(raw).relative_method_selector_base_address_offset == 0x1234


def test_mapping_names_follow_the_tools_rule() -> None:
    # §2.2: X -> TEXT(_STUBS); W -> AUTH/DATA + _DIRTY/_CONST by flags; R only -> LINKEDIT
    assert F.mapping_name(5, 0) == "__TEXT"
    assert F.mapping_name(5, F.DYLD_CACHE_MAPPING_TEXT_STUBS) == "__TEXT_STUBS"
    assert F.mapping_name(3, 0) == "__DATA"
    assert F.mapping_name(3, F.DYLD_CACHE_MAPPING_CONST_DATA) == "__DATA_CONST"
    assert F.mapping_name(3, F.DYLD_CACHE_MAPPING_DIRTY_DATA) == "__DATA_DIRTY"
    assert F.mapping_name(3, F.DYLD_CACHE_MAPPING_AUTH_DATA) == "__AUTH"
    assert (
        F.mapping_name(3, F.DYLD_CACHE_MAPPING_AUTH_DATA | F.DYLD_CACHE_MAPPING_CONST_DATA) == "__AUTH_CONST"
    )
    assert F.mapping_name(1, 0) == "__LINKEDIT"
    assert F.mapping_name(0, 0) == "*unknown*"


def test_golden_header_matches_dyldextractor() -> None:
    path = shared_path(*GOLDEN)
    python_module("DyldExtractor")
    from DyldExtractor.dyld.dyld_context import DyldContext

    data = path.read_bytes()
    ours = F.CacheHeader.read_any(data, str(path))
    # facts from validators.md §4
    assert ours.magic == b"dyld_v1   arm64\0"
    assert (ours.mapping_offset, ours.mapping_count) == (0x140, 3)
    assert (ours.images_offset_old, ours.images_count_old) == (0x290, 2)
    assert (ours.mapping_with_slide_offset, ours.mapping_with_slide_count) == (0x1E8, 3)
    assert ours.uuid.hex() == "857bce1a017e34649909d58ee21cf8dc"
    assert (ours.cache_type, ours.platform, ours.format_flags) == (1, 1, 0x40A)
    assert (ours.code_signature_offset, ours.code_signature_size) == (0x30000, 0x4000)
    assert ours.local_symbols_offset == 0
    # the header is 0x140 bytes: what follows is the mapping array, not header
    assert ours.dylibs_pbl_set_addr == 0 and ours.images_count == 0
    assert ours.pack()[:0x140] == data[:0x140]
    with path.open("rb") as f:
        theirs = DyldContext(f).header
        for name, off in F.CacheHeader.FIELD_OFFSETS.items():
            if off >= 0x140 or name == "format_flags":
                continue
            camel = name.split("_")[0] + "".join(w.capitalize() for w in name.split("_")[1:])
            camel = {"dyldInCacheMh": "dyldInCacheMH"}.get(camel, camel)
            value = getattr(theirs, camel)
            mine = getattr(ours, name)
            if not isinstance(value, int):
                # ctypes char arrays stop at the first NUL
                value, mine = bytes(value), mine[: len(bytes(value))]
            assert mine == value, name
        assert ours.format_version == theirs.formatVersion
        assert ours.locally_built_cache == bool(theirs.locallyBuiltCache)
        assert ours.dylibs_expected_on_disk == bool(theirs.dylibsExpectedOnDisk)
        assert ours.simulator == bool(theirs.simulator)


def test_golden_mapping_records() -> None:
    data = shared_path(*GOLDEN).read_bytes()
    plain = [F.MappingInfo.unpack_from(data, 0x140 + 32 * i) for i in range(3)]
    slid = [F.MappingAndSlideInfo.unpack_from(data, 0x1E8 + 56 * i) for i in range(3)]
    # validators.md §4
    assert [(m.address, m.size, m.file_offset, m.max_prot, m.init_prot) for m in plain] == [
        (0x180000000, 0x18000, 0, 5, 5),
        (0x182018000, 0x4000, 0x18000, 3, 3),
        (0x18401C000, 0x14000, 0x1C000, 1, 1),
    ]
    assert [(m.address, m.size, m.file_offset) for m in slid] == [
        (m.address, m.size, m.file_offset) for m in plain
    ]
    assert (slid[1].slide_info_file_offset, slid[1].slide_info_file_size) == (0x1C000, 0x4000)
    assert slid[0].slide_info_file_size == 0 and slid[2].slide_info_file_size == 0
