"""Typed address spaces of the builder.

The most common bug in a cache builder is mixing an input dylib's VM address with a cache VM
address, or a VM offset with a file offset. Each space is a ``NewType`` so mypy rejects a
mix-up at no run-time cost (``tests/test_address_types.py`` checks that it does): ``Chunk``,
``Region`` and ``SubCache`` (``layout.py``), the segments of a cache dylib
(``cache_dylib.py``) and the emit code carry these types. Arithmetic on a NewType yields a
plain ``int``, so a result is typed again by one of the small conversions below, and nowhere
else. Sizes stay plain ``int``. numpy arrays name their space in the variable name instead
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
#: a VM offset from the cache base address (the header's *_offset fields that are not file offsets)
CacheVMOffset = NewType("CacheVMOffset", int)
#: a byte offset inside one cache file
CacheFileOffset = NewType("CacheFileOffset", int)

#: what layout has not decided yet
UNPLACED_VM = CacheVMAddr(-1)
UNPLACED_FILE = CacheFileOffset(-1)
#: the start of a space (region defaults before layout, empty fields)
ZERO_VM = CacheVMAddr(0)
ZERO_FILE = CacheFileOffset(0)


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & -alignment


def vm_offset(addr: CacheVMAddr, base: CacheVMAddr) -> CacheVMOffset:
    """How far ``addr`` lies from the cache base."""
    return CacheVMOffset(addr - base)


def vm_add(addr: CacheVMAddr, size: int) -> CacheVMAddr:
    return CacheVMAddr(addr + size)


def file_add(offset: CacheFileOffset, size: int) -> CacheFileOffset:
    return CacheFileOffset(offset + size)


def align_vm(addr: CacheVMAddr, alignment: int) -> CacheVMAddr:
    return CacheVMAddr(align_up(addr, alignment))


def align_file(offset: CacheFileOffset, alignment: int) -> CacheFileOffset:
    return CacheFileOffset(align_up(offset, alignment))


def vm_of_file_offset(
    offset: CacheFileOffset, region_file: CacheFileOffset, region_vm: CacheVMAddr
) -> CacheVMAddr:
    """The VM address of a file offset inside a region (file space equals VM space there)."""
    return CacheVMAddr(region_vm + (offset - region_file))


def file_offset_of_vm(
    addr: CacheVMAddr, region_vm: CacheVMAddr, region_file: CacheFileOffset
) -> CacheFileOffset:
    """The file offset of a VM address inside a region."""
    return CacheFileOffset(region_file + (addr - region_vm))


def moved_address(addr: InputVMAddr, input_start: InputVMAddr, cache_start: CacheVMAddr) -> CacheVMAddr:
    """Where an input address lands when the input range starting at ``input_start`` is
    placed at ``cache_start`` (a segment or a section moved whole)."""
    return CacheVMAddr(cache_start + (addr - input_start))


def moved_file_offset(
    offset: InputFileOffset, input_start: InputFileOffset, cache_start: CacheFileOffset
) -> CacheFileOffset:
    """The file-offset counterpart of :func:`moved_address`."""
    return CacheFileOffset(cache_start + (offset - input_start))
