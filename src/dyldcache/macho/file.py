"""The Mach-O reader: one thin 64-bit image (:class:`MachOFile`), from a file, a fat slice or a
cache, with its LINKEDIT encodings decoded on request.

:class:`~dyldcache.macho.image.MachOImage` holds the header and the load commands; each
LINKEDIT encoding is decoded by the module that owns it (exports trie, chained fixups or
dyld-info opcodes, split seg info, function starts), and this class caches the results.
"""

from __future__ import annotations

import mmap
import os
from functools import cached_property

import numpy as np

from ..errors import MachOFormatError
from . import constants as C
from .bind_opcodes import read_binds, read_weak_binds
from .chained_fixups import read_chained_fixups
from .commands import Section, Segment, format_version
from .exports_trie import Export, read_exports
from .fat import is_fat, parse_fat, select_slice
from .fixups import Fixups, empty_fixups
from .function_starts import read_function_starts
from .image import MachOImage
from .rebase_opcodes import read_rebases
from .split_seg import SplitSegInfo, read_split_seg

#: Section, Segment and format_version are re-exported: readers of a file use them with it
__all__ = [
    "MachOFile",
    "MappedFile",
    "Section",
    "Segment",
    "format_version",
    "open_macho",
    "parse_macho",
    "release_pages",
]


class MachOFile(MachOImage):
    """One thin 64-bit Mach-O image held in a buffer (usually an mmap), with its decoders."""

    LINKEDIT_DECODES = (*MachOImage.LINKEDIT_DECODES, "exports", "fixups", "split_seg", "function_starts")

    @cached_property
    def exports(self) -> list[Export]:
        found = self.exports_trie_bytes()
        if found is None:
            return []
        raw, off = found
        return read_exports(raw, self.path, off + self.file_offset)

    @cached_property
    def fixups(self) -> Fixups:
        return _read_fixups(self)

    @cached_property
    def split_seg(self) -> SplitSegInfo | None:
        lc = self.linkedit_commands.get(C.LC_SEGMENT_SPLIT_INFO)
        if lc is None or lc.datasize == 0:
            return None
        return read_split_seg(
            self.linkedit[lc.dataoff : lc.dataoff + lc.datasize], self.path, lc.dataoff + self.file_offset
        )

    @cached_property
    def function_starts(self) -> np.ndarray:
        """VM addresses of the function starts (uint64 array)."""
        raw = self.linkedit_data(C.LC_FUNCTION_STARTS)
        if raw is None:
            return np.zeros(0, dtype=np.uint64)
        lc = self.linkedit_commands[C.LC_FUNCTION_STARTS]
        return read_function_starts(raw, self.base_address, self.path, lc.dataoff + self.file_offset)


def _read_fixups(image: MachOImage) -> Fixups:
    """All fixups of an image, from LC_DYLD_CHAINED_FIXUPS or the LC_DYLD_INFO opcodes."""
    if C.LC_DYLD_CHAINED_FIXUPS in image.linkedit_commands:
        return read_chained_fixups(image)
    if image.dyld_info_command is not None:
        rebases = read_rebases(image)
        binds, imports = read_binds(image)
        records = np.concatenate([rebases, binds])
        records = records[np.argsort(records["address"], kind="stable")]
        return Fixups(records, imports, "opcodes", weak_binds=read_weak_binds(image))
    return Fixups(empty_fixups(), [], "none")


class MappedFile:
    """An mmap of a whole file that stays open while images read from it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise MachOFormatError(self.path, None, f"cannot open: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                self._mmap: mmap.mmap | None = None
                self.data: memoryview = memoryview(b"")
            else:
                self._mmap = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                self.data = memoryview(self._mmap)
        except OSError as exc:
            raise MachOFormatError(self.path, None, f"cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)

    def release_pages(self) -> None:
        """Drop the pages read so far from this process's resident set (the mapping stays
        valid: a later read maps them again from the page cache)."""
        release_pages(self._mmap)

    def close(self) -> None:
        """Release the mapping; views handed out must have been dropped first."""
        self.data.release()
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None


def release_pages(mm: mmap.mmap | None) -> None:
    """``madvise(MADV_DONTNEED)`` on a shared file mapping: its pages leave the resident set
    (written ones stay in the page cache, owned by the file). A no-op where it is unsupported."""
    if mm is not None and not mm.closed and _DONTNEED is not None:
        mm.madvise(_DONTNEED)


_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)


def parse_macho(
    data: bytes | bytearray | memoryview | mmap.mmap, path: str, arch: str | None = None
) -> MachOFile:
    """The image in ``data`` (a thin file, or the ``arch`` slice of a fat file)."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    if is_fat(view):
        sl = select_slice(parse_fat(view, path), arch, path)
        return MachOFile(view[sl.offset : sl.offset + sl.size], path, file_offset=sl.offset)
    image = MachOFile(view, path)
    if arch is not None and image.arch != arch:
        raise MachOFormatError(path, None, f"file is {image.arch}, not {arch}")
    return image


def open_macho(path: str | os.PathLike[str], arch: str | None = None) -> MachOFile:
    """Map ``path`` read-only and parse it; the mapping lives as long as the image."""
    mapped = MappedFile(path)
    return parse_macho(mapped.data, mapped.path, arch)
