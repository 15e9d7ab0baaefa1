"""DyldExtractor 2.2.2 as a pass/fail gate on a cache we built (docs/validators.md Appendix B).

DyldExtractor's command line exits 0 whatever it logged, so its Python API is driven here with a
log handler that collects every warning and error, per image. Only one message is benign
("Symbols Cache doesn't contain local symbols": the cache simply has no unmapped locals). An
exception raised while an image is processed is reported as that image's message too, so a test
sees every image's fate in one dict.

Its stub and ObjC fixers decode arm64 machine code only (capstone ARM64): on x86_64 caches pass
``arm64_fixers=False`` to run only slide_info, linkedit_optimizer and macho_offset. It cannot read
slide info v5 at all (arm64e on macOS): do not gate those caches with it.
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass, field

#: messages that only mean "the cache has no such optional part". The second: dyld-1162's builder
#: zeroes LC_DYLD_INFO's lazy bind range in every cached dylib (cache_builder/
#: NewAdjustDylibSegments.cpp, case LC_DYLD_INFO: every lazy pointer is bound at build time), so
#: the stub fixer cannot point lazy pointers back at their __stub_helper entries in an extracted
#: dylib; it warns and leaves them bound, which is still a correct dylib.
BENIGN = ("Symbols Cache doesn't contain local symbols", "Missing lazy bind info to fix helper sect.")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class GateResult:
    #: install name -> non-benign messages (empty list: the image passed)
    problems: dict[str, list[str]] = field(default_factory=dict)
    #: install name -> unslid mach_header address, in DyldExtractor's image order
    images: dict[str, int] = field(default_factory=dict)
    #: install name -> extracted file (only when an output folder was given)
    extracted: dict[str, pathlib.Path] = field(default_factory=dict)

    @property
    def failures(self) -> dict[str, list[str]]:
        return {name: msgs for name, msgs in self.problems.items() if msgs}


def run_gate(
    main_path: str | pathlib.Path, *, arm64_fixers: bool = True, outdir: str | pathlib.Path | None = None
) -> GateResult:
    """Run DyldExtractor's per-image pipeline on every image of the cache at ``main_path``.

    Returns the non-benign messages per image and, with ``outdir``, writes each extracted dylib
    to ``outdir/<install name>``.
    """
    from DyldExtractor.converter import linkedit_optimizer, macho_offset, objc_fixer, slide_info, stub_fixer
    from DyldExtractor.dyld.dyld_context import DyldContext
    from DyldExtractor.extraction_context import ExtractionContext
    from DyldExtractor.macho.macho_context import MachOContext

    class _NullBar:
        def update(self, *args: object, **kwargs: object) -> None:
            pass

    path = pathlib.Path(main_path)
    log = logging.getLogger(f"dyldextractor-gate-{id(path)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = _Collect()
    log.addHandler(handler)
    result = GateResult()
    try:
        with open(path, "rb") as f:
            dyld = DyldContext(f)
            subfiles = dyld.addSubCaches(path)
            try:
                for img in dyld.images:
                    name = dyld.readString(img.pathFileOffset)[:-1].decode()
                    result.images[name] = img.address
                    handler.records.clear()
                    messages: list[str] = []
                    try:
                        off, ctx = dyld.convertAddr(img.address)
                        macho = MachOContext(ctx.fileObject, off, True)
                        if dyld.hasSubCaches():
                            main_map = next(m for m, c in dyld.mappings if c == ctx)
                            macho.addSubfiles(
                                main_map, ((m, c.makeCopy(copyMode=True)) for m, c in dyld.mappings)
                            )
                        ex = ExtractionContext(dyld, macho, _NullBar(), log)
                        slide_info.processSlideInfo(ex)
                        linkedit_optimizer.optimizeLinkedit(ex)
                        if arm64_fixers:
                            stub_fixer.fixStubs(ex)
                            objc_fixer.fixObjC(ex)
                        procs = macho_offset.optimizeOffsets(ex)
                        if outdir is not None:
                            out = pathlib.Path(outdir) / name.lstrip("/")
                            out.parent.mkdir(parents=True, exist_ok=True)
                            with open(out, "wb") as o:
                                for p in procs:
                                    o.seek(p.writeOffset)
                                    o.write(p.fileCtx.getBytes(p.readOffset, p.size))
                            result.extracted[name] = out
                    except Exception as exc:  # every failure, whatever its type, is a message of this image
                        messages.append(f"exception {type(exc).__name__}: {exc}")
                    messages = [
                        r.getMessage() for r in handler.records if not r.getMessage().startswith(BENIGN)
                    ] + messages
                    result.problems[name] = messages
            finally:
                for s in subfiles:
                    s.close()
    finally:
        log.removeHandler(handler)
    return result
