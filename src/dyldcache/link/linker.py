"""The small linker: relocatable objects (+ dylibs / .tbd stubs) -> one cache-ready MH_DYLIB.

It writes what Apple's ld64 writes for a shared-region dylib (``docs/linker-notes.md``):
``__TEXT`` / ``__DATA_CONST`` / ``__DATA`` / ``__LINKEDIT`` (+ ``__AUTH_CONST`` / ``__AUTH`` on
arm64e), stubs and GOTs, chained fixups or dyld-info opcodes, an exports trie, a symbol
table with indirect symbols, ``__unwind_info`` from compact unwind, and split seg info v2
computed from the relocations themselves. There is no code relaxation and no dead
stripping: every input byte is kept and every ADRP pair stays an ADRP pair.

:meth:`Linker.run` reads as the phases, each in its own module: load inputs (``inputs``),
resolve symbols (``resolution``), plan synthetic content (``synthetic``: stubs, GOT slots;
``unwind_section``: unwind rows), build, size and lay out output sections (``sections``),
write content and apply relocations (``relocations``, with the arch's appliers from
:mod:`dyldcache.arch`), build LINKEDIT (``linkedit``), write the header and load commands and
derive the UUID (``header``). A stand-in for a stub library (``-stub_library``) is the same link
with one more input: the synthetic object of ``link/stub_library.py``, made once the real
objects are loaded.
"""

from __future__ import annotations

from ..arch import ARCHS, Arch
from ..errors import LinkError
from ..fileio import write_atomically
from .header import HeaderWriter
from .inputs import Inputs
from .linkedit import build_linkedit
from .model import OutSection, SectionKind
from .options import LinkInput, LinkOptions, LinkResult
from .pointer_fixups import FixupRecorder
from .relocations import RelocationWriter
from .resolution import Symbols
from .sections import OutputSections
from .synthetic import SyntheticSections
from .unwind_section import UnwindSection

#: the public names of the linker (also importable from here, as they always were)
__all__ = ["LinkInput", "LinkOptions", "LinkResult", "Linker", "link"]


def link(options: LinkOptions) -> LinkResult:
    """Link ``options.inputs`` into ``options.output`` (written atomically)."""
    return Linker(options).run()


class Linker:
    def __init__(self, options: LinkOptions) -> None:
        if options.arch not in ARCHS:
            raise LinkError(f"unsupported architecture {options.arch!r}")
        if options.fixups not in ("chained", "opcodes"):
            raise LinkError(f"unknown fixup style {options.fixups!r} (chained or opcodes)")
        self.opts = options
        self.arch: Arch = ARCHS[options.arch]
        if self.arch.uses_pointer_auth and options.fixups != "chained":
            raise LinkError("arm64e needs chained fixups: authenticated pointers have no opcode encoding")
        self.chained = options.fixups == "chained"
        if options.split_seg_version not in (1, 2):
            raise LinkError(f"split seg version {options.split_seg_version} (1 or 2)")
        if options.split_seg_version == 1 and self.arch.name != "x86_64":
            raise LinkError("split seg v1 is only written for x86_64 (arm64 dylibs always use v2)")
        #: v1 dylibs keep every writable section in __DATA: v1 moves all data by one amount
        self.data_const = options.split_seg_version == 2
        if options.lazy_binding and self.chained:
            raise LinkError("lazy binding needs opcode fixups (chained fixups bind everything at load)")

    def run(self) -> LinkResult:
        arch, opts = self.arch, self.opts
        inputs = Inputs(opts, arch)
        inputs.load()
        symbols = Symbols(inputs)
        symbols.resolve(opts.aliases)
        unwind = UnwindSection(arch, symbols)
        unwind.collect()
        synthetic = SyntheticSections(arch, opts.lazy_binding)
        synthetic.plan(inputs.objects, symbols, unwind.personalities())
        layout = OutputSections(arch, self.data_const)
        layout.build(
            inputs.objects,
            synthetic.sections(self.data_const),
            bool(unwind.rows),
            symbols.common_section,
            dyld_private=bool(synthetic.lazy),
        )

        def synthetic_size(s: OutSection) -> int:
            return unwind.size() if s.kind is SectionKind.UNWIND_INFO else synthetic.size(s.kind)

        layout.size(synthetic_size)
        header = HeaderWriter(arch, self.chained, inputs, symbols, layout)
        layout.layout(header.header_end())
        synthetic.place(layout)

        image = bytearray(layout.linkedit_fileoff)
        for s in layout.sections:
            if s.kind is not SectionKind.REGULAR or s.is_zerofill:
                continue
            for isect in s.inputs:
                start = isect.out_addr - s.addr + s.fileoff
                image[start : start + isect.size] = isect.content
        fixups = FixupRecorder(arch, self.chained, layout, image)
        RelocationWriter(arch, symbols, layout, synthetic, unwind, fixups, image).apply_all()
        synthetic.write_stubs_and_gots(image, fixups)
        synthetic.write_lazy_binding(image, fixups)
        try:
            unwind_info = layout.section(SectionKind.UNWIND_INFO)
        except KeyError:
            pass
        else:
            unwind.write(unwind_info, layout, synthetic, image, fixups)

        linkedit = build_linkedit(
            arch, self.chained, opts.split_seg_version, symbols, layout, synthetic, unwind, fixups, image
        )
        header.binds_to_weak = fixups.binds_to_weak
        data = header.finish(image, linkedit)
        write_atomically(opts.output, data)
        return LinkResult(opts.output, header.uuid, inputs.warnings)
