"""The cache builder: the seven phases of dyld-1162's SharedCacheBuilder, and nothing else.

    calculate_inputs -> estimate_global_optimizations -> create_subcaches -> pre_dylib_emit
    -> run_dylib_passes (parallel) -> post_dylib_emit -> finalize

Each phase calls one step of every optimizer (``optimizers/``), in the order of
``optimizers_for``; the format work is theirs. Estimate, then lay out, then emit: no phase
moves what an earlier phase placed. Output files are written under temporary names and renamed
into place only when every one of them is complete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ..cache.verify import verify_cache
from ..errors import BuildError, DyldCacheError, NothingPlacedError
from ..interrupts import interrupts_deferred
from ..names import encode_name
from .buffers import CacheBuffers
from .cache_dylib import make_cache_dylibs
from .headers import CacheHeaders, HeaderFields, header_uuid
from .input_files import gather_inputs, read_list
from .inputs import Inputs, calculate_inputs, eviction_summary, internal_error_reason
from .layout import lay_out
from .map_file import json_map, text_map
from .model import CacheModel
from .objc_optimizations import ObjCOptimizations, parse_objc_optimizations
from .optimizers import DylibResult, optimizers_for
from .options import BuildOptions, BuildResult, cache_config
from .output import OutputSet
from .progress import BuildProgress
from .scratch import ScratchFiles
from .timing import Timer
from .workers import run_tasks

__all__ = ["BuildOptions", "BuildResult", "CacheBuilder", "DylibFailures", "build_cache"]


class CacheBuilder:
    def __init__(self, options: BuildOptions, excluded: dict[str, str] | None = None) -> None:
        self.options = options
        #: dylibs an earlier attempt failed on in a later phase: path -> reason
        self.excluded = dict(excluded or {})
        self.config = cache_config(options)
        self.timer = Timer()
        self.progress = options.progress or BuildProgress()
        self.warnings: list[str] = []
        wanted = None  # no file: objc_imp_caches' default
        if options.no_objc_imp_caches:
            wanted = ObjCOptimizations()
        elif options.objc_optimizations is not None:
            wanted = parse_objc_optimizations(options.objc_optimizations)
        self.optimizers = optimizers_for(self.config, options.objc_preattached_categories, wanted)
        self.headers = CacheHeaders()
        self.inputs: Inputs | None = None
        self.model: CacheModel | None = None
        self.buffers = CacheBuffers()
        #: every cached dylib's pass results, in cache order (phase 5)
        self.results: list[DylibResult] = []
        self.output: OutputSet | None = None
        self.final_paths: list[str] = []
        #: files of an earlier cache of the same name that this build removed
        self.removed: list[str] = []

    # ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        self.progress.phase(name)
        with self.timer.phase(name):
            yield
            self._release_pages()

    def _release_pages(self) -> None:
        """Drop the input and output pages this process touched from its resident set."""
        self.buffers.release_pages()
        if self.inputs is not None:
            for ci in self.inputs.dylibs:
                ci.mapped.release_pages()

    def _jobs(self) -> int:
        return self.options.jobs or (os.cpu_count() or 1)

    def _model(self) -> CacheModel:
        assert self.model is not None, "calculate_inputs first"
        return self.model

    def build(self) -> BuildResult:
        try:
            with self._phase("calculate_inputs"):
                self.calculate_inputs()
            with self._phase("estimate_global_optimizations"):
                self.estimate_global_optimizations()
            with self._phase("create_subcaches"):
                self.create_subcaches()
            with self._phase("pre_dylib_emit"):
                self.pre_dylib_emit()
            with self._phase("run_dylib_passes"):
                self.run_dylib_passes()
            with self._phase("post_dylib_emit"):
                self.post_dylib_emit()
            with self._phase("finalize"):
                uuid = self.finalize()
        except BaseException:
            self._discard()
            raise
        assert self.inputs is not None
        dylibs = self._model().dylibs
        return BuildResult(
            list(self.final_paths),
            self.final_paths[0] + ".map",
            self.final_paths[0] + ".json",
            uuid,
            [d.install_name for d in dylibs],
            self.inputs.evictions,
            self.warnings,
            self.timer,
            self.removed,
            [d.install_name for d in dylibs if d.input.synthesized_split_seg],
        )

    # -- phase 1 --------------------------------------------------------------------------------

    def calculate_inputs(self) -> None:
        """Inputs: files, root, lists. Outputs: cacheDylibs in order, evictions, aliases."""
        o = self.options
        main_name = f"dyld_shared_cache_{self.config.arch.name}"
        with interrupts_deferred():  # the staging folder is removed by _discard once it is known
            self.output = OutputSet(o.output_dir, main_name)
        # the staging folder also holds the build's scratch files (removed with it)
        scratch = self.buffers.scratch = ScratchFiles(self.output.staging)
        found = gather_inputs(o.root, o.dylib_list, o.paths)
        self.warnings += found.warnings
        order = read_list(o.order_file, "--dylib-order") if o.order_file is not None else None
        if o.source_date_epoch is not None:
            for input_file in found.files:
                input_file.mtime, input_file.inode = o.source_date_epoch, 0
        self.progress.expect(len(found.files), "files")
        self.inputs = calculate_inputs(
            found.files,
            found.aliases,
            self.config,
            scratch,
            order,
            self._jobs(),
            self.excluded,
            found.root,
            self.progress.advance,
        )
        self.warnings += self.inputs.warnings
        if not self.inputs.dylibs:
            evictions = self.inputs.evictions
            detail = f" ({eviction_summary(evictions)})" if evictions else ""
            raise NothingPlacedError(f"no input dylib can be placed in the cache{detail}", list(evictions))
        dylibs = make_cache_dylibs(self.inputs, self.config)
        self.model = CacheModel(
            self.config, dylibs, self.inputs.aliases, scratch=scratch, jobs=self._jobs()
        )

    # -- phase 2 --------------------------------------------------------------------------------

    def estimate_global_optimizations(self) -> None:
        """Inputs: cacheDylibs. Outputs: the optimizers' estimates (trie, patch table, ...)."""
        for optimizer in self.optimizers:
            optimizer.estimate(self._model())

    # -- phase 3 --------------------------------------------------------------------------------

    def create_subcaches(self) -> None:
        """Inputs: cacheDylibs, estimates. Outputs: subcaches with every chunk placed, and the
        output files, sized and mapped (zero-filled)."""
        model = self._model()
        for optimizer in self.optimizers:
            optimizer.place(model)
        self.headers.place(model)
        for sub in model.subcaches:
            sub.remove_empty_regions()
        for optimizer in self.optimizers:
            optimizer.measure(model)
        model.total_vm_size = lay_out(model.subcaches, self.config)
        assert self.output is not None
        main_name = self.output.main_name
        for sub in model.subcaches:
            mm = self.output.create(main_name + sub.suffix, sub.file_size)
            self.final_paths.append(self.output.final(main_name + sub.suffix))
            self.buffers.add(sub, mm)

    # -- phase 4 --------------------------------------------------------------------------------

    def pre_dylib_emit(self) -> None:
        """Inputs: the layout, the files. Outputs: what the dylib passes read (lookups, strings)."""
        for optimizer in self.optimizers:
            optimizer.pre_dylib_emit(self._model(), self.buffers)

    # -- phase 5 --------------------------------------------------------------------------------

    def dylib_passes(self, index: int) -> DylibResult:
        """Every optimizer's pass over one dylib; runs in a worker, writes only its own chunks."""
        dylib = self._model().dylibs[index]
        result = DylibResult(index)
        try:
            dylib.input.restore_decodes(last=True)  # a retry starts over with new scratch files
            for optimizer in self.optimizers:
                optimizer.dylib_pass(dylib, self.buffers, result)
        except DyldCacheError as exc:
            result.error = str(exc)
        except Exception as exc:  # a bug of ours on odd input: costs this dylib, not the build
            result.error = internal_error_reason(exc)
        finally:
            # what this dylib's passes decoded and touched; later dylibs need none of it
            dylib.input.drop_decodes()
            dylib.input.mapped.release_pages()
            self.buffers.release_pages()
        result.slides = None  # read by the bind pass in this process only
        return result

    def run_dylib_passes(self) -> None:
        """Inputs: subcaches, buffers. Outputs: dylibs copied, adjusted, bound, LINKEDIT written."""
        dylibs = self._model().dylibs
        n = len(dylibs)
        self.progress.expect(n, "dylibs")
        outcomes = run_tasks(
            self.dylib_passes, n, self._jobs() if n >= 8 else 1, on_result=self.progress.advance
        )
        failures = {dylibs[o.index].install_name: o.error for o in outcomes if o.error is not None}
        for o in outcomes:
            self.warnings += o.warnings
            for name, s in o.seconds.items():
                self.timer.add(name, s)
        if failures:
            raise DylibFailures(failures)
        self.results = outcomes

    # -- phase 6 --------------------------------------------------------------------------------

    def post_dylib_emit(self) -> None:
        """Inputs: every dylib's results. Outputs: the global tables, symbol pools, slide info."""
        for optimizer in self.optimizers:
            optimizer.emit(self._model(), self.buffers, self.results)

    # -- phase 7 --------------------------------------------------------------------------------

    def finalize(self) -> bytes:
        """Inputs: everything. Outputs: headers, code signatures, UUIDs, map files, renamed files."""
        model = self._model()
        fields = {sub: HeaderFields() for sub in model.subcaches}
        for sub in model.subcaches:
            for optimizer in self.optimizers:
                optimizer.header_fields(model, sub, fields[sub])
        self.headers.write(model, self.buffers, fields)
        for optimizer in self.optimizers:
            optimizer.finalize(model, self.buffers)
        uuid = header_uuid(self.buffers.of(model.main))
        assert self.inputs is not None and self.output is not None
        main = self.output.main_name
        self.output.write(main + ".map", encode_name(text_map(model.subcaches, model.dylibs)))
        self.output.write(
            main + ".json",
            json_map(self.config, model.dylibs, uuid, evictions=self.inputs.evictions).encode(),
        )
        self.buffers.clear()
        self.output.close_maps()
        self._check_own_output()
        # subcaches before the main file that names them; the maps last
        cache_files = [main + s.suffix for s in model.subcaches]
        self.removed = self.output.commit(cache_files[1:] + cache_files[:1], self.progress.committed)
        return uuid

    def _check_own_output(self) -> None:
        """The cheap part of ``verify`` on the staged cache: mappings, every slide-info chain and
        its targets, every image's segments. A problem here is a bug in the builder."""
        assert self.output is not None
        jobs = self._jobs()
        problems = verify_cache(
            self.output.staged(self.output.main_name),
            signatures=False,
            run=lambda task, count: run_tasks(task, count, jobs),
        )
        if problems:
            raise BuildError(
                "internal: the new cache fails its own check (a bug in dyldcache; please report it): "
                + "; ".join(problems[:5])
            )

    def _discard(self) -> None:
        self.buffers.clear()
        if self.output is not None:
            self.output.discard()


class DylibFailures(BuildError):
    """Dylibs that a phase after calculate_inputs could not process: install name -> reason."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{name}: {why}" for name, why in failures.items()))


def build_cache(options: BuildOptions) -> BuildResult:
    """Build a cache (Python API of ``dyldcache build``); see BuildOptions and BuildResult.

    A dylib that fails in a later phase (a split seg reference that cannot reach its target in
    this layout, a pointer slide info cannot express, ...) is evicted with that reason and the
    cache is laid out again without it, as Apple's builder does when a cache overflows.

    Raises a DyldCacheError for anything a user can cause (NothingPlacedError when no input
    can be placed, with every reason). On any error, and on KeyboardInterrupt, the output
    folder is left as it was: worker processes are stopped and nothing is left behind.
    """
    excluded: dict[str, str] = {}
    while True:
        try:
            return CacheBuilder(options, excluded).build()
        except DylibFailures as exc:
            new = {name: why for name, why in exc.failures.items() if name not in excluded}
            if not new:
                raise BuildError(f"internal: evicting failed dylibs did not help: {exc}") from None
            excluded.update(new)
            if options.progress is not None:
                options.progress.retry(len(new))
