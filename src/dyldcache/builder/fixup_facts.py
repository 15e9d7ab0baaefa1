"""What the builder keeps of a dylib's decoded fixups and split seg info between phase 1 and
phase 5: the imports, which of them binds use, the bind count, the segments with authenticated
pointers, and where the decoded arrays lie in the build's scratch files.

The decoded fixups (one record per pointer) and split seg info (one entry per reference) are
the bulk of a dylib's decoded LINKEDIT, about 1.6 times its file size for the benchmark corpus.
Phase 1's workers decode them (to check eligibility), write the arrays to their scratch file and
send back only these facts; each per-dylib pass (phase 5) reads its dylib's arrays back and
drops them when the dylib is done (``docs/architecture.md``, "Memory"). Nothing is decoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..macho.file import MachOFile
from ..macho.fixups import FixupKind, Fixups, Import, WeakBind
from ..macho.split_seg import SplitSegInfo
from .scratch import ScratchArray, ScratchFiles

_BIND_KINDS = (int(FixupKind.BIND), int(FixupKind.AUTH_BIND))
_AUTH_KINDS = (int(FixupKind.AUTH_REBASE), int(FixupKind.AUTH_BIND))


@dataclass(frozen=True, slots=True)
class FixupFacts:
    #: every import of the dylib, in import-table order
    imports: list[Import]
    #: indexes into ``imports`` that at least one bind uses (sorted, unique)
    bound: np.ndarray
    #: number of bind records (pointers bound to an import)
    bind_count: int
    #: indexes of the segments holding an authenticated rebase or bind
    auth_segments: frozenset[int]
    #: the rest of the decoded Fixups, and its records in the scratch files
    records: ScratchArray
    source: str
    pointer_formats: dict[int, int]
    weak_binds: list[WeakBind]
    #: the split seg info (the linker's or synthesized): version and entries, or None
    split_seg: tuple[int, ScratchArray] | None

    @property
    def bound_imports(self) -> list[Import]:
        return [self.imports[k] for k in self.bound.tolist()]

    def restore(self, image: MachOFile) -> None:
        """Give ``image`` its decoded fixups and split seg info back (read from scratch)."""
        image.__dict__["fixups"] = Fixups(
            self.records.load(), self.imports, self.source, self.pointer_formats, self.weak_binds
        )
        split = None if self.split_seg is None else SplitSegInfo(self.split_seg[0], self.split_seg[1].load())
        image.__dict__["split_seg"] = split


def fixup_facts(image: MachOFile, scratch: ScratchFiles) -> FixupFacts:
    """The facts of ``image``'s fixups and split seg info (decoded if that was not done yet),
    their arrays written to ``scratch``."""
    fx = image.fixups
    recs = fx.records
    kinds = recs["kind"]
    binds = np.isin(kinds, _BIND_KINDS)
    auth = np.isin(kinds, _AUTH_KINDS)
    auth_segments: set[int] = set()
    if np.any(auth):
        addrs = recs["address"][auth]
        for seg in image.segments:
            if np.any((addrs >= seg.vmaddr) & (addrs < seg.vmaddr + seg.vmsize)):
                auth_segments.add(seg.index)
    info = image.split_seg
    return FixupFacts(
        list(fx.imports),
        np.unique(recs["bind"][binds]).astype(np.int32),
        int(np.count_nonzero(binds)),
        frozenset(auth_segments),
        scratch.write(recs),
        fx.source,
        dict(fx.pointer_formats),
        list(fx.weak_binds),
        None if info is None else (info.version, scratch.write(info.entries)),
    )
