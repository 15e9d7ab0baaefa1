"""Pointer entries from the fixups: every rebase, and every bind to a symbol of this image.

ld64 writes a POINTER_64 (THREADED_POINTER_64 on arm64e) entry for each pointer whose target is
in the image, wherever it lies: the builder takes the target's slide from it. Those are the
rebases (their target is known as linked) and the binds to a symbol the image exports itself
(weak definitions looked up by coalescing, flat-namespace lookups, ordinal 0 = self): their
target is the symbol's address, found in the exports trie, plus the addend. Pointers to other images need no
entry. 32-bit pointers refuse the image (no 64-bit cache carries them).
"""

from __future__ import annotations

import numpy as np

from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.fixups import FIXUP_FLAG_32BIT, FixupKind
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .image_map import ImageMap

#: library ordinals whose symbol this image may define: self (0), flat namespace (-2), weak
#: definition lookup (-3). The builder ignores bind-encoded pointers when it applies the entries,
#: so these only mirror what ld64 writes
_SELF_ORDINALS = (0, -2, -3)


def pointer_entries(image: MachOFile, imap: ImageMap) -> np.ndarray:
    fx = image.fixups
    recs = fx.records
    if not len(recs):
        return np.zeros(0, dtype=SPLIT_SEG_DTYPE)
    if np.any(recs["flags"] & FIXUP_FLAG_32BIT):
        first = int(recs["address"][np.flatnonzero(recs["flags"] & FIXUP_FLAG_32BIT)[0]])
        raise imap.error(first, "32-bit pointer")
    kind = (
        C.DYLD_CACHE_ADJ_V2_THREADED_POINTER_64 if image.arch == "arm64e" else C.DYLD_CACHE_ADJ_V2_POINTER_64
    )
    rebase = np.isin(recs["kind"], (FixupKind.REBASE, FixupKind.AUTH_REBASE))
    at = recs["address"][rebase].astype(np.int64)
    to = recs["target"][rebase].astype(np.int64)
    binds = recs[~rebase]
    if len(binds):
        own = {
            e.name: e.address
            for e in image.exports
            if e.kind == C.EXPORT_SYMBOL_FLAGS_KIND_REGULAR and not e.is_reexport
        }
        targets = []
        for i, rec in enumerate(binds):
            imp = fx.imports[int(rec["bind"])]
            addr = own.get(imp.name) if imp.ordinal in _SELF_ORDINALS else None
            if addr is not None:
                targets.append((i, imap.base + addr + int(rec["addend"])))
        if targets:
            idx = np.array([i for i, _ in targets])
            at = np.concatenate([at, binds["address"][idx].astype(np.int64)])
            to = np.concatenate([to, np.array([t for _, t in targets], dtype=np.int64)])
    # one entry per location (a lazy pointer is both a rebase and a lazy bind)
    locations, first_of = np.unique(at, return_index=True)
    return imap.entries(kind, locations, to[first_of], cross_segment_only=False, what="pointer")
