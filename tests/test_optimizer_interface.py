"""A new optimizer plugs into the builder without touching the phase driver
(``builder/optimizers/base.py``, ``docs/architecture.md``).

The probe below is added to ``optimizers_for``'s list before slide info, as the ObjC optimizers
will be. It sizes its table in phase 2, places a LINKEDIT chunk in phase 3, looks at each dylib's
copied mach header in its dylib pass (phase 5, in forked workers) and leaves what it saw on the
dylib's result, writes one record per dylib in phase 6 and names its table in the main header
(programsPBLSetPoolAddr/Size, which nothing else fills) in phase 7. The test reads the table back
through the test-side reader and compares it with the input dylibs' own load commands.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cache_fixtures import CacheFactory, RawCache, input_segments

import dyldcache.builder.pipeline as pipeline
from dyldcache.builder.buffers import CacheBuffers
from dyldcache.builder.cache_dylib import CacheDylib
from dyldcache.builder.config import CacheConfig
from dyldcache.builder.headers import HeaderFields
from dyldcache.builder.layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind
from dyldcache.builder.model import CacheModel
from dyldcache.builder.optimizers import DylibResult, Optimizer
from dyldcache.builder.optimizers.slide_info import SlideInfo
from dyldcache.builder.pipeline import BuildOptions, build_cache
from dyldcache.cache.verify import verify_cache

_RECORD = struct.Struct("<IIQ")  # segments placed, mach header magic, worker pid
_HEADER = struct.Struct("<Q")
_PROGRAMS_POOL_ADDR = 0x150  # dyld_cache_header.programsPBLSetPoolAddr
_MH_MAGIC_64 = 0xFEEDFACF


class SegmentCensus(Optimizer):
    name: ClassVar[str] = "segment census (test probe)"

    def __init__(self) -> None:
        self.size = 0
        self.chunk: Chunk | None = None
        self.parent = os.getpid()

    def estimate(self, model: CacheModel) -> None:
        self.size = _HEADER.size + _RECORD.size * len(model.dylibs)

    def place(self, model: CacheModel) -> None:
        le = model.mapped_files()[-1].region(RegionKind.LINKEDIT)
        self.chunk = le.add(Chunk("segment census", ChunkKind.SWIFT_OPTS, self.size, 8))

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        text = dylib.text.chunk
        assert text is not None
        # pack_segments ran first in this worker: the dylib's header is in the file already
        magic = int.from_bytes(
            bytes(buffers.holding(text)[text.file_offset : text.file_offset + 4]), "little"
        )
        placed = sum(1 for s in dylib.segments if s.chunk is not None)
        result.extras[self.name] = (placed, magic, os.getpid())

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        assert self.chunk is not None
        raw = _HEADER.pack(len(results))
        for r in results:
            placed, magic, pid = r.extras[self.name]  # type: ignore[misc]
            raw += _RECORD.pack(placed, magic, pid)
        buffers.put(self.chunk, raw)

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        if sub.kind is SubCacheKind.MAIN and self.chunk is not None:
            fields.values["programs_pbl_set_pool_addr"] = self.chunk.vm_addr
            fields.values["programs_pbl_set_pool_size"] = self.chunk.size


def _with_probe(real: Callable[..., list[Optimizer]]) -> Callable[..., list[Optimizer]]:
    def optimizers_for(config: CacheConfig, *args: Any) -> list[Optimizer]:
        found = real(config, *args)
        at = next(i for i, o in enumerate(found) if isinstance(o, SlideInfo))
        return [*found[:at], SegmentCensus(), *found[at:]]

    return optimizers_for


def _two_workers(run: Any) -> Any:
    """run_tasks with two workers even for the example's few dylibs (the builder forks from 8)."""

    def forced(task, count, jobs, *, on_result=None):  # type: ignore[no-untyped-def]
        return run(task, count, 2, on_result=on_result)

    return forced


def test_a_new_optimizer_runs_every_step_without_a_change_to_the_driver(
    cache_factory: CacheFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "optimizers_for", _with_probe(pipeline.optimizers_for))
    monkeypatch.setattr(pipeline, "run_tasks", _two_workers(pipeline.run_tasks))
    root = cache_factory.root("arm64")
    result = build_cache(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=root, jobs=2))
    assert verify_cache(result.files[0]) == []
    raw = RawCache(result.files[0])
    addr, size = struct.unpack_from("<2Q", raw.main.data, _PROGRAMS_POOL_ADDR)
    assert size == _HEADER.size + _RECORD.size * len(raw.images)
    table = raw.read(addr, size)
    (count,) = _HEADER.unpack_from(table)
    assert count == len(raw.images) == len(result.dylibs) > 1
    pids = set()
    for k, (path, _addr) in enumerate(raw.images):
        placed, magic, pid = _RECORD.unpack_from(table, _HEADER.size + k * _RECORD.size)
        expected = [s for s in input_segments(os.path.join(root, path.lstrip("/"))) if s.name != "__LINKEDIT"]
        assert (placed, magic) == (len(expected), _MH_MAGIC_64), path
        pids.add(pid)
    assert os.getpid() not in pids, "the dylib passes ran in worker processes"
