"""The patch table optimizer: for every export another cache dylib binds to, where those
binds landed, so dyld can re-point them when a root replaces a cache dylib
(``docs/cache-format.md`` §3, version 4 as dyld-1162 writes it).

Its size is estimated from the input binds (phase 2) and emitted from the bind pass's
recorded uses (phase 6).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ...errors import BuildError
from ...names import encode_name
from ..bind import USE_DTYPE, BindResult
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind
from ..model import CacheModel
from ..types import CacheVMAddr
from .base import DylibResult, Optimizer

_HEADER = struct.Struct("<2I18Q")  # dyld_cache_patch_info_v3 (v4 uses the same header)
assert _HEADER.size == 152
_IMAGE_PATCHES = 16
_IMAGE_EXPORT = 8
_IMAGE_CLIENTS = 12
_PATCHABLE_EXPORT = 12
_LOCATION_V4 = 8
_GOT_CLIENTS = 8
PATCH_TABLE_VERSION = 4


def _location_words(uses: np.ndarray) -> np.ndarray:
    """The u32 after dylibOffsetOfUse in dyld_cache_patchable_location_v4, for every use."""
    high7 = (uses["high8"].astype(np.uint32) >> 1) & 0x7F
    weak = uses["weak"].astype(np.uint32)
    addend = uses["addend"]
    auth_word = (
        1
        | high7 << 1
        | weak << 8
        | (addend & np.uint64(0x1F)).astype(np.uint32) << 9
        | uses["addr_div"].astype(np.uint32) << 14
        | (uses["key"] >= 2).astype(np.uint32) << 15
        | uses["diversity"].astype(np.uint32) << 16
    )
    plain_word = high7 << 1 | weak << 8 | (addend & np.uint64(0x7FFFFF)).astype(np.uint32) << 9
    return np.where(uses["auth"] != 0, auth_word, plain_word).astype(np.uint32)


def _u32_rows(*columns: np.ndarray) -> bytes:
    """Rows of little-endian u32 fields, one per column, as bytes."""
    rows = np.zeros((len(columns[0]), len(columns)), dtype="<u4")
    for i, column in enumerate(columns):
        rows[:, i] = column
    return rows.tobytes()


class PatchTable(Optimizer):
    name: ClassVar[str] = "Patch Table"

    def __init__(self) -> None:
        self._estimate: int | None = None
        self.chunk: Chunk | None = None

    def estimate(self, model: CacheModel) -> None:
        self._estimate = estimate_size(model.dylibs)

    def estimated_size(self) -> int:
        assert self._estimate is not None, "estimate() first"
        return self._estimate

    def place(self, model: CacheModel) -> None:
        le = model.mapped_files()[-1].region(RegionKind.LINKEDIT)
        self.chunk = le.add(Chunk("patch table", ChunkKind.PATCH_TABLE, self.estimated_size(), 8))

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        assert self.chunk is not None
        bound = [r.bound for r in results if r.bound is not None]
        try:
            table = emit_patch_table(self.chunk.vm_addr, model.dylibs, bound, self.chunk.size)
        except ValueError as exc:
            raise BuildError(f"internal: {exc}") from None
        buffers.put(self.chunk, table)

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        if sub.kind is SubCacheKind.MAIN and self.chunk is not None:
            fields.values["patch_info_addr"] = self.chunk.vm_addr
            fields.values["patch_info_size"] = self.chunk.size


def estimate_size(dylibs: list[CacheDylib]) -> int:
    """Upper bound on the emitted size, from the input dylibs' binds (an 8-byte multiple)."""
    locations = exports = names = clients = 0
    for d in dylibs:
        facts = d.input.fixup_facts
        locations += facts.bind_count
        exports += len(facts.imports)
        names += sum(len(encode_name(i.name)) + 1 for i in facts.imports)
        clients += len(d.dependents) + 1
    size = (
        _HEADER.size
        + len(dylibs) * (_IMAGE_PATCHES + _GOT_CLIENTS)
        + exports * _IMAGE_EXPORT
        + clients * _IMAGE_CLIENTS
        + exports * _PATCHABLE_EXPORT
        + locations * _LOCATION_V4
        + names
        + 8
    )
    return -(-size // 8) * 8


def emit_patch_table(
    addr: CacheVMAddr, dylibs: list[CacheDylib], results: list[BindResult], reserved: int
) -> bytes:
    """The table at ``addr``, from every dylib's bind uses (``results`` in cache order)."""
    all_uses = [r.uses for r in results]
    clients = (
        np.concatenate([np.full(len(u), i, dtype=np.int64) for i, u in enumerate(all_uses)])
        if all_uses
        else np.zeros(0, dtype=np.int64)
    )
    uses: np.ndarray = np.concatenate(all_uses) if all_uses else np.zeros(0, dtype=USE_DTYPE)
    # every array of the table is ordered by (target dylib, client, export address, use)
    order = (
        np.lexsort((uses["location"], uses["export_addr"], clients, uses["target_dylib"]))
        if len(uses)
        else np.zeros(0, dtype=np.int64)
    )
    uses, clients = uses[order], clients[order]
    loads = np.array([d.cache_load_address for d in dylibs], dtype=np.uint64)
    names_of: list[list[str]] = [r.use_names for r in results]
    tgt = uses["target_dylib"].astype(np.int64)
    export_addr = uses["export_addr"]
    n = len(uses)

    # the exports of each target dylib, by address; each named by the first use of it (in the
    # order above), which is the least position among the uses of that (target, address)
    by_export = np.lexsort((np.arange(n), export_addr, tgt))
    new_export = (
        np.r_[
            True,
            (tgt[by_export][1:] != tgt[by_export][:-1])
            | (export_addr[by_export][1:] != export_addr[by_export][:-1]),
        ]
        if n
        else np.zeros(0, bool)
    )
    export_of_use = np.empty(n, dtype=np.int64)
    export_of_use[by_export] = np.cumsum(new_export) - 1
    first_use = by_export[new_export]
    export_target = tgt[first_use]
    names = bytearray()
    name_offsets: dict[str, int] = {}
    offs = []
    for client, k in zip(clients[first_use].tolist(), uses["name"][first_use].tolist(), strict=True):
        name = names_of[client][k]
        off = name_offsets.setdefault(name, len(names))
        if off == len(names):
            names += encode_name(name) + b"\0"
        offs.append(off & 0x0FFFFFFF)
    image_exports = _u32_rows(export_addr[first_use] - loads[export_target], np.array(offs, dtype=np.int64))

    # one client-export per run of (target, client, export) and one client per run of (target, client)
    if n:
        target_change = tgt[1:] != tgt[:-1]
        client_change = target_change | (clients[1:] != clients[:-1])
        run_start = np.flatnonzero(np.r_[True, client_change | (export_addr[1:] != export_addr[:-1])])
        new_client = np.r_[True, client_change][run_start]
    else:
        run_start = new_client = np.zeros(0, dtype=np.int64)
    run_count = np.diff(np.r_[run_start, n])
    client_exports = _u32_rows(export_of_use[run_start], run_start, run_count)
    client_first = np.flatnonzero(new_client)
    client_runs = np.diff(np.r_[client_first, len(run_start)])
    clients_arr = _u32_rows(clients[run_start[client_first]], client_first, client_runs)
    n_exports, n_clients, n_client_exports = len(first_use), len(client_first), len(run_start)

    # per dylib: its clients and its exports, both in order
    per_clients = np.bincount(tgt[run_start[client_first]], minlength=len(dylibs))[: len(dylibs)]
    per_exports = np.bincount(export_target, minlength=len(dylibs))[: len(dylibs)]
    images = _u32_rows(
        np.cumsum(per_clients) - per_clients, per_clients, np.cumsum(per_exports) - per_exports, per_exports
    )
    locations = np.zeros(len(uses), dtype=[("use", "<u4"), ("word", "<u4")])
    if len(uses):
        locations["use"] = (uses["location"] - loads[clients]).astype(np.uint32)
        locations["word"] = _location_words(uses)
    got_clients = bytes(_GOT_CLIENTS * len(dylibs))  # no GOT was uniqued
    names += bytes(-len(names) % 4)
    parts: list[bytes | bytearray] = [
        images,
        image_exports,
        clients_arr,
        client_exports,
        locations.tobytes(),
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
        len(uses),
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
