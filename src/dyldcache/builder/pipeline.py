"""The cache builder: the seven phases of dyld-1162's SharedCacheBuilder, and nothing else.

    calculate_inputs -> estimate_global_optimizations -> create_subcaches -> pre_dylib_emit
    -> run_dylib_passes (parallel) -> post_dylib_emit -> finalize

Estimate, then lay out, then emit: no phase moves what an earlier phase placed. Output
files are written under temporary names and renamed into place only when every one of
them is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..cache.code_signature import (
    build_code_signature,
    code_directory,
    signature_size,
    uuid_from_code_directory,
)
from ..cache.format import CacheHeader, LocalSymbolsEntry64, LocalSymbolsInfo, SubcacheEntry
from ..cache.slide_info import (
    CACHE_POINTER_DTYPE,
    encode_slide_info_v2,
    encode_slide_info_v3,
    encode_slide_info_v5,
    slide_info_size,
)
from ..cache.verify import verify_cache
from ..errors import BuildError, DyldCacheError, NothingPlacedError, UsageError
from ..interrupts import interrupts_deferred
from ..macho import constants as C
from ..macho.exports_trie import write_trie
from ..macho.format import NLIST64_DTYPE
from ..macho.leb128 import uleb_encode
from ..names import encode_name
from .adjust import apply_split_seg
from .bind import CACHE_POINTER_FIELDS, BindResult, CacheExports, bind_dylib
from .cache_dylib import REGION_OF_KIND, CacheDylib, categorize_segments, segment_alignment
from .config import CacheConfig, make_config
from .dylib_emit import LinkeditPlacement, copy_segments, rewrite_load_commands, write_linkedit
from .headers import MainHeaderInfo, header_size, write_header
from .input_files import InputFile, files_from_paths, files_from_root
from .inputs import Eviction, Inputs, calculate_inputs, eviction_summary, internal_error_reason
from .install_names import read_install_name_map
from .layout import (
    Chunk,
    ChunkKind,
    RegionKind,
    SubCache,
    SubCacheKind,
    add_dynamic_config,
    check_no_overlap,
    layout_files,
    layout_vm,
    place_chunks,
    subcache_suffix,
)
from .linkedit import DylibSymbols, StringPool, UnmappedLocals, plan_symbol_tables, rebuilt_exports
from .map_file import json_map, text_map
from .objc import LIBOBJC, ObjCChunks, add_objc_chunks, emit_objc
from .output import OutputSet
from .patch_table import PatchTable
from .progress import BuildProgress
from .timing import Timer
from .workers import run_tasks

_DATA_REGIONS = (RegionKind.DATA_CONST, RegionKind.DATA, RegionKind.AUTH, RegionKind.AUTH_CONST)


@dataclass(slots=True)
class BuildOptions:
    """What to build (the options of ``dyldcache build``).

    The inputs are ``root`` (a root filesystem: the files under it are placed at their paths
    inside it, its symlinks become aliases), ``dylib_list`` (a file naming the dylibs, one a
    line; paths inside ``root`` when it is given, else host paths) and ``paths`` (dylibs given
    by host path, placed at their own install names). At least one is needed.
    """

    #: "arm64", "arm64e" or "x86_64"
    arch: str
    #: folder for the cache files (created if needed); files of an earlier cache of the same
    #: name that the new one does not own are removed
    output_dir: str
    #: "macos" or "ios"
    platform: str = "macos"
    root: str | None = None
    dylib_list: str | None = None
    paths: list[str] = field(default_factory=list)
    #: an order file: install names, one a line (the others follow in input order)
    order_file: str | None = None
    #: start a new subcache when __TEXT would pass this many bytes (default: the platform's)
    subcache_text_limit: int | None = None
    #: move local symbols to the .symbols file (default: the platform's choice; iOS does)
    unmap_locals: bool | None = None
    #: worker processes (0: one per core; 1: none)
    jobs: int = 0
    #: time each phase (BuildResult.timer)
    time_passes: bool = False
    #: hooks told how far the build has got (see builder/progress.py); None: nothing is told
    progress: BuildProgress | None = None
    #: Apple's OS-build policy rules as well as the format's (dyld-1162's exact eligibility)
    apple_rules: bool = False
    #: record this time (seconds since 1970) as every input's mtime, and 0 as its inode, in the
    #: image infos of caches whose dylibs stay on disk (macOS), instead of the files' own: the
    #: output then depends only on the input bytes, names and options (reproducible builds'
    #: SOURCE_DATE_EPOCH). dyld compares these fields with the files on disk to tell whether
    #: a file was replaced after the cache was built
    source_date_epoch: int | None = None
    #: a file of 'OLD -> NEW' install-name renames (builder/install_names.py)
    install_name_map: str | None = None

    def __post_init__(self) -> None:
        if self.jobs < 0:
            raise UsageError(f"jobs must be 0 (one per core) or more, not {self.jobs}")
        if self.source_date_epoch is not None and not 0 <= self.source_date_epoch < 1 << 64:
            raise UsageError(f"source date epoch {self.source_date_epoch} is not a 64-bit time")


@dataclass(slots=True)
class BuildResult:
    """What a build wrote (the result of :func:`build_cache`)."""

    #: the cache files, main file first (then the subcaches, then the .symbols file)
    files: list[str]
    #: the text map (.map) and the JSON map (.json) beside the main file
    map_path: str
    json_map_path: str
    #: the main file's UUID (16 bytes; ``dyldcache.cache.format.uuid_string`` prints it)
    uuid: bytes
    #: install names of the cached dylibs, in cache order
    dylibs: list[str]
    #: inputs left out of the cache, each with the reason (in Apple's wording)
    evictions: list[Eviction]
    warnings: list[str]
    #: phase times (filled when BuildOptions.time_passes)
    timer: Timer
    #: files of an earlier cache of the same name (old subcaches, .symbols) removed after the commit
    removed: list[str] = field(default_factory=list)
    #: install names of the placed dylibs whose split seg info was synthesized
    synthesized: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _DylibOutcome:
    index: int
    result: BindResult | None
    warnings: list[str]
    error: str | None
    seconds: dict[str, float]


class CacheBuilder:
    def __init__(self, options: BuildOptions, excluded: dict[str, str] | None = None) -> None:
        self.options = options
        #: dylibs an earlier attempt failed on in a later phase: path -> reason
        self.excluded = dict(excluded or {})
        self.config: CacheConfig = make_config(
            options.arch,
            options.platform,
            options.subcache_text_limit,
            options.unmap_locals,
            options.apple_rules,
        )
        if options.install_name_map is not None:
            names = read_install_name_map(options.install_name_map)
            self.config = dataclasses.replace(self.config, install_names=names)
        self.timer = Timer()
        self.progress = options.progress or BuildProgress()
        self.warnings: list[str] = []
        self.inputs: Inputs | None = None
        self.dylibs: list[CacheDylib] = []
        self.subcaches: list[SubCache] = []
        self.buffers: dict[int, np.ndarray] = {}
        self.output: OutputSet | None = None
        self.final_paths: list[str] = []
        #: files of an earlier cache of the same name that this build removed
        self.removed: list[str] = []
        self.header_chunks: dict[int, Chunk] = {}
        self.slide_chunks: dict[tuple[int, RegionKind], Chunk] = {}
        self.signature_chunks: dict[int, Chunk] = {}
        self.linkedit_place: dict[int, LinkeditPlacement] = {}
        self.symbols: dict[int, DylibSymbols] = {}
        self.pools: list[tuple[StringPool, Chunk]] = []
        self.unmapped: UnmappedLocals | None = None
        self.unmapped_chunk: Chunk | None = None
        self.trie_bytes = b""
        self.trie_chunk: Chunk | None = None
        self.patch_table: PatchTable | None = None
        self.patch_chunk: Chunk | None = None
        self.loaders_chunk: Chunk | None = None
        self.dynamic_chunk: Chunk | None = None
        self.total_vm_size = 0
        self.results: list[BindResult] = []
        self.export_index: CacheExports | None = None
        self.objc: ObjCChunks | None = None

    # ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        self.progress.phase(name)
        with self.timer.phase(name):
            yield

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
        main = self.final_paths[0]
        assert self.inputs is not None
        return BuildResult(
            list(self.final_paths),
            main + ".map",
            main + ".json",
            uuid,
            [d.install_name for d in self.dylibs],
            self.inputs.evictions,
            self.warnings,
            self.timer,
            self.removed,
            [d.install_name for d in self.dylibs if d.input.synthesized_split_seg],
        )

    # -- phase 1 --------------------------------------------------------------------------------

    def calculate_inputs(self) -> None:
        """Inputs: files, root, lists. Outputs: cacheDylibs in order, evictions, aliases."""
        o = self.options
        files: list[InputFile] = []
        aliases: dict[str, str] = {}
        dylib_list = None
        if o.dylib_list is not None:
            try:
                with open(o.dylib_list, encoding="utf-8") as f:
                    dylib_list = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            except OSError as exc:
                raise UsageError(f"--dylib-list {o.dylib_list}: {exc.strerror}") from None
        root = None
        if o.root is not None:
            files, aliases, warns, root = files_from_root(o.root, dylib_list)
            self.warnings += warns
        elif dylib_list is not None:
            try:
                files = files_from_paths(dylib_list)
            except UsageError as exc:
                raise UsageError(
                    f"--dylib-list {o.dylib_list}: {exc} (without --root, its entries are host paths)"
                ) from None
        files += files_from_paths(o.paths)
        if not files:
            raise UsageError(self._no_inputs_message(dylib_list))
        order = None
        if o.order_file is not None:
            try:
                with open(o.order_file, encoding="utf-8") as f:
                    order = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            except OSError as exc:
                raise UsageError(f"--dylib-order {o.order_file}: {exc.strerror}") from None
        if o.source_date_epoch is not None:
            for input_file in files:
                input_file.mtime, input_file.inode = o.source_date_epoch, 0
        jobs = self.options.jobs or (os.cpu_count() or 1)
        self.progress.expect(len(files), "files")
        self.inputs = calculate_inputs(
            files, aliases, self.config, order, jobs, self.excluded, root, self.progress.advance
        )
        self.warnings += self.inputs.warnings
        if not self.inputs.dylibs:
            evictions = self.inputs.evictions
            detail = f" ({eviction_summary(evictions)})" if evictions else ""
            raise NothingPlacedError(f"no input dylib can be placed in the cache{detail}", list(evictions))
        self.dylibs = [CacheDylib(ci.index, ci) for ci in self.inputs.dylibs]
        by_name = {d.install_name: d.index for d in self.dylibs}
        for d in self.dylibs:
            for path, kind in d.input.dependencies:
                target = by_name.get(path)
                if target is None and path in self.inputs.aliases:
                    target = by_name.get(self.inputs.aliases[path])
                d.dependents.append((target, kind))
            d.segments = categorize_segments(d.input, self.config)

    def _no_inputs_message(self, dylib_list: list[str] | None) -> str:
        """Why the inputs given hold no file to examine, and what to do."""
        o = self.options
        first = f" (first: {self.warnings[0]})" if self.warnings else ""
        if dylib_list is not None:
            if not dylib_list:
                return f"--dylib-list {o.dylib_list}: lists no dylibs (one path a line)"
            under = f" under --root {o.root}" if o.root is not None else ""
            return (
                f"--dylib-list {o.dylib_list}: none of its {len(dylib_list)} entries is a file{under}"
                f"{first}; entries are paths inside the root"
            )
        if o.root is not None:
            return f"--root {o.root}: holds no Mach-O file (dylibs are found at their install paths in it)"
        return "no inputs: give --root, --dylib-list or dylib paths"

    # -- phase 2 --------------------------------------------------------------------------------

    def estimate_global_optimizations(self) -> None:
        """Inputs: cacheDylibs. Outputs: sizes of the global tables (trie, patch table, loaders)."""
        assert self.inputs is not None
        entries = [(encode_name(d.install_name), uleb_encode(d.index)) for d in self.dylibs]
        by_name = {d.install_name: d.index for d in self.dylibs}
        entries += [(encode_name(a), uleb_encode(by_name[t])) for a, t in self.inputs.aliases.items()]
        raw = write_trie(sorted(entries))
        self.trie_bytes = raw + bytes(-len(raw) % 8)
        self.patch_table = PatchTable(len(self.dylibs))
        self.patch_table.estimate(self.dylibs)
        self.export_index = CacheExports(self.dylibs)

    # -- phase 3 --------------------------------------------------------------------------------

    def create_subcaches(self) -> None:
        """Inputs: cacheDylibs, estimates. Outputs: subcaches with every chunk placed."""
        cfg = self.config
        main = SubCache(SubCacheKind.MAIN)
        subs = [main]
        text_size = 0
        for d in self.dylibs:
            size = sum(s.cache_size for s in d.segments if s.kind is ChunkKind.DYLIB_TEXT)
            if text_size and text_size + size > cfg.subcache_text_limit:
                subs.append(SubCache(SubCacheKind.SUB, index=len(subs)))
                text_size = 0
            text_size += size
            sub = subs[-1]
            sub.dylibs.append(d.index)
            for seg in d.segments:
                if seg.kind is None:
                    continue
                region = sub.region(REGION_OF_KIND[seg.kind])
                seg.chunk = region.add(
                    Chunk(
                        f"{d.install_name} {seg.name}",
                        seg.kind,
                        seg.cache_size,
                        segment_alignment(seg),
                        dylib=d.index,
                    )
                )
        last = subs[-1]
        # LINKEDIT: each dylib's pieces go with it, or all into the last file (regions <= 4 GiB)
        groups: dict[int, list[CacheDylib]] = {}
        for i, sub in enumerate(subs):
            for di in sub.dylibs:
                target = len(subs) - 1 if cfg.all_linkedit_in_last_subcache else i
                groups.setdefault(target, []).append(self.dylibs[di])
        mode = "unmap" if cfg.unmap_local_symbols else "keep"
        if mode == "unmap":
            self.unmapped = UnmappedLocals()
        for si, group in sorted(groups.items()):
            self._add_linkedit(subs[si], group, mode)
        # global tables in the last file
        le = last.region(RegionKind.LINKEDIT)
        self.trie_chunk = le.add(Chunk("dylibs trie", ChunkKind.DYLIBS_TRIE, len(self.trie_bytes), 8))
        assert self.patch_table is not None
        self.patch_chunk = le.add(
            Chunk("patch table", ChunkKind.PATCH_TABLE, self.patch_table.estimated_size(), 8)
        )
        # dyld dereferences dylibsPBLSetAddr: give it readable memory whose magic is not 'sp4d',
        # so dyld builds its loaders at run time
        self.loaders_chunk = le.add(Chunk("prebuilt loaders", ChunkKind.PREBUILT_LOADERS, 16, 8))
        self.dynamic_chunk = add_dynamic_config(last)
        # ObjC tables go to the file that holds libobjc
        objc_sub = next(
            (s for s in subs if any(self.dylibs[i].install_name == LIBOBJC for i in s.dylibs)), None
        )
        if objc_sub is not None:
            self.objc = add_objc_chunks(objc_sub, self.dylibs, cfg.arch.uses_pointer_auth)
        for i, sub in enumerate(subs[1:], 1):
            sub.index = i
        if self.unmapped is not None:
            sym = SubCache(SubCacheKind.SYMBOLS)
            subs.append(sym)
            size = LocalSymbolsInfo.SIZE + LocalSymbolsEntry64.SIZE * len(self.dylibs)
            size = (
                -(-size // 16) * 16 + self.unmapped.count * NLIST64_DTYPE.itemsize + self.unmapped.pool.size
            )
            self.unmapped_chunk = sym.region(RegionKind.UNMAPPED).add(
                Chunk("unmapped locals", ChunkKind.UNMAPPED_SYMBOLS, size, 16)
            )
        # every file: a header, slide info for its data regions, a code signature
        for i, sub in enumerate(subs):
            sub.suffix = subcache_suffix(sub, cfg.platform)
            size = header_size(sub, self.dylibs, len([s for s in subs if s.kind is SubCacheKind.SUB]))
            self.header_chunks[i] = sub.region(RegionKind.TEXT).add(
                Chunk("cache header", ChunkKind.CACHE_HEADER, size, 0x4000)
            )
            for kind in _DATA_REGIONS:
                if kind in sub.regions:
                    self.slide_chunks[(i, kind)] = sub.region(RegionKind.LINKEDIT).add(
                        Chunk(f"slide info {kind.name}", ChunkKind.SLIDE_INFO, 0, 8)
                    )
            self.signature_chunks[i] = sub.region(RegionKind.CODE_SIGNATURE).add(
                Chunk("code signature", ChunkKind.CODE_SIGNATURE, 0, 0x4000)
            )
            sub.remove_empty_regions()
        self.subcaches = subs
        # size what depends on the layout of earlier regions, then lay out again
        layout_files(subs)
        for (i, kind), chunk in self.slide_chunks.items():
            region = subs[i].regions[kind]
            chunk.size = slide_info_size(cfg.slide_info_version, region.vm_size, cfg.slide_page_size)
        layout_files(subs)
        for chunk in self.signature_chunks.values():
            code_limit = chunk.file_offset
            chunk.size = (
                -(-signature_size(code_limit, cfg.code_sign_page_size, cfg.code_sign_identifier) // 0x4000)
                * 0x4000
            )
        layout_files(subs)
        self.total_vm_size = layout_vm(subs, cfg)
        place_chunks(subs)
        check_no_overlap(subs)
        if self.total_vm_size > cfg.cache_size:
            raise BuildError(
                f"cache needs {self.total_vm_size:#x} bytes of VM, more than the shared region "
                f"({cfg.cache_size:#x})"
            )

    def _add_linkedit(self, sub: SubCache, group: list[CacheDylib], mode: str) -> None:
        le = sub.region(RegionKind.LINKEDIT)
        pool, tables = plan_symbol_tables(group, mode, self.unmapped)
        pool_chunk = le.add(Chunk("symbol strings", ChunkKind.SYMBOL_STRINGS, pool.size, 1))
        self.pools.append((pool, pool_chunk))
        for d in group:
            syms = tables[d.index]
            self.symbols[d.index] = syms
            pieces: dict[str, Chunk] = {}
            pieces["nlist"] = le.add(
                Chunk(
                    f"{d.install_name} nlist",
                    ChunkKind.SYMBOL_NLIST,
                    len(syms.nlist) * NLIST64_DTYPE.itemsize,
                    8,
                    d.index,
                )
            )
            sizes = {
                "indirect": len(syms.indirect) * 4,
                "exports": len(rebuilt_exports(d, estimate=True)),
                "function_starts": len(d.image.linkedit_data(C.LC_FUNCTION_STARTS) or b""),
                "data_in_code": len(d.image.linkedit_data(C.LC_DATA_IN_CODE) or b""),
            }
            for name, size in sizes.items():
                if size:
                    pieces[name] = le.add(
                        Chunk(f"{d.install_name} {name}", ChunkKind.LINKEDIT_DYLIB, size, 8, d.index)
                    )
            self.linkedit_place[d.index] = LinkeditPlacement(le, pieces, pool_chunk)

    # -- phase 4 --------------------------------------------------------------------------------

    def pre_dylib_emit(self) -> None:
        """Inputs: the layout. Outputs: the output files, sized and mapped (zero-filled)."""
        main_name = f"dyld_shared_cache_{self.config.arch.name}"
        with interrupts_deferred():  # the staging folder is removed by _discard once it is known
            self.output = OutputSet(self.options.output_dir, main_name)
        for i, sub in enumerate(self.subcaches):
            mm = self.output.create(main_name + sub.suffix, sub.file_size)
            self.final_paths.append(self.output.final(main_name + sub.suffix))
            self.buffers[i] = np.frombuffer(mm, dtype=np.uint8)

    # -- phase 5 --------------------------------------------------------------------------------

    def _subcache_of(self, chunk: Chunk) -> int:
        for i, sub in enumerate(self.subcaches):
            if chunk.region is not None and chunk.region.subcache is sub:
                return i
        raise AssertionError(chunk.name)

    def dylib_passes(self, index: int) -> _DylibOutcome:
        """Every per-dylib pass for one dylib; runs in a worker, writes only its own chunks."""
        d = self.dylibs[index]
        warnings: list[str] = []
        secs: dict[str, float] = {}
        assert self.export_index is not None

        def timed(name: str, t0: float) -> float:
            t1 = time.perf_counter()
            secs[name] = t1 - t0
            return t1

        try:
            t = time.perf_counter()
            buf = self.buffers[self._subcache_of(d.text.chunk)]  # type: ignore[arg-type]
            copy_segments(d, buf)
            t = timed("copy segments", t)
            slides = apply_split_seg(d, buf)
            t = timed("apply split seg", t)
            result = bind_dylib(d, self.export_index, slides)
            self._write_absolutes(d, buf, result)
            t = timed("bind", t)
            place = self.linkedit_place[index]
            le_buf = self.buffers[self._subcache_of(place.pool)]
            trie = rebuilt_exports(d)
            write_linkedit(d, le_buf, place, self.symbols[index], trie)
            rewrite_load_commands(d, buf, place, self.symbols[index], len(trie), warnings)
            timed("linkedit and load commands", t)
            problem = check_slide_pointers(self.config, result.pointers)
            if problem is not None:
                return _DylibOutcome(index, None, warnings, f"a pointer cannot be slid: {problem}", secs)
            return _DylibOutcome(index, result, warnings, None, secs)
        except DyldCacheError as exc:
            return _DylibOutcome(index, None, warnings, str(exc), secs)
        except Exception as exc:  # a bug of ours on odd input: costs this dylib, not the build
            return _DylibOutcome(index, None, warnings, internal_error_reason(exc), secs)

    def _write_absolutes(self, d: CacheDylib, buf: np.ndarray, result: BindResult) -> None:
        locs = result.absolute_locations
        if not len(locs):
            return
        offsets = np.full(len(locs), -1, dtype=np.int64)
        for s in d.segments:
            if s.chunk is None:
                continue
            inside = (locs >= s.chunk.vm_addr) & (locs < s.chunk.vm_end)
            offsets[inside] = s.chunk.file_offset + (locs[inside] - np.uint64(s.chunk.vm_addr)).astype(
                np.int64
            )
        if np.any(offsets < 0):
            bad = int(locs[np.flatnonzero(offsets < 0)[0]])
            raise BuildError(f"fixup at {bad:#x} is outside the dylib's segments")
        view = np.ndarray(shape=(len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
        view[offsets] = result.absolute_values

    def run_dylib_passes(self) -> None:
        """Inputs: subcaches, buffers. Outputs: dylibs copied, adjusted, bound, LINKEDIT written."""
        n = len(self.dylibs)
        jobs = self.options.jobs or (os.cpu_count() or 1)
        self.progress.expect(n, "dylibs")
        outcomes = run_tasks(self.dylib_passes, n, jobs if n >= 8 else 1, on_result=self.progress.advance)
        failures = {self.dylibs[o.index].install_name: o.error for o in outcomes if o.error is not None}
        for o in outcomes:
            self.warnings += o.warnings
            for name, s in o.seconds.items():
                self.timer.add(name, s)
        if failures:
            raise DylibFailures(failures)
        self.results = [o.result for o in outcomes if o.result is not None]

    # -- phase 6 --------------------------------------------------------------------------------

    def post_dylib_emit(self) -> None:
        """Inputs: bound pointers, tables. Outputs: slide info, trie, patch table, symbol pools."""
        cfg = self.config
        pointers = (
            np.concatenate([r.pointers for r in self.results])
            if self.results
            else np.zeros(0, dtype=CACHE_POINTER_FIELDS)
        )
        pointers = pointers[np.argsort(pointers["location"], kind="stable")]
        self.slide_used: dict[tuple[int, RegionKind], int] = {}
        claimed = np.zeros(len(pointers), dtype=bool)
        for (i, kind), chunk in self.slide_chunks.items():
            region = self.subcaches[i].regions[kind]
            lo = np.searchsorted(pointers["location"], region.vm_addr)
            hi = np.searchsorted(pointers["location"], region.vm_end)
            claimed[lo:hi] = True
            sel = pointers[lo:hi]
            p = np.zeros(len(sel), dtype=CACHE_POINTER_DTYPE)
            p["offset"] = sel["location"] - np.uint64(region.vm_addr)
            for f in ("target", "high8", "auth", "key", "addr_div", "diversity"):
                p[f] = sel[f]
            buf = self.buffers[i]
            mapping = buf[region.file_offset : region.file_offset + region.file_size].data
            try:
                blob = encode_slide_info(cfg, mapping, p)
            except ValueError as exc:
                raise BuildError(f"slide info for {kind.name}: {exc}") from None
            if len(blob) > chunk.size:
                raise BuildError(
                    f"internal: slide info for {kind.name} ({len(blob)} bytes) outgrew {chunk.size}"
                )
            buf[chunk.file_offset : chunk.file_offset + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
            self.slide_used[(i, kind)] = len(blob)
        if not np.all(claimed):
            k = int(np.flatnonzero(~claimed)[0])
            raise BuildError(
                f"pointer at {int(pointers['location'][k]):#x} is outside every data mapping "
                "(text relocations are not supported)"
            )
        self._put(self.trie_chunk, self.trie_bytes)
        assert self.patch_table is not None and self.patch_chunk is not None
        try:
            patches = self.patch_table.emit(
                self.patch_chunk.vm_addr, self.dylibs, self.results, self.patch_chunk.size
            )
        except ValueError as exc:
            raise BuildError(f"internal: {exc}") from None
        self._put(self.patch_chunk, patches)
        for pool, chunk in self.pools:
            self._put(chunk, pool.bytes())
        if self.objc is not None:
            emit_objc(self.objc, cfg.base_address, self._read, self._put)
        if self.unmapped is not None and self.unmapped_chunk is not None:
            self._put(self.unmapped_chunk, self._unmapped_payload())

    def _read(self, addr: int, size: int) -> bytes:
        for i, sub in enumerate(self.subcaches):
            for r in sub.mapped_regions():
                if r.vm_addr <= addr and addr + size <= r.vm_addr + r.file_size:
                    off = r.file_offset + (addr - r.vm_addr)
                    return bytes(self.buffers[i][off : off + size])
        raise BuildError(f"internal: address {addr:#x} is in no mapping")

    def _put(self, chunk: Chunk | None, raw: bytes) -> None:
        assert chunk is not None
        if len(raw) > chunk.size:
            raise BuildError(f"internal: {chunk.name} ({len(raw)} bytes) outgrew its chunk ({chunk.size})")
        buf = self.buffers[self._subcache_of(chunk)]
        buf[chunk.file_offset : chunk.file_offset + len(raw)] = np.frombuffer(raw, dtype=np.uint8)

    def _unmapped_payload(self) -> bytes:
        u = self.unmapped
        assert u is not None
        entries_off = LocalSymbolsInfo.SIZE
        nlist_off = -(-(entries_off + LocalSymbolsEntry64.SIZE * len(self.dylibs)) // 16) * 16
        # like the dylibs' own symbol tables, the unmapped locals hold cache addresses
        slid = []
        for d, nl in zip(self.dylibs, u.nlists, strict=True):
            nl = nl.copy()
            in_sect = (nl["n_type"] & C.N_TYPE) == C.N_SECT
            nl["n_value"][in_sect] = d.cache_addresses(nl["n_value"][in_sect])
            slid.append(nl)
        nlist = np.concatenate(slid) if slid else np.zeros(0, dtype=NLIST64_DTYPE)
        strings_off = nlist_off + len(nlist) * NLIST64_DTYPE.itemsize
        out = bytearray(strings_off)
        LocalSymbolsInfo(
            nlist_off, len(nlist), strings_off, u.pool.size, entries_off, len(self.dylibs)
        ).pack_into(out, 0)
        for i, d in enumerate(self.dylibs):
            start, count = u.ranges[i]
            LocalSymbolsEntry64(d.cache_load_address - self.config.base_address, start, count).pack_into(
                out, entries_off + i * LocalSymbolsEntry64.SIZE
            )
        out[nlist_off:strings_off] = nlist.tobytes()
        return bytes(out) + u.pool.bytes()

    # -- phase 7 --------------------------------------------------------------------------------

    def _os_version(self) -> int:
        for suffix in ("/libdyld.dylib", "/libSystem.B.dylib"):
            for d in self.dylibs:
                if d.install_name.endswith(suffix):
                    for bv in d.image.build_versions:
                        if bv.platform == self.config.platform:
                            return bv.minos
        return max((d.image.minos or 0) for d in self.dylibs)

    def max_slide(self) -> int:
        cfg = self.config
        subs = [s for s in self.subcaches if s.kind is not SubCacheKind.SYMBOLS]
        if cfg.layout == "discontiguous":
            limit = cfg.discontiguous_alignment
            best = limit
            for s in subs:
                data = [r for r in s.ordered_regions() if r.kind.is_data]
                for r in s.ordered_regions():
                    if r.kind in (RegionKind.TEXT, RegionKind.LINKEDIT, RegionKind.DYNAMIC_CONFIG):
                        best = min(best, limit - r.vm_size)
                if data:
                    best = min(best, limit - (data[-1].vm_end - data[0].vm_addr))
            return best
        last = self.subcaches[-1]
        end = max(r.vm_end for r in last.ordered_regions() if r.kind.reserves_vm)
        slide = cfg.base_address + cfg.cache_size - end
        text_end = max(
            r.vm_end for s in self.subcaches for r in s.ordered_regions() if r.kind is RegionKind.TEXT
        )
        if text_end - cfg.base_address <= 0x80000000:
            slide = 0x80000000 - (text_end - cfg.base_address)
        if cfg.max_slide_cap is not None:
            slide = min(slide, cfg.max_slide_cap)
        return slide

    def finalize(self) -> bytes:
        """Inputs: everything. Outputs: headers, code signatures, UUIDs, map files, renamed files."""
        cfg = self.config
        assert self.trie_chunk and self.patch_chunk and self.loaders_chunk and self.dynamic_chunk
        main_info = MainHeaderInfo(
            self.total_vm_size,
            self.max_slide(),
            self.trie_chunk,
            self.patch_chunk,
            self.loaders_chunk,
            self.dynamic_chunk,
            self._os_version(),
            objc_opts=self.objc.opts if self.objc is not None else None,
        )
        headers: dict[int, CacheHeader] = {}
        for i, sub in enumerate(self.subcaches):
            slide_infos = {
                kind: (c.file_offset, self.slide_used.get((j, kind), 0))
                for (j, kind), c in self.slide_chunks.items()
                if j == i
            }
            symbols_info = None
            if sub.kind is SubCacheKind.SYMBOLS and self.unmapped_chunk is not None:
                symbols_info = (self.unmapped_chunk.file_offset, self.unmapped_chunk.size)
            hdr_chunk = self.header_chunks[i]
            view = self.buffers[i][hdr_chunk.file_offset : hdr_chunk.file_offset + hdr_chunk.size].data
            headers[i] = write_header(
                view,
                sub,
                cfg,
                self.dylibs,
                self.subcaches,
                slide_infos,
                main_info if sub.kind is SubCacheKind.MAIN else None,
                symbols_info,
            )
            view.release()
        uuids: dict[int, bytes] = {}
        order = [i for i, s in enumerate(self.subcaches) if s.kind is not SubCacheKind.MAIN] + [0]
        for i in order:
            if i == 0:
                self._fill_main_uuids(headers, uuids)
            uuids[i] = self._sign(i)
        assert self.inputs is not None and self.output is not None
        main = self.output.main_name
        self.output.write(main + ".map", encode_name(text_map(self.subcaches, self.dylibs)))
        self.output.write(
            main + ".json", json_map(cfg, self.dylibs, uuids[0], evictions=self.inputs.evictions).encode()
        )
        self.buffers.clear()
        self.output.close_maps()
        self._check_own_output()
        # subcaches before the main file that names them; the maps last
        cache_files = [main + s.suffix for s in self.subcaches]
        self.removed = self.output.commit(cache_files[1:] + cache_files[:1], self.progress.committed)
        return uuids[0]

    def _check_own_output(self) -> None:
        """The cheap part of ``verify`` on the staged cache: mappings, every slide-info chain and
        its targets, every image's segments. A problem here is a bug in the builder."""
        assert self.output is not None
        problems = verify_cache(self.output.staged(self.output.main_name), signatures=False)
        if problems:
            raise BuildError(
                "internal: the new cache fails its own check (a bug in dyldcache; please report it): "
                + "; ".join(problems[:5])
            )

    def _fill_main_uuids(self, headers: dict[int, CacheHeader], uuids: dict[int, bytes]) -> None:
        buf = self.buffers[0]
        h = headers[0]
        listed = [i for i, s in enumerate(self.subcaches) if s.kind is SubCacheKind.SUB]
        for k, i in enumerate(listed):
            off = h.sub_cache_array_offset + k * SubcacheEntry.SIZE
            buf[off : off + 16] = np.frombuffer(uuids[i], dtype=np.uint8)
        for i, s in enumerate(self.subcaches):
            if s.kind is SubCacheKind.SYMBOLS:
                off = CacheHeader.offset_of("symbol_file_uuid")
                buf[off : off + 16] = np.frombuffer(uuids[i], dtype=np.uint8)

    def _sign(self, i: int) -> bytes:
        """Sign file ``i``; its UUID comes from the code directory (cache-format.md §6)."""
        cfg = self.config
        buf = self.buffers[i]
        sig = self.signature_chunks[i]
        code_limit = sig.file_offset
        text = self.subcaches[i].regions.get(RegionKind.TEXT)
        exec_base, exec_limit = (text.file_offset, text.file_size) if text is not None else (0, 0)
        sig_off = CacheHeader.offset_of("code_signature_offset")
        uuid_off = CacheHeader.offset_of("uuid")
        buf[sig_off : sig_off + 16] = np.frombuffer(
            code_limit.to_bytes(8, "little") + sig.size.to_bytes(8, "little"), dtype=np.uint8
        )
        buf[uuid_off : uuid_off + 16] = 0

        def sign() -> bytes:
            blob = build_code_signature(
                buf[:code_limit].data,
                identifier=cfg.code_sign_identifier,
                page_size=cfg.code_sign_page_size,
                exec_seg_base=exec_base,
                exec_seg_limit=exec_limit,
            )
            if len(blob) > sig.size:
                raise BuildError("internal: code signature outgrew its reservation")
            buf[code_limit : code_limit + sig.size] = 0
            buf[code_limit : code_limit + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
            return blob

        uuid = uuid_from_code_directory(code_directory(sign()))
        buf[uuid_off : uuid_off + 16] = np.frombuffer(uuid, dtype=np.uint8)
        sign()
        return uuid

    def _discard(self) -> None:
        self.buffers.clear()
        if self.output is not None:
            self.output.discard()


def encode_slide_info(cfg: CacheConfig, mapping: memoryview, pointers: np.ndarray) -> bytes:
    """Chain ``pointers`` (CACHE_POINTER_DTYPE, sorted) into ``mapping`` in the config's format."""
    if cfg.slide_info_version == 2:
        value_add = cfg.base_address if cfg.arch.name == "x86_64" else 0
        return encode_slide_info_v2(mapping, pointers, value_add=value_add, page_size=cfg.slide_page_size)
    if cfg.slide_info_version == 3:
        return encode_slide_info_v3(
            mapping, pointers, auth_value_add=cfg.base_address, page_size=cfg.slide_page_size
        )
    return encode_slide_info_v5(mapping, pointers, value_add=cfg.base_address, page_size=cfg.slide_page_size)


#: pointers further apart than this are checked in separate scratch buffers
_SCRATCH_GAP = 1 << 20


def check_slide_pointers(cfg: CacheConfig, pointers: np.ndarray) -> str | None:
    """Why slide info could not hold one of a dylib's bound pointers (CACHE_POINTER_FIELDS), or
    None: the encoder itself runs on scratch pages laid out like the cache's, so that such a
    dylib is evicted instead of failing the whole slide-info pass."""
    if not len(pointers):
        return None
    page = cfg.slide_page_size
    ptrs = pointers[np.argsort(pointers["location"], kind="stable")]
    locs = ptrs["location"].astype(np.int64)
    cuts = np.flatnonzero(np.diff(locs) > _SCRATCH_GAP) + 1
    for lo_i, hi_i in zip([0, *cuts.tolist()], [*cuts.tolist(), len(ptrs)], strict=True):
        group = ptrs[lo_i:hi_i]
        lo = int(locs[lo_i]) & ~(page - 1)
        hi = -(-(int(locs[hi_i - 1]) + 8) // page) * page
        p = np.zeros(len(group), dtype=CACHE_POINTER_DTYPE)
        p["offset"] = group["location"] - np.uint64(lo)
        for f in ("target", "high8", "auth", "key", "addr_div", "diversity"):
            p[f] = group[f]
        try:
            encode_slide_info(cfg, memoryview(bytearray(hi - lo)), p)
        except ValueError as exc:
            # the encoder names a mapping offset; the user wants the cache address
            message = str(exc)
            m = re.search(r"pointer at mapping offset (0x[0-9a-f]+)", message)
            if m is not None:
                message = message.replace(m.group(0), f"pointer at {lo + int(m.group(1), 16):#x}")
            return message
    return None


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
