"""Synthesized split seg info against the split seg info a linker wrote (issue 8, item 3).

For a dylib that has LC_SEGMENT_SPLIT_INFO, the synthesizer runs with the original ignored and
its entries are compared with the original's, decoded by hand (``oracles.decode_split_seg_v2``,
``oracles.decode_split_seg_v1``) from the raw load command; sections and segments are read from
the raw load commands too. Shared by tests/test_split_seg_synth.py and
benchmarks/synth_split_seg.py.

What must be covered is every original entry that changes bytes when the builder moves the
segments apart: those whose location and target lie in different segments (a reference within
one segment never changes), and every pointer entry (the builder takes each pointer's new target
from it). With ``keep_page_offsets`` (the builder keeps each segment's offset in its 4 KiB page)
ARM64_OFF12 entries change nothing and are not required. A v2 entry is covered by a synthesized
one of the same kind at the same location with the same target (ARM64_ADRP: the same page); a v1
location (kind 1: a 32-bit value in __TEXT that moves with the data) by a DELTA_32 or
IMAGE_OFF_32 entry there whose target is in another segment. Extras are synthesized entries that
change bytes at a location the original does not list.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from oracles import LC_SEGMENT_64, LC_SEGMENT_SPLIT_INFO, decode_split_seg_v2, load_command_payload

POINTER_64, DELTA_32, ARM64_ADRP, ARM64_OFF12, IMAGE_OFF_32, THREADED_POINTER_64 = 2, 3, 5, 6, 12, 13
POINTER_KINDS = (POINTER_64, THREADED_POINTER_64)
CPU_TYPE_X86_64, CPU_SUBTYPE_X86_64_ALL = 0x01000007, 3


def thin(path: Path, arch: str | None = None) -> bytes:
    """The bytes of ``path``, or of its x86_64 slice if it is a fat file (big-endian fat_header
    and fat_arch records: cputype, cpusubtype, offset, size, align)."""
    data = path.read_bytes()
    if data[:4] != b"\xca\xfe\xba\xbe":
        return data
    (count,) = struct.unpack_from(">I", data, 4)
    for k in range(count):
        cputype, subtype, offset, size, _ = struct.unpack_from(">5I", data, 8 + 20 * k)
        if arch == "x86_64" and cputype == CPU_TYPE_X86_64 and subtype & 0xFF == CPU_SUBTYPE_X86_64_ALL:
            return data[offset : offset + size]
    raise AssertionError(f"{path} has no {arch} slice")


@dataclass
class Layout:
    """Split-seg section table (0 = mach header) of a thin image, from its load commands."""

    #: per section index: address, segment index
    addr: list[int]
    segment: list[int]
    names: list[str]
    #: per segment: (start, end) VM range
    segments: list[tuple[int, int]]

    def segment_of(self, address: int) -> int | None:
        return next((i for i, (a, b) in enumerate(self.segments) if a <= address < b), None)


def layout(data: bytes) -> Layout:
    (ncmds,) = struct.unpack_from("<I", data, 16)
    off = 32
    segs: list[tuple[int, int]] = []
    addr: list[int] = []
    segment: list[int] = []
    names: list[str] = []
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == LC_SEGMENT_64:
            vmaddr, vmsize = struct.unpack_from("<QQ", data, off + 24)
            (nsects,) = struct.unpack_from("<I", data, off + 64)
            for k in range(nsects):
                rec = off + 72 + 80 * k
                sect = data[rec : rec + 16].rstrip(b"\0").decode()
                seg = data[rec + 16 : rec + 32].rstrip(b"\0").decode()
                addr.append(struct.unpack_from("<Q", data, rec + 32)[0])
                segment.append(len(segs))
                names.append(f"{seg},{sect}")
            segs.append((vmaddr, vmaddr + vmsize))
        off += size
    base = next(a for a, b in segs if b > a)  # the mach header starts the first mapped segment
    return Layout([base, *addr], [0, *segment], ["mach header", *names], segs)


@dataclass
class Coverage:
    """One dylib: original entries that must be covered, how many are, what is extra."""

    version: int
    required: int = 0
    missing: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)

    @property
    def covered(self) -> int:
        return self.required - len(self.missing)


def _synthesized(lay: Layout, entries: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(from section, from offset) -> [(kind, target address)]"""
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for e in entries.tolist():
        kind, f, t, fo, to = e
        out.setdefault((f, fo), []).append((kind, lay.addr[t] + to))
    return out


def compare(data: bytes, entries: np.ndarray, *, keep_page_offsets: bool) -> Coverage:
    """Coverage of the original split seg info of ``data`` (a thin image) by ``entries``."""
    raw = load_command_payload(data, LC_SEGMENT_SPLIT_INFO)
    assert raw, "the image has no split seg info to compare with"
    lay = layout(data)
    syn = _synthesized(lay, entries)

    def changes_bytes(kind: int, at: tuple[int, int], target: int) -> bool:
        if kind in POINTER_KINDS:
            return True
        if kind == ARM64_OFF12 and keep_page_offsets:
            return False
        return lay.segment[at[0]] != lay.segment_of(target)

    if raw[0] == 0x7F:
        cov = Coverage(2)
        listed: set[tuple[int, int, int]] = set()
        for e in decode_split_seg_v2(raw):
            at = (e.from_section, e.from_offset)
            target = lay.addr[e.to_section] + e.to_offset
            listed.add((*at, e.kind))
            if not changes_bytes(e.kind, at, target):
                continue
            cov.required += 1
            page = e.kind == ARM64_ADRP  # an ADRP entry only says which page
            if not any(
                k == e.kind and (t >> 12 == target >> 12 if page else t == target) for k, t in syn.get(at, [])
            ):
                cov.missing.append(f"kind {e.kind} at {lay.names[at[0]]}+{at[1]:#x} -> {target:#x}")
        for at, found in syn.items():
            for kind, target in found:
                if (*at, kind) not in listed and changes_bytes(kind, at, target):
                    cov.extras.append(f"kind {kind} at {lay.names[at[0]]}+{at[1]:#x} -> {target:#x}")
        return cov

    from oracles import decode_split_seg_v1 as decode_v1

    cov = Coverage(1)
    v1 = {offset for kind, offset in decode_v1(raw) if kind == 1}
    base = lay.addr[0]
    ours = {
        lay.addr[at[0]] + at[1] - base
        for at, found in syn.items()
        for kind, target in found
        if kind in (DELTA_32, IMAGE_OFF_32) and lay.segment[at[0]] != lay.segment_of(target)
    }
    cov.required = len(v1)
    cov.missing = [f"v1 kind 1 at {o:#x}" for o in sorted(v1 - ours)]
    cov.extras = [f"32-bit value at {o:#x}" for o in sorted(ours - v1)]
    return cov
