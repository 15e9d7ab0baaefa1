"""dyldcache: build and inspect dyld shared caches (dyld-1162 format) on any OS.

The Python API is what the command line uses::

    from dyldcache import BuildOptions, build_cache, DyldCache

    result = build_cache(BuildOptions(arch="arm64", output_dir="out", root="my-root"))
    with DyldCache.open(result.files[0]) as cache:
        print([image.path for image in cache.images])

Every name below is importable from ``dyldcache`` itself; each is loaded on first use. This
module imports nothing at all when it runs, so that ``python -m dyldcache`` reaches the command
line's own Ctrl-C handling (``__main__.py``, ``cli.py``) as soon as Python has started.
"""

from __future__ import annotations

#: true for type checkers only (the name is what they look for); no ``typing`` import at run time
TYPE_CHECKING = False

__version__ = "0.1.0"

#: public name -> module that defines it ("module:name" where the names differ)
_EXPORTS: dict[str, str] = {
    # building
    "BuildOptions": "dyldcache.builder.pipeline",
    "BuildResult": "dyldcache.builder.pipeline",
    "build_cache": "dyldcache.builder.pipeline",
    "BuildProgress": "dyldcache.builder.progress",
    "Eviction": "dyldcache.builder.inputs",
    "link_examples": "dyldcache.examples",
    # linking
    "LinkInput": "dyldcache.link.linker",
    "LinkOptions": "dyldcache.link.linker",
    "LinkResult": "dyldcache.link.linker",
    # (``dyldcache.link`` is the linker's package, so its function is exported as link_dylib)
    "link_dylib": "dyldcache.link.linker:link",
    # reading caches
    "DyldCache": "dyldcache.cache.reader",
    "cache_info": "dyldcache.cache.describe",
    "cache_list": "dyldcache.cache.describe",
    "describe_cache_image": "dyldcache.cache.images",
    "cache_exports": "dyldcache.cache.images",
    "cache_dependents": "dyldcache.cache.images",
    "addresses_to_symbols": "dyldcache.cache.symbols",
    "symbols_to_addresses": "dyldcache.cache.symbols",
    "extract": "dyldcache.cache.extract",
    "verify_cache": "dyldcache.cache.verify",
    "uuid_string": "dyldcache.cache.format",
    # reading Mach-O files
    "MachOFile": "dyldcache.macho.file",
    "open_macho": "dyldcache.macho.file",
    "describe_file": "dyldcache.macho.describe",
    # errors
    "DyldCacheError": "dyldcache.errors",
    "UsageError": "dyldcache.errors",
    "InputError": "dyldcache.errors",
    "FormatError": "dyldcache.errors",
    "MachOFormatError": "dyldcache.errors",
    "CacheFormatError": "dyldcache.errors",
    "TbdFormatError": "dyldcache.errors",
    "LinkError": "dyldcache.errors",
    "BuildError": "dyldcache.errors",
    "NothingPlacedError": "dyldcache.errors",
    "OutputError": "dyldcache.fileio",
}

__all__ = [
    "BuildError",
    "BuildOptions",
    "BuildProgress",
    "BuildResult",
    "CacheFormatError",
    "DyldCache",
    "DyldCacheError",
    "Eviction",
    "FormatError",
    "InputError",
    "LinkError",
    "LinkInput",
    "LinkOptions",
    "LinkResult",
    "MachOFile",
    "MachOFormatError",
    "NothingPlacedError",
    "OutputError",
    "TbdFormatError",
    "UsageError",
    "__version__",
    "addresses_to_symbols",
    "build_cache",
    "cache_dependents",
    "cache_exports",
    "cache_info",
    "cache_list",
    "describe_cache_image",
    "describe_file",
    "extract",
    "link_dylib",
    "link_examples",
    "open_macho",
    "symbols_to_addresses",
    "uuid_string",
    "verify_cache",
]

if TYPE_CHECKING:
    from typing import Any

    from .builder.inputs import Eviction
    from .builder.pipeline import BuildOptions, BuildResult, build_cache
    from .builder.progress import BuildProgress
    from .cache.describe import cache_info, cache_list
    from .cache.extract import extract
    from .cache.format import uuid_string
    from .cache.images import cache_dependents, cache_exports, describe_cache_image
    from .cache.reader import DyldCache
    from .cache.symbols import addresses_to_symbols, symbols_to_addresses
    from .cache.verify import verify_cache
    from .errors import (
        BuildError,
        CacheFormatError,
        DyldCacheError,
        FormatError,
        InputError,
        LinkError,
        MachOFormatError,
        NothingPlacedError,
        TbdFormatError,
        UsageError,
    )
    from .examples import link_examples
    from .fileio import OutputError
    from .link.linker import LinkInput, LinkOptions, LinkResult
    from .link.linker import link as link_dylib
    from .macho.describe import describe_file
    from .macho.file import MachOFile, open_macho


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'dyldcache' has no attribute {name!r}")
    import importlib

    module, _, attribute = where.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
