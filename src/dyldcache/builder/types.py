"""Typed address spaces of the builder.

The most common bug in a cache builder is mixing an input dylib's VM address with a
cache VM address, or a VM offset with a file offset. Each space is a ``NewType`` so
mypy rejects a mix-up at no run-time cost; the legal conversions are the small
functions below (arithmetic on a NewType yields a plain int, so results are re-typed
here and nowhere else). numpy arrays name their space in the variable name instead
(``cache_vm_addrs``).
"""

from __future__ import annotations

from typing import NewType

#: a VM address inside an input dylib, as linked
InputVMAddr = NewType("InputVMAddr", int)
#: a file offset inside an input dylib (from the start of its slice)
InputFileOffset = NewType("InputFileOffset", int)
#: an unslid VM address inside the shared region
CacheVMAddr = NewType("CacheVMAddr", int)
#: a VM offset from the cache base address
CacheVMOffset = NewType("CacheVMOffset", int)
#: a byte offset inside one cache file
CacheFileOffset = NewType("CacheFileOffset", int)
#: sizes
VMSize = NewType("VMSize", int)
FileSize = NewType("FileSize", int)


def vm_offset(addr: CacheVMAddr, base: CacheVMAddr) -> CacheVMOffset:
    return CacheVMOffset(addr - base)


def vm_addr(base: CacheVMAddr, offset: CacheVMOffset) -> CacheVMAddr:
    return CacheVMAddr(base + offset)


def vm_add(addr: CacheVMAddr, size: int) -> CacheVMAddr:
    return CacheVMAddr(addr + size)


def file_add(offset: CacheFileOffset, size: int) -> CacheFileOffset:
    return CacheFileOffset(offset + size)


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & -alignment


def align_vm(addr: CacheVMAddr, alignment: int) -> CacheVMAddr:
    return CacheVMAddr(align_up(addr, alignment))


def align_file(offset: CacheFileOffset, alignment: int) -> CacheFileOffset:
    return CacheFileOffset(align_up(offset, alignment))
