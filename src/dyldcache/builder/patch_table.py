"""The patch table optimizer: for every export another cache dylib binds to, where those
binds landed, so dyld can re-point them when a root replaces a cache dylib
(``docs/cache-format.md`` §3, version 4 as dyld-1162 writes it).

Its size is estimated from the input binds (phase 2) and emitted from the bind pass's
recorded uses (phase 6).
"""

from __future__ import annotations

import struct
from collections import defaultdict

import numpy as np

from ..macho.fixups import FixupKind
from .bind import BindResult
from .cache_dylib import CacheDylib

_HEADER = struct.Struct("<2I18Q")  # dyld_cache_patch_info_v3 (v4 uses the same header)
assert _HEADER.size == 152
_IMAGE_PATCHES = 16
_IMAGE_EXPORT = 8
_IMAGE_CLIENTS = 12
_PATCHABLE_EXPORT = 12
_LOCATION_V4 = 8
_GOT_CLIENTS = 8
PATCH_TABLE_VERSION = 4


def _location_v4(
    use_offset: int, addend: int, auth: bool, key: int, addr_div: bool, diversity: int, high8: int, weak: bool
) -> bytes:
    high7 = (high8 >> 1) & 0x7F
    if auth:
        word = (
            1
            | high7 << 1
            | int(weak) << 8
            | (addend & 0x1F) << 9
            | int(addr_div) << 14
            | int(key >= 2) << 15
            | (diversity & 0xFFFF) << 16
        )
    else:
        word = high7 << 1 | int(weak) << 8 | (addend & 0x7FFFFF) << 9
    return struct.pack("<II", use_offset, word)


class PatchTable:
    def __init__(self, dylib_count: int) -> None:
        self.dylib_count = dylib_count
        self._estimate: int | None = None

    def estimate(self, dylibs: list[CacheDylib]) -> int:
        """Upper bound on the emitted size, from the input dylibs' binds."""
        locations = exports = names = clients = 0
        for d in dylibs:
            fx = d.image.fixups
            kinds = fx.records["kind"]
            nbind = int(np.count_nonzero((kinds == FixupKind.BIND) | (kinds == FixupKind.AUTH_BIND)))
            locations += nbind
            exports += len(fx.imports)
            names += sum(len(i.name.encode()) + 1 for i in fx.imports)
            clients += len(d.dependents) + 1
        size = (
            _HEADER.size
            + self.dylib_count * (_IMAGE_PATCHES + _GOT_CLIENTS)
            + exports * _IMAGE_EXPORT
            + clients * _IMAGE_CLIENTS
            + exports * _PATCHABLE_EXPORT
            + locations * _LOCATION_V4
            + names
            + 8
        )
        self._estimate = -(-size // 8) * 8
        return self._estimate

    def estimated_size(self) -> int:
        assert self._estimate is not None, "estimate() first"
        return self._estimate

    def emit(self, addr: int, dylibs: list[CacheDylib], results: list[BindResult], reserved: int) -> bytes:
        # target dylib -> client dylib -> export address -> [(use offset, addend, auth...)]
        table: dict[int, dict[int, dict[int, list[bytes]]]] = defaultdict(lambda: defaultdict(dict))
        export_names: dict[int, dict[int, str]] = defaultdict(dict)
        for client, res in enumerate(results):
            base = dylibs[client].cache_load_address
            for (
                target,
                export_addr,
                name,
                loc,
                addend,
                auth,
                key,
                addr_div,
                diversity,
                high8,
                weak,
            ) in res.uses:
                table[target][client].setdefault(export_addr, []).append(
                    _location_v4(loc - base, addend, auth, key, addr_div, diversity, high8, weak)
                )
                export_names[target].setdefault(export_addr, name)
        images = bytearray()
        image_exports = bytearray()
        clients_arr = bytearray()
        client_exports = bytearray()
        locations = bytearray()
        names = bytearray()
        name_offsets: dict[str, int] = {}
        n_exports = n_clients = n_client_exports = n_locations = 0
        for t in range(len(dylibs)):
            used = sorted(export_names.get(t, {}))
            export_index = {a: n_exports + k for k, a in enumerate(used)}
            tbase = dylibs[t].cache_load_address
            for a in used:
                name = export_names[t][a]
                off = name_offsets.get(name)
                if off is None:
                    off = len(names)
                    name_offsets[name] = off
                    names += name.encode() + b"\0"
                image_exports += struct.pack("<II", a - tbase, off & 0x0FFFFFFF)
            client_start = n_clients
            for client in sorted(table.get(t, {})):
                uses = table[t][client]
                ce_start = n_client_exports
                for a in sorted(uses):
                    locs = uses[a]
                    client_exports += struct.pack("<III", export_index[a], n_locations, len(locs))
                    locations += b"".join(locs)
                    n_locations += len(locs)
                    n_client_exports += 1
                clients_arr += struct.pack("<III", client, ce_start, n_client_exports - ce_start)
                n_clients += 1
            images += struct.pack("<IIII", client_start, n_clients - client_start, n_exports, len(used))
            n_exports += len(used)
        got_clients = bytes(_GOT_CLIENTS * len(dylibs))  # no GOT was uniqued
        names += bytes(-len(names) % 4)
        parts: list[bytes | bytearray] = [
            images,
            image_exports,
            clients_arr,
            client_exports,
            locations,
            got_clients,
            b"",
            b"",
            names,
        ]
        offsets = []
        cursor = _HEADER.size
        for p in parts:
            offsets.append(addr + cursor)
            cursor += len(p)
        header = _HEADER.pack(
            PATCH_TABLE_VERSION,
            0,
            offsets[0],
            len(dylibs),
            offsets[1],
            n_exports,
            offsets[2],
            n_clients,
            offsets[3],
            n_client_exports,
            offsets[4],
            n_locations,
            offsets[8],
            len(names),
            offsets[5],
            len(dylibs),
            offsets[6],
            0,
            offsets[7],
            0,
        )
        out = header + b"".join(parts)
        if len(out) > reserved:
            raise ValueError(f"patch table ({len(out)} bytes) outgrew its estimate ({reserved})")
        return out
