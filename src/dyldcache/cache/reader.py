"""A read-only view of an existing dyld shared cache: the main file, its subcaches and ``.symbols``.

Every file is mapped with ``mmap`` and validated as it is opened (header, both mapping arrays,
slide info and signature ranges); images, the dylibs trie, local symbols and slide info are
decoded on request. Older headers are read by honouring ``mappingOffset`` (the header's own
size, ``docs/cache-format.md`` §1.4): fields past it do not exist and read as 0. Every
malformed input raises :class:`~dyldcache.errors.CacheFormatError` naming the file and offset.
"""

from __future__ import annotations

import bisect
import dataclasses
import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from types import TracebackType
from typing import Self

import numpy as np

from ..errors import CacheFormatError, MachOFormatError, UsageError
from ..macho import constants as C
from ..macho.file import MachOFile, release_pages
from ..macho.format import NLIST64_DTYPE, LoadCommandHeader, MachHeader64, SegmentCommand64
from ..macho.leb128 import uleb_decode
from ..names import printable
from .format import (
    DEVELOPMENT_SUFFIX,
    SYMBOLS_SUFFIX,
    CacheHeader,
    ImageInfo,
    ImageTextInfo,
    LocalSymbolsEntry32,
    LocalSymbolsEntry64,
    LocalSymbolsInfo,
    MappingAndSlideInfo,
    MappingInfo,
    SlideInfo2,
    SlideInfo3,
    SlideInfo5,
    SubcacheEntry,
    SubcacheEntryV1,
    mapping_name,
    show_bytes,
    uuid_string,
)
from .slide_info_decode import decode_slide_info

#: bytes of a mapping whose pointers ``CacheFile.slide_info_windows`` decodes at once
SLIDE_WINDOW = 8 << 20
#: dyld maps at most this many mappings per file
MAX_MAPPINGS = 8
#: the kernel maps at most 256 files per shared region (main file included)
MAX_SUBCACHES = 255
#: longest install name we accept while looking for its NUL
_MAX_PATH = 4096


@dataclass(frozen=True, slots=True)
class Mapping:
    """One mapping of one cache file (from dyld_cache_mapping_and_slide_info, or the plain array)."""

    #: position in its file's mapping array
    index: int
    #: unslid VM address
    address: int
    size: int
    #: offset in the file holding the mapping
    file_offset: int
    max_prot: int
    init_prot: int
    #: DYLD_CACHE_MAPPING_* (0 for headers without the mapping_and_slide array)
    flags: int
    #: slide info blob, in the same file; size 0 = none
    slide_info_offset: int
    slide_info_size: int

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def name(self) -> str:
        return mapping_name(self.max_prot, self.flags)

    def contains(self, address: int) -> bool:
        return self.address <= address < self.address + self.size


@dataclass(frozen=True, slots=True)
class CacheImage:
    """One cache dylib, from dyld_cache_image_info."""

    index: int
    path: str
    #: unslid address of its mach_header
    address: int
    mod_time: int
    inode: int


@dataclass(frozen=True, slots=True)
class ImageText:
    """One dyld_cache_image_text_info with its path resolved."""

    index: int
    uuid: bytes
    load_address: int
    text_segment_size: int
    path: str


@dataclass(frozen=True, slots=True)
class SubcacheRef:
    """One subcache entry of the main header."""

    index: int
    #: appended to the main path (".01"; ".1" for v1 entries)
    suffix: str
    uuid: bytes
    #: start of the subcache minus the cache base
    cache_vm_offset: int
    path: str


@dataclass(slots=True)
class LocalSymbols:
    """The unmapped local symbols (``.symbols`` file, or the main file of older caches)."""

    #: the file holding them and where the info record is in it
    path: str
    offset: int
    #: every local, as an NLIST64_DTYPE view
    nlist: np.ndarray
    strings: bytes
    #: per dylib: (dylib offset, first nlist index, nlist count)
    entries: list[tuple[int, int, int]]
    #: entries' dylib offsets are VM offsets from the cache base (else file offsets in the cache)
    vm_offsets: bool

    def name(self, strx: int) -> str:
        if strx >= len(self.strings):
            return ""
        end = self.strings.find(b"\0", strx)
        return self.strings[strx : end if end >= 0 else len(self.strings)].decode("utf-8", "surrogateescape")


def _map_file(path: str) -> tuple[mmap.mmap | None, memoryview]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CacheFormatError(path, None, f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CacheFormatError(path, None, "not a regular file")
        if st.st_size == 0:
            return None, memoryview(b"")
        m = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
        return m, memoryview(m)
    except OSError as exc:
        raise CacheFormatError(path, None, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


class CacheFile:
    """One file of a cache: its header, its mappings and its bytes."""

    def __init__(self, path: str, suffix: str = "") -> None:
        self.path = path
        #: suffix this file was found by ("" for the main file)
        self.suffix = suffix
        self._mmap, self.data = _map_file(path)
        try:
            self.header = CacheHeader.read_any(self.data, path)
            self.mappings = self._read_mappings()
            self._check_ranges()
        except BaseException:
            self.close()
            raise

    def error(self, offset: int | None, message: str) -> CacheFormatError:
        return CacheFormatError(self.path, offset, message)

    def _array_range(self, offset: int, count: int, size: int, what: str, at: int) -> None:
        if offset < 0 or offset + count * size > len(self.data):
            raise self.error(
                at,
                f"{what} ({count} x {size} bytes at {offset:#x}) extend past the end of the file "
                f"({len(self.data):#x})",
            )

    def _read_mappings(self) -> list[Mapping]:
        h = self.header
        if not 1 <= h.mapping_count <= MAX_MAPPINGS:
            raise self.error(0x14, f"mapping count {h.mapping_count} is not between 1 and {MAX_MAPPINGS}")
        self._array_range(h.mapping_offset, h.mapping_count, MappingInfo.SIZE, "mappings", 0x10)
        plain = [
            MappingInfo.unpack_from(self.data, h.mapping_offset + i * MappingInfo.SIZE)
            for i in range(h.mapping_count)
        ]
        if h.has_field("mapping_with_slide_count") and h.mapping_with_slide_count:
            if h.mapping_with_slide_count != h.mapping_count:
                raise self.error(
                    0x13C,
                    f"{h.mapping_with_slide_count} mappings with slide info but {h.mapping_count} mappings",
                )
            at = h.mapping_with_slide_offset
            self._array_range(
                at, h.mapping_count, MappingAndSlideInfo.SIZE, "mappings with slide info", 0x138
            )
            out = []
            for i, p in enumerate(plain):
                m = MappingAndSlideInfo.unpack_from(self.data, at + i * MappingAndSlideInfo.SIZE)
                if (m.address, m.size, m.file_offset) != (p.address, p.size, p.file_offset):
                    raise self.error(
                        at + i * MappingAndSlideInfo.SIZE,
                        f"mapping {i} with slide info ({m.address:#x}+{m.size:#x} @{m.file_offset:#x}) "
                        f"differs from the plain mapping ({p.address:#x}+{p.size:#x} @{p.file_offset:#x})",
                    )
                out.append(
                    Mapping(
                        i,
                        m.address,
                        m.size,
                        m.file_offset,
                        m.max_prot,
                        m.init_prot,
                        m.flags,
                        m.slide_info_file_offset,
                        m.slide_info_file_size,
                    )
                )
            return out
        # before mapping_and_slide_info existed, one slide info blob served mapping 1 (the data)
        legacy = (
            (h.slide_info_offset_unused, h.slide_info_size_unused) if h.slide_info_size_unused else (0, 0)
        )
        return [
            Mapping(
                i,
                p.address,
                p.size,
                p.file_offset,
                p.max_prot,
                p.init_prot,
                0,
                *(legacy if i == 1 else (0, 0)),
            )
            for i, p in enumerate(plain)
        ]

    def _check_ranges(self) -> None:
        h = self.header
        size = len(self.data)
        for m in self.mappings:
            at = h.mapping_offset + m.index * MappingInfo.SIZE
            if m.address + m.size > 1 << 64:
                raise self.error(
                    at, f"mapping {m.index} ({m.address:#x}+{m.size:#x}) wraps around the address space"
                )
            if m.file_offset + m.size > size:
                raise self.error(
                    at,
                    f"mapping {m.index} ({m.file_offset:#x}+{m.size:#x}) extends past the end of the file "
                    f"({size:#x})",
                )
            if m.slide_info_size and m.slide_info_offset + m.slide_info_size > size:
                raise self.error(
                    at,
                    f"slide info of mapping {m.index} ({m.slide_info_offset:#x}+{m.slide_info_size:#x}) "
                    f"extends past the end of the file ({size:#x})",
                )
        if h.code_signature_size and h.code_signature_offset + h.code_signature_size > size:
            raise self.error(
                0x28,
                f"code signature ({h.code_signature_offset:#x}+{h.code_signature_size:#x}) "
                f"extends past the end of the file ({size:#x})",
            )

    @property
    def uuid(self) -> bytes:
        return self.header.uuid

    def cstring(self, offset: int, what: str, at: int | None = None) -> str:
        """A NUL-terminated string at ``offset`` of this file."""
        if offset < 0 or offset >= len(self.data):
            raise self.error(
                at if at is not None else offset, f"{what} offset {offset:#x} is outside the file"
            )
        raw = bytes(self.data[offset : min(offset + _MAX_PATH, len(self.data))])
        end = raw.find(b"\0")
        if end < 0:
            raise self.error(offset, f"{what} is not NUL-terminated")
        return raw[:end].decode("utf-8", "surrogateescape")

    def mapping_bytes(self, mapping: Mapping) -> memoryview:
        return self.data[mapping.file_offset : mapping.file_offset + mapping.size]

    def slide_info(self, index: int, null_links: bool = False) -> tuple[int, np.ndarray] | None:
        """(version, CACHE_POINTER_DTYPE pointers) of mapping ``index``, or None if it has no slide info.

        ``null_links`` also reports the chain links that hold a null pointer (target 0).
        """
        m = self.mappings[index]
        if not m.slide_info_size:
            return None
        blob = self.data[m.slide_info_offset : m.slide_info_offset + m.slide_info_size]
        return decode_slide_info(
            blob, self.mapping_bytes(m), m.address, self.path, m.slide_info_offset, null_links=null_links
        )

    def slide_info_windows(self, index: int, window: int = SLIDE_WINDOW) -> Iterator[np.ndarray]:
        """The pointers of mapping ``index`` (as :meth:`slide_info`, offsets from the mapping's
        start), decoded ``window`` bytes of the mapping at a time: each window's page starts
        (and v2's page extras) as a blob of its own, the window's pages released from this
        process's resident set once decoded. A mapping of one window, or slide info v1, is
        decoded whole; so is a mapping where a window fails, for the exact error."""
        m = self.mappings[index]
        version = self.slide_info_version(index)
        blob = self.data[m.slide_info_offset : m.slide_info_offset + m.slide_info_size]
        cls = SlideInfo2 if version == 2 else SlideInfo3 if version == 3 else SlideInfo5
        h = None
        if m.size > window and version in (2, 3, 5) and len(blob) >= cls.SIZE:
            h = cls.unpack_from(blob, 0)
            if h.page_size <= 0 or window % h.page_size:
                h = None
        if h is None:
            decoded = self.slide_info(index)
            if decoded is not None:
                yield decoded[1]
            return
        try:
            page = h.page_size
            starts_at = h.page_starts_offset if isinstance(h, SlideInfo2) else cls.SIZE
            per_window = window // page
            for first in range(0, h.page_starts_count, per_window):
                n = min(per_window, h.page_starts_count - first)
                starts = bytes(blob[starts_at + 2 * first : starts_at + 2 * (first + n)])
                if isinstance(h, SlideInfo2):
                    extras = bytes(
                        blob[h.page_extras_offset : h.page_extras_offset + 2 * h.page_extras_count]
                    )
                    head = dataclasses.replace(
                        h,
                        page_starts_offset=SlideInfo2.SIZE,
                        page_starts_count=n,
                        page_extras_offset=SlideInfo2.SIZE + 2 * n,
                    )
                    sub = head.pack() + starts + extras
                else:
                    sub = dataclasses.replace(h, page_starts_count=n).pack() + starts
                lo = first * page
                mapping = self.mapping_bytes(m)[lo : lo + n * page]
                _, ptrs = decode_slide_info(sub, mapping, m.address + lo, self.path, m.slide_info_offset)
                ptrs["offset"] += np.uint64(lo)
                del mapping
                self.release_pages()
                yield ptrs
        except CacheFormatError:
            self.slide_info(index)  # the whole mapping's own error
            raise

    def release_pages(self) -> None:
        """Drop the pages read so far from this process's resident set (they stay readable)."""
        release_pages(self._mmap)

    def slide_info_version(self, index: int) -> int | None:
        """The version word of mapping ``index``'s slide info (cheap: nothing is decoded)."""
        m = self.mappings[index]
        if m.slide_info_size < 4:
            return None
        return int.from_bytes(self.data[m.slide_info_offset : m.slide_info_offset + 4], "little")

    def close(self) -> None:
        """Unmap the file. Views handed out keep the mapping alive until they are dropped."""
        try:
            self.data.release()
        except BufferError:
            return  # numpy views still use it; the mapping goes away with them
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                return
            self._mmap = None


class DyldCache:
    """A whole cache: main file, subcaches, optional ``.symbols`` file."""

    def __init__(
        self,
        main: CacheFile,
        subcaches: list[SubcacheRef],
        files: list[CacheFile],
        symbols_file: CacheFile | None,
    ) -> None:
        self.main = main
        self.path = main.path
        #: the subcache entries of the main header, in order
        self.subcaches = subcaches
        #: main file first, then one per subcache entry (the .symbols file is not mapped: see symbols_file)
        self.files = files
        self.symbols_file = symbols_file
        ranges = sorted(
            ((m.address, m.end, f, m) for f in files for m in f.mappings if m.size), key=lambda r: r[0]
        )
        self._starts = [r[0] for r in ranges]
        self._ranges = ranges

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(cls, main_path: str | os.PathLike[str]) -> DyldCache:
        """Open the main cache file and every file it refers to."""
        path = os.fspath(main_path)
        main = CacheFile(path)
        opened = [main]
        try:
            h = main.header
            base = path[: -len(DEVELOPMENT_SUFFIX)] if path.endswith(DEVELOPMENT_SUFFIX) else path
            subcaches: list[SubcacheRef] = []
            if h.has_field("sub_cache_array_count") and h.sub_cache_array_count:
                subcaches = cls._subcache_refs(main, base)
            for ref in subcaches:
                entry_at = h.sub_cache_array_offset + ref.index * (
                    SubcacheEntry.SIZE if h.has_field("cache_sub_type") else SubcacheEntryV1.SIZE
                )
                if not os.path.exists(ref.path):
                    raise main.error(entry_at, f"subcache file {ref.path} is missing")
                sub = CacheFile(ref.path, ref.suffix)
                opened.append(sub)
                cls._check_member(main, sub, ref.uuid, entry_at, "subcache")
                if sub.mappings[0].address != main_base(main) + ref.cache_vm_offset:
                    raise main.error(
                        entry_at,
                        f"subcache {ref.suffix} starts at {sub.mappings[0].address:#x}, "
                        f"not at base + cacheVMOffset ({main_base(main) + ref.cache_vm_offset:#x})",
                    )
            symbols = None
            if h.has_field("symbol_file_uuid") and any(h.symbol_file_uuid):
                sym_path = base + SYMBOLS_SUFFIX
                at = CacheHeader.offset_of("symbol_file_uuid")
                if not os.path.exists(sym_path):
                    raise main.error(at, f"local symbols file {sym_path} is missing")
                symbols = CacheFile(sym_path, SYMBOLS_SUFFIX)
                opened.append(symbols)
                cls._check_member(main, symbols, h.symbol_file_uuid, at, "local symbols file")
            return cls(main, subcaches, opened[: 1 + len(subcaches)], symbols)
        except BaseException:
            for f in opened:
                f.close()
            raise

    @staticmethod
    def _subcache_refs(main: CacheFile, base: str) -> list[SubcacheRef]:
        h = main.header
        count = h.sub_cache_array_count
        if count > MAX_SUBCACHES:
            raise main.error(0x18C, f"subcache count {count} is more than {MAX_SUBCACHES}")
        # headers that reach cacheSubType use the 56-byte entries with a file suffix
        v2 = h.has_field("cache_sub_type")
        size = SubcacheEntry.SIZE if v2 else SubcacheEntryV1.SIZE
        main._array_range(h.sub_cache_array_offset, count, size, "subcache entries", 0x188)
        refs = []
        for i in range(count):
            at = h.sub_cache_array_offset + i * size
            if v2:
                e = SubcacheEntry.unpack_from(main.data, at)
                suffix, uuid, vm_offset = e.suffix, e.uuid, e.cache_vm_offset
                if not suffix or "/" in suffix:
                    raise main.error(at + 24, f"subcache {i} has file suffix '{printable(suffix)}'")
            else:
                e1 = SubcacheEntryV1.unpack_from(main.data, at)
                suffix, uuid, vm_offset = f".{i + 1}", e1.uuid, e1.cache_vm_offset
            refs.append(SubcacheRef(i, suffix, uuid, vm_offset, base + suffix))
        return refs

    @staticmethod
    def _check_member(main: CacheFile, member: CacheFile, uuid: bytes, at: int, what: str) -> None:
        if member.header.magic != main.header.magic:
            raise member.error(
                0, f"{what} magic {show_bytes(member.header.magic)} differs from the main file's"
            )
        if member.header.uuid != uuid:
            raise main.error(
                at,
                f"{what} {member.path} has UUID {uuid_string(member.header.uuid)}, "
                f"expected {uuid_string(uuid)}",
            )

    def close(self) -> None:
        for f in [*self.files, *([self.symbols_file] if self.symbols_file else [])]:
            f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- header facts ------------------------------------------------------------------------------

    @property
    def header(self) -> CacheHeader:
        return self.main.header

    @property
    def arch(self) -> str:
        return self.header.arch or "unknown"

    @property
    def platform(self) -> int:
        return self.header.platform if self.header.has_field("platform") else 0

    @property
    def uuid(self) -> bytes:
        return self.header.uuid

    @property
    def base_address(self) -> int:
        return main_base(self.main)

    # -- images ------------------------------------------------------------------------------------

    @cached_property
    def images(self) -> list[CacheImage]:
        """The cache dylibs from the main file's image array (imagesOffset, or imagesOffsetOld)."""
        main = self.main
        h = main.header
        if h.has_field("images_count"):
            offset, count, at = h.images_offset, h.images_count, 0x1C0
        else:
            offset, count, at = h.images_offset_old, h.images_count_old, 0x18
        main._array_range(offset, count, ImageInfo.SIZE, "image infos", at)
        out = []
        for i in range(count):
            rec_at = offset + i * ImageInfo.SIZE
            info = ImageInfo.unpack_from(main.data, rec_at)
            path = main.cstring(info.path_file_offset, f"path of image {i}", rec_at + 24)
            out.append(CacheImage(i, path, info.address, info.mod_time, info.inode))
        return out

    @cached_property
    def image_text_infos(self) -> list[ImageText]:
        main = self.main
        h = main.header
        if not h.has_field("images_text_count") or not h.images_text_count:
            return []
        main._array_range(
            h.images_text_offset, h.images_text_count, ImageTextInfo.SIZE, "image text infos", 0x88
        )
        out = []
        for i in range(h.images_text_count):
            rec_at = h.images_text_offset + i * ImageTextInfo.SIZE
            t = ImageTextInfo.unpack_from(main.data, rec_at)
            path = main.cstring(t.path_offset, f"path of image text info {i}", rec_at + 28)
            out.append(ImageText(i, t.uuid, t.load_address, t.text_segment_size, path))
        return out

    # -- addresses ---------------------------------------------------------------------------------

    def mapping_for(self, address: int) -> tuple[CacheFile, Mapping] | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            start, end, f, m = self._ranges[i]
            if start <= address < end:
                return f, m
        return None

    def address_to_file(self, address: int) -> tuple[CacheFile, int]:
        """(file, file offset) holding the unslid ``address``."""
        found = self.mapping_for(address)
        if found is None:
            raise CacheFormatError(
                self.path, None, f"address {address:#x} is not in any mapping of the cache"
            )
        f, m = found
        return f, m.file_offset + (address - m.address)

    def read(self, address: int, size: int) -> memoryview:
        """``size`` bytes at ``address``; they must lie in one mapping."""
        found = self.mapping_for(address)
        if found is None or size < 0 or address + size > found[1].end:
            raise CacheFormatError(self.path, None, f"{address:#x}+{size:#x} does not lie inside one mapping")
        f, m = found
        off = m.file_offset + (address - m.address)
        return f.data[off : off + size]

    # -- images as Mach-O --------------------------------------------------------------------------

    def _linkedit_address(self, f: CacheFile, header_offset: int, what: str) -> int | None:
        """vmaddr of an image's __LINKEDIT, by a light walk of its load commands."""
        data = f.data
        if header_offset + MachHeader64.SIZE > len(data):
            raise f.error(header_offset, f"{what}: mach header extends past the end of the file")
        mh = MachHeader64.unpack_from(data, header_offset)
        if mh.magic != C.MH_MAGIC_64:
            raise f.error(header_offset, f"{what}: no 64-bit mach header (magic {mh.magic:#010x})")
        end = header_offset + MachHeader64.SIZE + mh.sizeofcmds
        if end > len(data):
            raise f.error(header_offset, f"{what}: load commands extend past the end of the file")
        off = header_offset + MachHeader64.SIZE
        for _ in range(mh.ncmds):
            if off + LoadCommandHeader.SIZE > end:
                break
            lc = LoadCommandHeader.unpack_from(data, off)
            if lc.cmdsize < LoadCommandHeader.SIZE:
                break
            if lc.cmd == C.LC_SEGMENT_64 and off + SegmentCommand64.SIZE <= end:
                seg = SegmentCommand64.unpack_from(data, off)
                if seg.name == "__LINKEDIT":
                    return seg.vmaddr
            off += lc.cmdsize
        return None

    def _image_files(self, index: int) -> tuple[CacheFile, int, CacheFile, str]:
        """(file holding the mach header, its offset there, file holding __LINKEDIT, display name)."""
        images = self.images
        if not 0 <= index < len(images):
            raise IndexError(f"image index {index} (the cache has {len(images)})")
        img = images[index]
        f, off = self.address_to_file(img.address)
        name = f"{f.path}({img.path})"
        le_addr = self._linkedit_address(f, off, name)
        le_file = f
        if le_addr is not None:
            found = self.mapping_for(le_addr)
            if found is None:
                raise f.error(off, f"{name}: __LINKEDIT at {le_addr:#x} is not in any mapping")
            le_file = found[0]
        return f, off, le_file, name

    def image_macho(self, index: int) -> MachOFile:
        """Image ``index`` parsed as a Mach-O; its LINKEDIT offsets index the file holding __LINKEDIT."""
        f, off, le_file, name = self._image_files(index)
        return MachOFile(f.data, name, header_offset=off, linkedit=le_file.data, in_cache=True)

    def linkedit_file(self, index: int) -> CacheFile:
        """The file whose offsets image ``index``'s LINKEDIT load commands give."""
        return self._image_files(index)[2]

    # -- naming images -----------------------------------------------------------------------------

    def image_paths(self) -> list[list[str]]:
        """Per image: its install path, then its aliases from the dylibs trie (in byte order)."""
        images = self.images
        out = [[img.path] for img in images]
        for path, index in sorted(self.dylibs_trie().items(), key=lambda kv: kv[0].encode()):
            if path != images[index].path:
                out[index].append(path)
        return out

    def find_image(self, name: str) -> int:
        """The index of the image ``name`` names: an install path, an alias of the dylibs trie, or
        (with no ``/``) a file name that belongs to one image only. UsageError otherwise."""
        paths = self.image_paths()
        exact = [i for i, names in enumerate(paths) if name in names]
        if exact:
            return exact[0]
        if "/" not in name:
            by_leaf = sorted(
                {i for i, names in enumerate(paths) for p in names if p.rsplit("/", 1)[-1] == name}
            )
            if len(by_leaf) == 1:
                return by_leaf[0]
            if by_leaf:
                which = ", ".join(paths[i][0] for i in by_leaf)
                raise UsageError(
                    f"{self.path}: '{name}' names {len(by_leaf)} images ({which}); give a full path"
                )
        raise UsageError(
            f"{self.path}: no image '{name}' in the cache (give an install name, an alias or a file name)"
        )

    # -- global tables -----------------------------------------------------------------------------

    def dylibs_trie(self) -> dict[str, int]:
        """Every path in the dylibs trie (install names and aliases) -> image index."""
        from ..macho.exports_trie import read_trie

        h = self.header
        if not h.has_field("dylibs_trie_size") or not h.dylibs_trie_size:
            return {}
        data = self.read(h.dylibs_trie_addr, h.dylibs_trie_size)
        f, off = self.address_to_file(h.dylibs_trie_addr)
        try:
            entries = read_trie(data, f.path, off)
        except MachOFormatError as exc:
            raise CacheFormatError(exc.path, exc.offset, f"dylibs trie: {exc.message}") from None
        out: dict[str, int] = {}
        count = len(self.images)
        for key, payload in entries:
            name = key.decode("utf-8", "surrogateescape")
            try:
                index, _ = uleb_decode(payload)
            except ValueError as exc:
                raise CacheFormatError(f.path, off, f"dylibs trie entry '{printable(name)}': {exc}") from None
            if index >= count:
                raise CacheFormatError(
                    f.path, off, f"dylibs trie entry '{printable(name)}' names image {index} of {count}"
                )
            out[name] = index
        return out

    def local_symbols(self) -> LocalSymbols | None:
        """The unmapped locals: the .symbols file's, else the main file's (older caches), else None."""
        holder = self.symbols_file or self.main
        h = holder.header
        if not h.local_symbols_offset or not h.local_symbols_size:
            return None
        base, size = h.local_symbols_offset, h.local_symbols_size
        if base + size > len(holder.data):
            raise holder.error(0x48, f"local symbols ({base:#x}+{size:#x}) extend past the end of the file")
        if size < LocalSymbolsInfo.SIZE:
            raise holder.error(base, "local symbols are too small for their info record")
        info = LocalSymbolsInfo.unpack_from(holder.data, base)
        vm_offsets = h.has_field("symbol_file_uuid")
        entry_cls: type[LocalSymbolsEntry64] | type[LocalSymbolsEntry32] = (
            LocalSymbolsEntry64 if vm_offsets else LocalSymbolsEntry32
        )

        def inside(off: int, length: int, what: str) -> None:
            if off + length > size:
                raise holder.error(
                    base, f"local symbols: {what} ({off:#x}+{length:#x}) run past their {size:#x} bytes"
                )

        inside(info.nlist_offset, info.nlist_count * NLIST64_DTYPE.itemsize, "nlist array")
        inside(info.strings_offset, info.strings_size, "strings")
        inside(info.entries_offset, info.entries_count * entry_cls.SIZE, "entries")
        nlist = np.frombuffer(holder.data, NLIST64_DTYPE, info.nlist_count, base + info.nlist_offset).copy()
        strings = bytes(
            holder.data[base + info.strings_offset : base + info.strings_offset + info.strings_size]
        )
        entries = []
        for i in range(info.entries_count):
            at = base + info.entries_offset + i * entry_cls.SIZE
            e = entry_cls.unpack_from(holder.data, at)
            if e.nlist_start_index + e.nlist_count > info.nlist_count:
                raise holder.error(
                    at,
                    f"local symbols entry {i} ({e.nlist_start_index}+{e.nlist_count}) "
                    f"exceeds {info.nlist_count} nlists",
                )
            entries.append((e.dylib_offset, e.nlist_start_index, e.nlist_count))
        return LocalSymbols(holder.path, base, nlist, strings, entries, vm_offsets)


def main_base(main: CacheFile) -> int:
    """The cache base: sharedRegionStart of the main header, else its first mapping's address."""
    h = main.header
    if h.has_field("shared_region_start") and h.shared_region_start:
        return h.shared_region_start
    return main.mappings[0].address
