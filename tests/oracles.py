"""Independent views of a Mach-O file's fixups and split seg info, for the linker and reader tests:
LIEF 1.0.0 for chained fixups (incl. arm64e, which llvm-objdump cannot decode), and a split seg v2
and v1 decoder and a load-command walker written here from the format rules (linker-notes.md §6.2,
cache-format.md §9), sharing no code with dyldcache.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from conftest import python_module

# FixupKind values of dyldcache.macho.fixups, restated so the oracle does not import them
REBASE, BIND, AUTH_REBASE, AUTH_BIND = 0, 1, 2, 3

LC_SEGMENT_64 = 0x19
LC_SEGMENT_SPLIT_INFO = 0x1E


@dataclass(frozen=True)
class LiefFixup:
    address: int
    kind: int
    #: rebases: target vm offset; binds: None
    target: int | None
    high8: int
    #: binds: symbol, library ordinal, total addend (import's + inline)
    symbol: str | None
    ordinal: int | None
    addend: int | None
    weak_import: bool
    key: int
    diversity: int
    addr_div: int


def _lief():  # type: ignore[no-untyped-def]
    python_module("lief")
    import lief

    lief.logging.disable()
    return lief


def lief_chained_fixups(path: str | Path) -> list[LiefFixup]:
    """Every chained fixup of a thin image, decoded by LIEF; sorted by address.

    LIEF's ``ChainedBindingInfo.addend`` is the import's addend and ``sign_extended_addend`` the
    pointer's inline one; their sum is what dyld adds. The auth fields and high8 come from LIEF's
    own bitfield decoder (``ChainedPointerAnalysis``) applied to the raw pointer.
    """
    lief = _lief()
    binary = lief.MachO.parse(str(path)).at(0)
    data = Path(path).read_bytes()
    cf = binary.dyld_chained_fixups
    assert cf is not None, f"{path}: LIEF finds no chained fixups"
    formats = {
        s.segment.index: s.pointer_format for s in cf.chained_starts_in_segments if s.segment is not None
    }
    segs = [(s.virtual_address, s.virtual_size, s.file_offset, s.index) for s in binary.segments]
    A = lief.MachO.ChainedPointerAnalysis
    auth_types = (
        A.dyld_chained_ptr_arm64e_auth_rebase_t,
        A.dyld_chained_ptr_arm64e_auth_bind24_t,
        A.dyld_chained_ptr_arm64e_auth_bind_t,
    )

    def view(address: int):  # type: ignore[no-untyped-def]
        for va, vs, fo, idx in segs:
            if va <= address < va + vs:
                raw = struct.unpack_from("<Q", data, fo + address - va)[0]
                return A.from_value(raw, 8).get_as(formats[idx])
        raise AssertionError(f"{path}: fixup at {address:#x} is in no segment")

    out = []
    for b in cf.bindings:
        v = view(b.address)
        auth = isinstance(v, auth_types)
        out.append(
            LiefFixup(
                b.address,
                AUTH_BIND if auth else BIND,
                None,
                0,
                b.symbol.name,
                b.library_ordinal,
                b.addend + b.sign_extended_addend,
                bool(b.weak_import),
                int(v.key) if auth else 0,
                int(v.diversity) if auth else 0,
                int(v.addr_div) if auth else 0,
            )
        )
    for r in binary.relocations:
        v = view(r.address)
        auth = isinstance(v, auth_types)
        high8 = 0 if auth else int(getattr(v, "high8", 0))
        out.append(
            LiefFixup(
                r.address,
                AUTH_REBASE if auth else REBASE,
                r.target,
                high8,
                None,
                None,
                None,
                False,
                int(v.key) if auth else 0,
                int(v.diversity) if auth else 0,
                int(v.addr_div) if auth else 0,
            )
        )
    return sorted(out, key=lambda f: f.address)


# ---------------------------------------------------------------------------------------------
# split seg info v2, decoded by hand


def load_command_payload(data: bytes, wanted: int) -> bytes | None:
    """The payload of a linkedit_data_command ``wanted`` (cmd, cmdsize, dataoff, datasize)."""
    (ncmds,) = struct.unpack_from("<I", data, 16)
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == wanted:
            dataoff, datasize = struct.unpack_from("<II", data, off + 8)
            return data[dataoff : dataoff + datasize]
        off += size
    return None


def read_uleb(raw: bytes, pos: int) -> tuple[int, int]:
    """A ULEB128 at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def trie_lookup(trie: bytes, key: str | bytes) -> int | None:
    """Walk a dyld trie (exports or dylibs; cache-format.md §4.1) for ``key``: the offset of its
    terminal payload (after the payload-size ULEB), or None when the key is not in the trie."""
    node, rest = 0, key.encode() if isinstance(key, str) else key
    while True:
        size, p = read_uleb(trie, node)
        if not rest:
            return p if size else None
        p += size
        count = trie[p]
        p += 1
        for _ in range(count):
            end = trie.index(b"\0", p)
            edge = trie[p:end]
            child, p = read_uleb(trie, end + 1)
            if rest.startswith(edge):
                node, rest = child, rest[len(edge) :]
                break
        else:
            return None


#: DYLD_CACHE_ADJ_V2_* kinds (mach-o/loader.h) by number, as the tests print them
SPLIT_KIND_NAMES = {
    1: "POINTER_32",
    2: "POINTER_64",
    3: "DELTA_32",
    4: "DELTA_64",
    5: "ARM64_ADRP",
    6: "ARM64_OFF12",
    7: "ARM64_BR26",
    12: "IMAGE_OFF_32",
    13: "THREADED_POINTER_64",
}


@dataclass(frozen=True)
class SplitEntry:
    kind: int
    from_section: int
    to_section: int
    from_offset: int
    to_offset: int


def decode_split_seg_v2(raw: bytes) -> list[SplitEntry]:
    """0x7F, then nested ULEB128 counts: section pairs > to-offsets (deltas) > kinds > from-offsets
    (deltas)."""
    assert raw[0] == 0x7F, f"not split seg v2 (first byte {raw[0]:#x})"
    pos = 1
    out = []
    n_pairs, pos = read_uleb(raw, pos)
    for _ in range(n_pairs):
        from_sect, pos = read_uleb(raw, pos)
        to_sect, pos = read_uleb(raw, pos)
        n_to, pos = read_uleb(raw, pos)
        to_off = 0
        for _ in range(n_to):
            delta, pos = read_uleb(raw, pos)
            to_off += delta
            n_kinds, pos = read_uleb(raw, pos)
            for _ in range(n_kinds):
                kind, pos = read_uleb(raw, pos)
                n_from, pos = read_uleb(raw, pos)
                from_off = 0
                for _ in range(n_from):
                    delta, pos = read_uleb(raw, pos)
                    from_off += delta
                    out.append(SplitEntry(kind, from_sect, to_sect, from_off, to_off))
    # a 0 terminator, then zero padding to 8 bytes
    assert all(b == 0 for b in raw[pos:]), "bytes after the split seg entries are not zero"
    assert len(raw) % 8 == 0, "split seg payload is not padded to 8 bytes"
    return out


def decode_split_seg_v1(raw: bytes) -> list[tuple[int, int]]:
    """(kind, offset from the mach header) of a v1 stream: ``[kind uleb-delta+ 0]* 0``, each kind
    group walking from the start of __TEXT again (cache-format.md §9)."""
    out, pos = [], 0
    while pos < len(raw) and raw[pos] != 0:
        kind, pos = raw[pos], pos + 1
        at = 0
        while True:
            delta, pos = read_uleb(raw, pos)
            if delta == 0:
                break
            at += delta
            out.append((kind, at))
    assert all(b == 0 for b in raw[pos:]), "bytes after the v1 terminator are not zero"
    return out


def split_seg_entries(path: str | Path) -> list[SplitEntry] | None:
    raw = load_command_payload(Path(path).read_bytes(), LC_SEGMENT_SPLIT_INFO)
    if not raw:
        return None
    return decode_split_seg_v2(raw)
