"""What every phase after calculate_inputs shares: the configuration, the cache dylibs in cache
order, the aliases, and from phase 3 on the subcaches with every chunk placed."""

from __future__ import annotations

from dataclasses import dataclass, field

from .cache_dylib import CacheDylib
from .config import CacheConfig
from .layout import SubCache, SubCacheKind
from .scratch import ScratchFiles


@dataclass(eq=False, slots=True)
class CacheModel:
    config: CacheConfig
    #: the cache dylibs; ``dylibs[i].index == i``
    dylibs: list[CacheDylib]
    #: alias path -> install name of the cache dylib it names
    aliases: dict[str, str]
    #: the files, main first (set in phase 3)
    subcaches: list[SubCache] = field(default_factory=list)
    #: VM the files span, .symbols excluded (the main header's sharedRegionSize; set in phase 3)
    total_vm_size: int = 0
    #: the build's scratch files, for planned arrays that wait for a later phase (None: memory)
    scratch: ScratchFiles | None = None
    #: worker processes for the parallel steps of the serial phases
    jobs: int = 1

    @property
    def main(self) -> SubCache:
        return self.subcaches[0]

    def mapped_files(self) -> list[SubCache]:
        """The subcaches that are mapped at run time (all but .symbols)."""
        return [s for s in self.subcaches if s.kind is not SubCacheKind.SYMBOLS]

    def text_subcache(self, install_name: str) -> SubCache | None:
        """The file whose __TEXT holds the named dylib."""
        for sub in self.subcaches:
            if any(self.dylibs[i].install_name == install_name for i in sub.dylibs):
                return sub
        return None
