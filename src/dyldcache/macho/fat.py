"""Universal ("fat") files: the fat header, its slices, and slice selection by arch."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MachOFormatError
from . import constants as C
from .cpu import arch_name
from .format import FatArch, FatArch64, FatHeader

#: more slices than this is certainly garbage (Apple's tools use a similar sanity bound)
_MAX_FAT_ARCHS = 64


@dataclass(frozen=True, slots=True)
class FatSlice:
    cputype: int
    cpusubtype: int
    offset: int
    size: int
    align: int

    @property
    def arch(self) -> str:
        return arch_name(self.cputype, self.cpusubtype)


def is_fat(data: bytes | memoryview) -> bool:
    if len(data) < 4:
        return False
    magic = int.from_bytes(data[:4], "big")
    return magic in (C.FAT_MAGIC, C.FAT_MAGIC_64)


def parse_fat(data: bytes | memoryview, path: str) -> list[FatSlice]:
    """The slices of a fat file; every slice is checked to lie inside the file."""
    header = FatHeader.read(data, 0, path, "fat header", MachOFormatError)
    is64 = header.magic == C.FAT_MAGIC_64
    if header.magic not in (C.FAT_MAGIC, C.FAT_MAGIC_64):
        raise MachOFormatError(path, 0, f"bad fat magic {header.magic:#x}")
    if header.nfat_arch == 0 or header.nfat_arch > _MAX_FAT_ARCHS:
        raise MachOFormatError(path, 4, f"fat header has {header.nfat_arch} slices")
    record = FatArch64 if is64 else FatArch
    slices: list[FatSlice] = []
    for i in range(header.nfat_arch):
        off = FatHeader.SIZE + i * record.SIZE
        fa = record.read(data, off, path, f"fat_arch[{i}]", MachOFormatError)
        if fa.offset + fa.size > len(data) or fa.size == 0:
            raise MachOFormatError(
                path,
                off,
                f"fat slice {i} ({fa.offset:#x}+{fa.size:#x}) is outside the file ({len(data):#x} bytes)",
            )
        if fa.offset < FatHeader.SIZE + header.nfat_arch * record.SIZE:
            raise MachOFormatError(path, off, f"fat slice {i} overlaps the fat header")
        slices.append(FatSlice(fa.cputype, fa.cpusubtype, fa.offset, fa.size, fa.align))
    return slices


def select_slice(slices: list[FatSlice], arch: str | None, path: str) -> FatSlice:
    """The slice for ``arch``; with no arch, the only slice (or an error listing them)."""
    names = [s.arch for s in slices]
    if arch is None:
        if len(slices) == 1:
            return slices[0]
        raise MachOFormatError(
            path, None, f"fat file has several slices ({', '.join(names)}); choose one with an arch"
        )
    for s in slices:
        if s.arch == arch:
            return s
    raise MachOFormatError(path, None, f"fat file has no {arch} slice (it has {', '.join(names)})")


def thin_arch(data: bytes | memoryview) -> str | None:
    """The arch name of a thin Mach-O header (32- or 64-bit), or None if ``data`` is not one."""
    if len(data) < 12:
        return None
    magic = int.from_bytes(data[0:4], "little")
    if magic not in (C.MH_MAGIC, C.MH_MAGIC_64):
        return None
    return arch_name(int.from_bytes(data[4:8], "little"), int.from_bytes(data[8:12], "little"))
