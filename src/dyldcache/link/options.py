"""What a link is asked to do (:class:`LinkOptions`, one :class:`LinkInput` per input file) and
what it gives back (:class:`LinkResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class LinkInput:
    """One input of a link: an object file (.o), a dylib or a .tbd stub to link against."""

    path: str
    #: for dylibs: "load", "weak", "reexport" or "upward"
    mode: str = "load"


@dataclass(slots=True)
class LinkOptions:
    """What to link (the options of ``dyldcache link``): ``inputs`` (objects, and the dylibs or
    .tbd stubs they link against) into the dylib ``output`` for ``arch`` ("arm64", "arm64e",
    "x86_64"), named ``install_name``, with split seg info so that the cache builder can move
    its segments. ``fixups`` is "chained" (the default) or "opcodes"; ``search_paths`` are where
    dependencies named by install name are looked for."""

    arch: str
    output: str
    #: "" takes the stub library's install name
    install_name: str
    inputs: list[LinkInput]
    platform: str | None = None
    fixups: str = "chained"
    search_paths: list[str] = field(default_factory=list)
    #: None: the stub library's, else 1.0.0
    current_version: int | None = None
    compatibility_version: int | None = None
    #: (existing symbol, alias name) pairs, like ld64 -alias
    aliases: list[tuple[str, str]] = field(default_factory=list)
    #: split seg info version: 2, or 1 (x86_64 only: ld64's default there, with no __DATA_CONST)
    split_seg_version: int = 2
    #: opcode fixups only: calls to imports go through __la_symbol_ptr and __stub_helper, bound on
    #: first call by dyld_stub_binder (ld64's default before chained fixups)
    lazy_binding: bool = False
    #: a .tbd the output stands in for: its install name, versions and re-exports become the
    #: output's, and every symbol it lists that no input object defines gets a synthetic
    #: definition (link/stub_library.py)
    stub_library: str | None = None
    #: names the stub library lists that are data, not functions
    stub_data: frozenset[str] = frozenset()


@dataclass(slots=True)
class LinkResult:
    """What a link wrote: the dylib's path, its LC_UUID, and the linker's warnings."""

    path: str
    uuid: bytes
    warnings: list[str]
