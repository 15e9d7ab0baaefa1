"""Code Sign: every file carries an embedded code signature of its bytes, and its UUID is taken
from the signature's code directory (``docs/cache-format.md`` §6; the seed's
calculateCodeSignatureSize in phase 3 and codeSign in phase 7).

The subcaches are signed first: the main file lists their UUIDs (and the .symbols file's), so
it is signed last.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...cache.code_signature import (
    build_code_signature,
    code_directory,
    hash_pages,
    signature_size,
    uuid_from_code_directory,
)
from ...cache.format import CacheHeader, SubcacheEntry
from ...errors import BuildError
from ..buffers import CacheBuffers
from ..config import MEMORY_WINDOW, REGION_ALIGNMENT, CacheConfig
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind, layout_files
from ..model import CacheModel
from ..types import align_up
from ..workers import run_tasks
from .base import Optimizer

_UUID_SIZE = 16


def _put_at(buf: np.ndarray, offset: int, raw: bytes) -> None:
    buf[offset : offset + len(raw)] = np.frombuffer(raw, dtype=np.uint8)


def _hash_windows(
    buffers: CacheBuffers, buf: np.ndarray, code_limit: int, page_size: int, jobs: int = 1
) -> bytearray:
    """``hash_pages(buf[:code_limit])``, one window at a time (windows in parallel with
    ``jobs`` workers), releasing each window's pages."""
    window = max(page_size, MEMORY_WINDOW - MEMORY_WINDOW % page_size)
    starts = range(0, code_limit, window)

    def hash_window(i: int) -> bytes:
        start = starts[i]
        try:
            return hash_pages(buf[start : min(start + window, code_limit)].data, page_size)
        finally:
            buffers.release_pages()

    return bytearray(b"".join(run_tasks(hash_window, len(starts), jobs if len(starts) >= 4 else 1)))


def sign_file(
    buffers: CacheBuffers, buf: np.ndarray, sub: SubCache, signature: Chunk, cfg: CacheConfig, jobs: int = 1
) -> bytes:
    """Sign one file into its signature chunk; returns its UUID (written into its header too)."""
    code_limit = signature.file_offset
    text = sub.regions.get(RegionKind.TEXT)
    exec_base, exec_limit = (text.file_offset, text.file_size) if text is not None else (0, 0)
    _put_at(
        buf,
        CacheHeader.offset_of("code_signature_offset"),
        code_limit.to_bytes(8, "little") + signature.size.to_bytes(8, "little"),
    )
    uuid_off = CacheHeader.offset_of("uuid")
    _put_at(buf, uuid_off, bytes(_UUID_SIZE))

    page = cfg.code_sign_page_size
    hashes = _hash_windows(buffers, buf, code_limit, page, jobs)

    def sign() -> bytes:
        blob = build_code_signature(
            buf[:code_limit].data,
            identifier=cfg.code_sign_identifier,
            page_size=page,
            exec_seg_base=exec_base,
            exec_seg_limit=exec_limit,
            page_hashes=bytes(hashes),
        )
        if len(blob) > signature.size:
            raise BuildError("internal: code signature outgrew its reservation")
        buf[code_limit : code_limit + signature.size] = 0
        _put_at(buf, code_limit, blob)
        return blob

    # the UUID is a hash of the signed bytes with a zero UUID; the bytes are then signed again
    uuid = uuid_from_code_directory(code_directory(sign()))
    _put_at(buf, uuid_off, uuid)
    # the UUID is in the first page, the only one that changed: hash it again, sign again
    assert uuid_off + _UUID_SIZE <= page
    first = hash_pages(buf[: min(page, code_limit)].data, page)
    hashes[: len(first)] = first
    sign()
    return uuid


class CodeSign(Optimizer):
    name: ClassVar[str] = "Code Sign"

    def __init__(self) -> None:
        self.chunks: dict[SubCache, Chunk] = {}

    def place(self, model: CacheModel) -> None:
        for sub in model.subcaches:
            self.chunks[sub] = sub.region(RegionKind.CODE_SIGNATURE).add(
                Chunk("code signature", ChunkKind.CODE_SIGNATURE, 0, REGION_ALIGNMENT)
            )

    def measure(self, model: CacheModel) -> None:
        """The signature covers every byte before it: size it from the laid-out file."""
        cfg = model.config
        layout_files(model.subcaches)
        for chunk in self.chunks.values():
            size = signature_size(chunk.file_offset, cfg.code_sign_page_size, cfg.code_sign_identifier)
            chunk.size = align_up(size, REGION_ALIGNMENT)

    def finalize(self, model: CacheModel, buffers: CacheBuffers) -> None:
        uuids: dict[SubCache, bytes] = {}
        for sub in [*model.subcaches[1:], model.main]:
            if sub.kind is SubCacheKind.MAIN:
                _record_uuids(buffers.of(sub), model.subcaches, uuids)
            uuids[sub] = sign_file(buffers, buffers.of(sub), sub, self.chunks[sub], model.config, model.jobs)


def _record_uuids(main: np.ndarray, subcaches: list[SubCache], uuids: dict[SubCache, bytes]) -> None:
    """The main header's subcache entries and symbol file UUID (the header is written)."""
    array = CacheHeader.unpack_from(main, 0).sub_cache_array_offset
    listed = [s for s in subcaches if s.kind is SubCacheKind.SUB]
    for k, sub in enumerate(listed):
        _put_at(main, array + k * SubcacheEntry.SIZE, uuids[sub])
    for sub in subcaches:
        if sub.kind is SubCacheKind.SYMBOLS:
            _put_at(main, CacheHeader.offset_of("symbol_file_uuid"), uuids[sub])
