"""What ``dyldcache build`` is asked to build (:class:`BuildOptions`), the configuration that
follows from it, and what a build wrote (:class:`BuildResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import UsageError
from .config import CacheConfig, make_config
from .inputs import Eviction
from .install_names import read_install_name_map
from .progress import BuildProgress
from .timing import Timer


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
    #: attach ObjC categories to their classes in the cache, as dyld-1162 always does
    #: (optimizers/objc_categories.py). Off by default: DyldExtractor's ObjC fixer cannot read
    #: the class_ro_t lists of lists it makes (it reads them as plain method lists)
    objc_preattached_categories: bool = False
    #: Apple's objcOptimizations JSON: the classes that get ObjC IMP caches
    #: (builder/objc_optimizations.py). None: every class on iOS arm64/arm64e, none elsewhere
    objc_optimizations: str | None = None
    #: build no IMP caches at all (overrides objc_optimizations)
    no_objc_imp_caches: bool = False

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


def cache_config(options: BuildOptions) -> CacheConfig:
    """The layout constants for the options' arch and platform, with the options' overrides."""
    config = make_config(
        options.arch,
        options.platform,
        options.subcache_text_limit,
        options.unmap_locals,
        options.apple_rules,
    )
    if options.install_name_map is not None:
        names = read_install_name_map(options.install_name_map)
        config = dataclasses.replace(config, install_names=names)
    return config
