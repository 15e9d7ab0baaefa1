"""``dyldcache a2s CACHE ADDR...`` and ``dyldcache s2a CACHE SYMBOL...``: cache addresses to
symbols, and symbols to the images and addresses that define them.

Addresses are unslid cache VM addresses. A symbol comes from the image's export trie, its mapped
symbol table, or the unmapped locals of the ``.symbols`` file (``docs/cache-format.md`` §2.6);
locals the builder redacted show as ``<redacted>`` when no unmapped copy names them. ``a2s``
looks for the nearest symbol at or below the address inside the same section (or segment);
``s2a`` lists every image that exports the symbol or defines it in a symbol table, and follows
re-exports to the image that really defines it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MachOFormatError, UsageError
from ..macho import constants as C
from ..macho.exports_trie import Export, encode_name, read_exports
from ..macho.file import MachOFile
from ..macho.leb128 import uleb_decode, uleb_encode
from ..report import add_json_option, print_json
from .reader import DyldCache
from .symtab import REDACTED, CacheSymtabs, ImageSymtab

#: where a symbol was found, best first: what a2s prefers when several name one address
SOURCES = ("export", "symtab", "local", "redacted")
#: re-exports followed before s2a gives up (dyld's own chains are one or two deep)
MAX_REEXPORT_DEPTH = 16


@dataclass(frozen=True, slots=True)
class Location:
    """What ``a2s`` says about one address."""

    address: int
    #: the cache file and the mapping holding the address
    file: str
    mapping: str
    #: None when the address is in a mapping but in no image's segments
    image: str | None = None
    image_index: int | None = None
    segment: str | None = None
    section: str | None = None
    symbol: str | None = None
    #: address minus the symbol's (or, with no symbol, the section's or segment's) start
    offset: int = 0
    #: one of SOURCES, or None with no symbol
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Definition:
    """One image that exports or defines a symbol (``s2a``)."""

    symbol: str
    image: str
    image_index: int
    #: unslid address; None for a re-export that leads nowhere in this cache
    address: int | None
    #: "export", "reexport", "symtab" or "local"
    source: str
    #: re-exports: the dylib and the name the symbol comes from
    reexport_from: str | None = None
    reexport_name: str | None = None
    #: EXPORT_SYMBOL_FLAGS_* for exports, else 0
    flags: int = 0


def find_export(image: MachOFile, name: str) -> Export | None:
    """Look ``name`` up in the image's export trie (one walk from the root, not a full decode)."""
    found = image.exports_trie_bytes()
    if found is None:
        return None
    raw, base = found
    trie = bytes(raw)
    key = encode_name(name)

    def error(pos: int, message: str) -> MachOFormatError:
        return MachOFormatError(image.path, base + pos, f"export trie: {message}")

    def uleb(pos: int) -> tuple[int, int]:
        try:
            return uleb_decode(trie, pos)
        except ValueError as exc:
            raise error(pos, str(exc)) from None

    node, done = 0, 0
    # every step either consumes key bytes or follows an empty label (old ld64): a trie with no
    # loops takes fewer steps than it has bytes
    for _ in range(len(trie) + 1):
        size, pos = uleb(node)
        if pos + size > len(trie):
            raise error(node, f"terminal payload of {size} bytes runs past the end of the trie")
        if done == len(key) and size:
            payload = trie[pos : pos + size]
            # the payload decoder of read_exports, on a one-node trie holding just this payload
            head = uleb_encode(size)
            one = read_exports(head + payload + b"\0", image.path, base + pos - len(head))
            return dataclasses.replace(one[0], name=name)
        pos += size
        if pos >= len(trie):
            raise error(pos, "node's child count is past the end of the trie")
        count = trie[pos]
        pos += 1
        nonempty: int | None = None
        empty: int | None = None
        for _ in range(count):
            end = trie.find(b"\0", pos)
            if end < 0:
                raise error(pos, "edge label is not NUL-terminated")
            label = trie[pos:end]
            child, pos = uleb(end + 1)
            if not 0 < child < len(trie):
                raise error(
                    end + 1, f"child node offset {child:#x} is outside the trie (size {len(trie):#x})"
                )
            if not label:
                empty = child
            elif nonempty is None and key.startswith(label, done):
                nonempty, consumed = child, len(label)
        if nonempty is not None:
            node, done = nonempty, done + consumed
        elif empty is not None:
            node = empty
        else:
            return None
    raise error(node, "the walk does not end (the trie loops)")


class SymbolIndex:
    """What a2s and s2a need of a cache, built on first use."""

    def __init__(self, cache: DyldCache) -> None:
        self.cache = cache
        self.symtabs = CacheSymtabs(cache)
        self._machos: dict[int, MachOFile] = {}
        self._ranges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def macho(self, index: int) -> MachOFile:
        found = self._machos.get(index)
        if found is None:
            found = self._machos[index] = self.cache.image_macho(index)
        return found

    def _segment_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, image index, segment index) of every mapped segment but __LINKEDIT."""
        if self._ranges is None:
            rows = [
                (seg.vmaddr, seg.vmaddr + seg.vmsize, img.index, seg.index)
                for img in self.cache.images
                for seg in self.macho(img.index).segments
                if seg.vmsize and seg.name != "__LINKEDIT"
            ]
            arr = np.array(rows, dtype=np.uint64).reshape(-1, 4)
            self._ranges = (arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int64), arr[:, 3].astype(np.int64))
        return self._ranges

    # -- address -> symbol ------------------------------------------------------------------------

    def locate(self, address: int) -> Location:
        """The image, section and nearest symbol at or below ``address``."""
        cache = self.cache
        found = cache.mapping_for(address)
        if found is None:
            raise UsageError(f"{cache.path}: address {address:#x} is not in any mapping of the cache")
        f, mapping = found
        starts, ends, images, segs = self._segment_ranges()
        inside = np.flatnonzero((starts <= np.uint64(address)) & (np.uint64(address) < ends))
        if inside.size == 0:
            return Location(address, f.path, mapping.name)
        # the smallest segment holding the address is the most specific one
        pick = int(inside[np.argmin((ends - starts)[inside])])
        index = int(images[pick])
        image = self.macho(index)
        seg = image.segments[int(segs[pick])]
        sect = next((s for s in seg.sections if s.addr <= address < s.end), None)
        lo = sect.addr if sect is not None else seg.vmaddr
        best: tuple[int, int, str] | None = None  # (address, source rank, name)
        for addr, rank, name in self._candidates(index, image, lo, address):
            if best is None or (addr, -rank) > (best[0], -best[1]):
                best = (addr, rank, name)
        loc = Location(
            address,
            f.path,
            mapping.name,
            image=cache.images[index].path,
            image_index=index,
            segment=seg.name,
            section=sect.sectname if sect is not None else None,
            offset=address - lo,
        )
        if best is None:
            return loc
        return dataclasses.replace(loc, symbol=best[2], offset=address - best[0], source=SOURCES[best[1]])

    def _candidates(self, index: int, image: MachOFile, lo: int, address: int) -> list[tuple[int, int, str]]:
        """(address, source rank, name) of the symbols nearest below ``address`` from each source."""
        base = self.cache.images[index].address
        out = []
        for e in image.exports:
            if e.is_reexport or e.is_absolute:
                continue
            at = base + e.address
            if lo <= at <= address:
                out.append((at, SOURCES.index("export"), e.name))
        mapped = self.symtabs.mapped(index, image)
        for table, local_rank in ((mapped, "symtab"), (self.symtabs.unmapped_locals(index), "local")):
            if table is None:
                continue
            for at, name in _nearest(table, lo, address):
                rank = SOURCES.index("redacted" if name == REDACTED else local_rank)
                out.append((at, rank, name))
        return out

    # -- symbol -> definitions --------------------------------------------------------------------

    def definitions(self, name: str) -> list[Definition]:
        """Every image that exports ``name`` or defines it in a symbol table, in image order."""
        cache = self.cache
        out: dict[tuple[int, int | None], Definition] = {}
        finds: dict[int, np.ndarray] = {}
        for img in cache.images:
            image = self.macho(img.index)
            export = find_export(image, name)
            if export is not None:
                d = self._export_definition(img.index, image, export, name, 0)
                out.setdefault((img.index, d.address), d)
            table = self.symtabs.mapped(img.index, image)
            if table is not None:
                key = id(table.strings)
                if key not in finds:
                    finds[key] = table.strings.find(name)
                for at in _defined_at(table, finds[key]):
                    out.setdefault((img.index, at), Definition(name, img.path, img.index, at, "symtab"))
        every = self.symtabs.all_unmapped_locals()
        if every is not None:
            table, ranges = every
            hits = _defined_index(table, table.strings.find(name))
            for index, (start, count) in sorted(ranges.items()):
                for k in hits[(hits >= start) & (hits < start + count)]:
                    at = int(table.nlist["n_value"][k])
                    path = cache.images[index].path
                    out.setdefault((index, at), Definition(name, path, index, at, "local"))
        return sorted(out.values(), key=lambda d: (d.image_index, d.address or 0))

    def _export_definition(
        self, index: int, image: MachOFile, export: Export, name: str, depth: int
    ) -> Definition:
        path = self.cache.images[index].path
        if not export.is_reexport:
            at = export.address if export.is_absolute else self.cache.images[index].address + export.address
            return Definition(name, path, index, at, "export", flags=export.flags)
        target_name = export.import_name or export.name
        if not 1 <= export.ordinal <= len(image.dylibs):
            return Definition(name, path, index, None, "reexport", None, target_name, export.flags)
        dylib = image.dylibs[export.ordinal - 1].path
        address = self._resolve(dylib, target_name, depth + 1)
        return Definition(name, path, index, address, "reexport", dylib, target_name, export.flags)

    def _resolve(self, dylib: str, name: str, depth: int) -> int | None:
        """Where ``dylib`` (an install name) gets ``name`` from, following re-exports."""
        if depth > MAX_REEXPORT_DEPTH:
            return None
        try:
            index = self.cache.find_image(dylib)
        except UsageError:
            return None
        image = self.macho(index)
        export = find_export(image, name)
        if export is not None:
            return self._export_definition(index, image, export, name, depth).address
        for dep in image.dylibs:
            if dep.is_reexport:
                found = self._resolve(dep.path, name, depth + 1)
                if found is not None:
                    return found
        return None


def _section_symbols(table: ImageSymtab) -> np.ndarray:
    n_type = table.nlist["n_type"]
    mask: np.ndarray = ((n_type & C.N_STAB) == 0) & ((n_type & C.N_TYPE) == C.N_SECT)
    return mask


def _nearest(table: ImageSymtab, lo: int, address: int) -> list[tuple[int, str]]:
    """(address, name) of every section symbol at the highest address in [lo, address]."""
    values = table.nlist["n_value"]
    ok = _section_symbols(table) & (values >= np.uint64(lo)) & (values <= np.uint64(address))
    if not ok.any():
        return []
    top = values[ok].max()
    picks = np.flatnonzero(ok & (values == top))
    return [(int(top), table.strings.name(int(table.nlist["n_strx"][k]))) for k in picks]


def _defined_index(table: ImageSymtab, strx: np.ndarray) -> np.ndarray:
    """Indexes of the defined (section or absolute) entries whose name starts at one of ``strx``."""
    n_type = table.nlist["n_type"]
    kind = n_type & C.N_TYPE
    defined = ((n_type & C.N_STAB) == 0) & ((kind == C.N_SECT) | (kind == C.N_ABS))
    hits: np.ndarray = np.flatnonzero(defined & np.isin(table.nlist["n_strx"], strx))
    return hits


def _defined_at(table: ImageSymtab, strx: np.ndarray) -> list[int]:
    return [int(table.nlist["n_value"][k]) for k in _defined_index(table, strx)]


# ---------------------------------------------------------------------------------------------
# the commands


def parse_address(text: str) -> int:
    """A hexadecimal address (``0x`` optional); UsageError otherwise."""
    try:
        value = int(text, 16)
    except ValueError:
        raise UsageError(f"'{text}' is not a hexadecimal address") from None
    if not 0 <= value < 1 << 64:
        raise UsageError(f"'{text}' is not a 64-bit address")
    return value


def addresses_to_symbols(path: str, addresses: list[int]) -> list[Location]:
    """Where each unslid cache address is (``dyldcache a2s``): file, mapping, image, segment,
    section and the nearest symbol at or before it; ``image`` is None outside every image."""
    with DyldCache.open(path) as cache:
        index = SymbolIndex(cache)
        return [index.locate(a) for a in addresses]


def symbols_to_addresses(path: str, names: list[str]) -> dict[str, list[Definition]]:
    """Every image that exports or defines each symbol name, with the address (``dyldcache
    s2a``); an empty list for a name no image has."""
    with DyldCache.open(path) as cache:
        index = SymbolIndex(cache)
        return {name: index.definitions(name) for name in names}


def _location_text(loc: Location) -> str:
    if loc.image is None:
        return f"{loc.address:#x}  (in no image: {loc.mapping} of {loc.file})"
    place = f"{loc.segment}," + loc.section if loc.section else str(loc.segment)
    if loc.symbol is None:
        return f"{loc.address:#x}  {loc.image}  {place}+{loc.offset:#x}"
    sym = loc.symbol + (f"+{loc.offset:#x}" if loc.offset else "")
    return f"{loc.address:#x}  {loc.image}  {sym}  ({place})"


def _definition_text(d: Definition) -> str:
    at = f"{d.address:#x}" if d.address is not None else "-"
    what = d.source
    if d.source == "reexport":
        what = f"re-export of {d.reexport_name} from {d.reexport_from or '?'}"
    elif d.flags & C.EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION:
        what += ", weak"
    return f"{at}  {d.image}  {d.symbol}  [{what}]"


def _run_a2s(args: argparse.Namespace) -> int:
    addresses = [parse_address(a) for a in args.address]
    found = addresses_to_symbols(args.cache, addresses)
    if args.json:
        print_json([dataclasses.asdict(loc) for loc in found])
    else:
        for loc in found:
            sys.stdout.write(_location_text(loc) + "\n")
    return 0 if all(loc.image is not None for loc in found) else 1


def _run_s2a(args: argparse.Namespace) -> int:
    found = symbols_to_addresses(args.cache, args.symbol)
    if args.json:
        doc: dict[str, Any] = {name: [dataclasses.asdict(d) for d in defs] for name, defs in found.items()}
        print_json(doc)
    else:
        for defs in found.values():
            for d in defs:
                sys.stdout.write(_definition_text(d) + "\n")
    missing = [name for name, defs in found.items() if not defs]
    for name in missing:
        print(f"dyldcache s2a: {name}: no image exports or defines it", file=sys.stderr)
    return 1 if missing else 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("a2s", help="name the image and symbol at cache addresses")
    p.add_argument("cache", help="the main cache file")
    p.add_argument("address", nargs="+", help="unslid cache VM address, in hex (0x...)")
    add_json_option(p)
    p.set_defaults(func=_run_a2s)
    p = subparsers.add_parser("s2a", help="list the images that export or define symbols, with addresses")
    p.add_argument("cache", help="the main cache file")
    p.add_argument("symbol", nargs="+", help="symbol name as in the symbol table (_malloc)")
    add_json_option(p)
    p.set_defaults(func=_run_s2a)
