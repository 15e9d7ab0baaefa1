"""The symbol tables of cache images, read in place.

In a cache every image's LC_SYMTAB points into the LINKEDIT of one cache file, where the nlist
arrays of all its images sit side by side and share one de-duplicated string pool
(``docs/cache-format.md`` §13). The pool is large (tens of MB in a real cache), so it is viewed,
never copied, and its NUL positions are found once per pool. Locals may also live outside the
mapped files, in the ``.symbols`` file (§2.6): :meth:`CacheSymtabs.unmapped_locals` finds an
image's slice of them.

Everything here is vectorized over the symbols: :meth:`StringPoolView.compact` gathers the names
a set of ``n_strx`` values use into a fresh pool, :meth:`StringPoolView.find` gives every
``n_strx`` that reads as a given name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CacheFormatError
from ..macho.file import MachOFile
from ..macho.format import NLIST64_DTYPE
from .reader import CacheFile, DyldCache, LocalSymbols

#: the name the builder gives a local it keeps in the mapped symbol table but unmaps (§2.6)
REDACTED = "<redacted>"


class StringPoolView:
    """A C-string pool held as a uint8 array (usually a view of a mapped cache file)."""

    def __init__(self, pool: np.ndarray, path: str, offset: int) -> None:
        self.pool = pool
        #: where the pool is, for error messages
        self.path = path
        self.offset = offset
        self._nuls: np.ndarray | None = None
        self._bytes: bytes | None = None

    @property
    def nuls(self) -> np.ndarray:
        """Positions of every NUL byte of the pool, ascending."""
        if self._nuls is None:
            self._nuls = np.flatnonzero(self.pool == 0)
        return self._nuls

    def _ends(self, strx: np.ndarray) -> np.ndarray:
        """The NUL ending the string at each ``strx``; CacheFormatError for one outside the pool or
        running off its end."""
        size = self.pool.size
        if strx.size and int(strx.max()) >= size:
            bad = int(strx[np.argmax(strx >= size)])
            raise CacheFormatError(
                self.path, self.offset, f"symbol name offset {bad:#x} is outside the string pool ({size:#x})"
            )
        at = np.searchsorted(self.nuls, strx)
        if at.size and int(at.max()) >= self.nuls.size:
            bad = int(strx[np.argmax(at >= self.nuls.size)])
            raise CacheFormatError(
                self.path, self.offset + bad, "symbol name runs past the end of the string pool"
            )
        return self.nuls[at]

    def name(self, strx: int) -> str:
        end = int(self._ends(np.array([strx], dtype=np.int64))[0])
        return bytes(self.pool[strx:end]).decode("utf-8", "replace")

    def find(self, name: str) -> np.ndarray:
        """Every pool offset at which the string ``name`` starts (its own entry or a shared suffix)."""
        key = name.encode("utf-8", "surrogateescape") + b"\0"
        if self._bytes is None:
            self._bytes = self.pool.tobytes()
        data = self._bytes
        found = []
        at = data.find(key)
        while at >= 0:
            found.append(at)
            at = data.find(key, at + 1)
        return np.array(found, dtype=np.int64)

    def compact(self, strx: np.ndarray, base: int) -> tuple[bytes, np.ndarray]:
        """The strings ``strx`` name, NUL-terminated one after the other, and each entry's offset
        in a pool where these bytes start at ``base``. Equal offsets share one copy."""
        unique, inverse = np.unique(strx.astype(np.int64), return_inverse=True)
        if unique.size == 0:
            return b"", np.zeros(strx.shape, dtype=np.uint32)
        lengths = self._ends(unique) - unique + 1
        new_starts = np.cumsum(lengths) - lengths
        picks = np.repeat(unique - new_starts, lengths) + np.arange(int(lengths.sum()))
        body = self.pool[picks].tobytes()
        return body, (new_starts + base).astype(np.uint32)[inverse.reshape(strx.shape)]


@dataclass(frozen=True, slots=True)
class ImageSymtab:
    """One image's nlist array (a view) and the pool its ``n_strx`` index."""

    nlist: np.ndarray
    strings: StringPoolView


class CacheSymtabs:
    """Symbol tables of a cache's images, with every pool's NUL index built once."""

    def __init__(self, cache: DyldCache) -> None:
        self.cache = cache
        self._pools: dict[tuple[str, int, int], StringPoolView] = {}
        self._locals_read = False
        self._locals: LocalSymbols | None = None
        self._locals_pool: StringPoolView | None = None
        self._locals_by_image: dict[int, tuple[int, int]] = {}

    def pool(self, f: CacheFile, offset: int, size: int) -> StringPoolView:
        key = (f.path, offset, size)
        found = self._pools.get(key)
        if found is None:
            found = StringPoolView(np.frombuffer(f.data, np.uint8, size, offset), f.path, offset)
            self._pools[key] = found
        return found

    def mapped(self, index: int, image: MachOFile | None = None) -> ImageSymtab | None:
        """The symbol table image ``index``'s LC_SYMTAB gives (None without one)."""
        image = image or self.cache.image_macho(index)
        st = image.symtab_command
        if st is None:
            return None
        f = self.cache.linkedit_file(index)
        nlist = np.frombuffer(f.data, NLIST64_DTYPE, st.nsyms, st.symoff)
        return ImageSymtab(nlist, self.pool(f, st.stroff, st.strsize))

    def _read_locals(self) -> None:
        if self._locals_read:
            return
        self._locals_read = True
        found = self.cache.local_symbols()
        if found is None:
            return
        self._locals = found
        raw = np.frombuffer(found.strings, np.uint8)
        self._locals_pool = StringPoolView(raw, found.path, found.offset)
        cache = self.cache
        base = cache.base_address
        by_key = {dylib_offset: (start, count) for dylib_offset, start, count in found.entries}
        for img in cache.images:
            if found.vm_offsets:
                key = img.address - base
            else:
                f, off = cache.address_to_file(img.address)
                if f is not cache.main:
                    continue
                key = off
            if key in by_key:
                self._locals_by_image[img.index] = by_key[key]

    def unmapped_locals(self, index: int) -> ImageSymtab | None:
        """Image ``index``'s locals from the local symbols info (``.symbols``), or None."""
        self._read_locals()
        found = self._locals_by_image.get(index)
        if found is None or self._locals is None or self._locals_pool is None:
            return None
        start, count = found
        return ImageSymtab(self._locals.nlist[start : start + count], self._locals_pool)

    def all_unmapped_locals(self) -> tuple[ImageSymtab, dict[int, tuple[int, int]]] | None:
        """Every unmapped local and each image's (start, count) among them."""
        self._read_locals()
        if self._locals is None or self._locals_pool is None:
            return None
        return ImageSymtab(self._locals.nlist, self._locals_pool), dict(self._locals_by_image)
