"""The interface every optimizer offers the phase driver (``builder/pipeline.py``).

An optimizer owns its state and its chunks. The driver calls each step of every optimizer in
the order of ``optimizers_for`` (``__init__.py``), in the phase the seed runs that step:

========================  =====  ============================================================
step                      phase  what it may do
========================  =====  ============================================================
``estimate``              2      read the dylibs; size global tables (nothing is placed yet)
``place``                 3      add its chunks to the subcaches (sizes known or bounded)
``measure``               3      size chunks that depend on where others lie (lays out first)
``pre_dylib_emit``        4      write what the dylib passes read; set up their lookups
``dylib_pass``            5      one dylib, in a worker process: write only that dylib's
                                 chunks; leave what ``emit`` needs on the :class:`DylibResult`
``emit``                  6      fill its global chunks from every dylib's result
``header_fields``         7      the dyld_cache_header fields it owns, per file
``finalize``              7      after the headers are written (code signatures)
========================  =====  ============================================================

Every step does nothing by default. A dylib pass that raises a :class:`DyldCacheError` evicts
that dylib: the cache is laid out again without it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..adjust import PointerSlides
from ..bind import BindResult
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..headers import HeaderFields
from ..layout import SubCache
from ..model import CacheModel


@dataclass(slots=True)
class DylibResult:
    """What one dylib's passes produced (phase 5). It comes back from a worker process, so
    everything on it pickles; ``slides`` stays in the worker."""

    index: int
    #: every pointer and bind use of the dylib in cache terms (binds_to_rebases.py); slide
    #: info moves the pointers to the scratch files (slide_info.py)
    bound: BindResult | None = None
    #: optimizer name -> what its dylib pass left for its emit step
    extras: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: why the dylib cannot be cached (it is evicted and the cache laid out again)
    error: str | None = None
    #: step name -> seconds (``--time-passes``)
    seconds: dict[str, float] = field(default_factory=dict)
    #: the target slide of every pointer that split seg info names (pack_segments.py -> binds)
    slides: PointerSlides | None = None

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - t0


class Optimizer:
    """One optimizer of the seed (see the module docstring for the steps)."""

    #: its name in the seed's list (cache-builder-optimizers.md), or the seed method it follows
    name: ClassVar[str] = ""

    def estimate(self, model: CacheModel) -> None:
        """Phase 2: sizes of the global tables, from the input dylibs."""

    def place(self, model: CacheModel) -> None:
        """Phase 3: add this optimizer's chunks to ``model.subcaches``."""

    def measure(self, model: CacheModel) -> None:
        """Phase 3, once every chunk is placed: sizes that depend on the layout of the others."""

    def pre_dylib_emit(self, model: CacheModel, buffers: CacheBuffers) -> None:
        """Phase 4: what the dylib passes need."""

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        """Phase 5, in a worker: this dylib's part (writes only its own chunks)."""

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        """Phase 6: the global chunks, from every cached dylib's result (in cache order)."""

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        """Phase 7: the header fields of file ``sub`` this optimizer owns."""

    def finalize(self, model: CacheModel, buffers: CacheBuffers) -> None:
        """Phase 7, after every header is written."""
