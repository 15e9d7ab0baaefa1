"""The layout dumps Apple's builder writes beside a cache: the text ``.map`` and the JSON map
(``docs/cache-format.md`` §11.3). They are produced from the layout, so they can be
written even when a later phase fails.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..cache.format import uuid_string
from ..names import json_safe
from .cache_dylib import CacheDylib
from .config import CacheConfig
from .inputs import Eviction
from .layout import RegionKind, SubCache

_MAP_NAMES = {
    RegionKind.TEXT: "EX",
    RegionKind.DATA_CONST: "RW",
    RegionKind.DATA: "RW",
    RegionKind.AUTH: "RW",
    RegionKind.AUTH_CONST: "RW",
    RegionKind.LINKEDIT: "RO",
}


def _size(n: int) -> str:
    return f"{n >> 20:4d}MB" if n > (1 << 20) else f"{n >> 10:4d}KB"


def text_map(subcaches: list[SubCache], dylibs: list[CacheDylib]) -> str:
    lines = []
    for sub in subcaches:
        for r in sub.mapped_regions():
            lines.append(
                f"mapping  {_MAP_NAMES[r.kind]} {_size(r.vm_size)} 0x{r.vm_addr:X} -> 0x{r.vm_end:X}"
            )
    lines.append("")
    lines.append("")
    for d in dylibs:
        lines.append(d.install_name)
        for seg in d.segments:
            if seg.chunk is None:
                continue
            lines.append(
                f"\t{seg.name:>16} 0x{seg.chunk.vm_addr:08X} -> 0x{seg.chunk.vm_addr + seg.cache_size:08X}"
            )
        lines.append("")
    # not in Apple's map: what the builder derived rather than read
    synthesized = [d.install_name for d in dylibs if d.input.synthesized_split_seg]
    if synthesized:
        lines.append(f"# split seg info synthesized (the input has none): {len(synthesized)} dylibs")
        lines += [f"#\t{name}" for name in synthesized]
        lines.append("")
    return "\n".join(lines) + "\n"


def json_map(
    config: CacheConfig,
    dylibs: list[CacheDylib],
    uuid: bytes,
    disposition: str = "",
    evictions: Sequence[Eviction] = (),
) -> str:
    images: list[dict[str, Any]] = []
    for d in dylibs:
        segs = [
            {
                "name": s.name,
                "start-vmaddr": f"0x{s.chunk.vm_addr:x}",
                "end-vmaddr": f"0x{s.chunk.vm_addr + s.cache_size:x}",
            }
            for s in d.segments
            if s.chunk is not None
        ]
        image: dict[str, Any] = {
            "path": d.install_name,
            "uuid": uuid_string(d.image.uuid or bytes(16)),
            "segments": segs,
            # not in Apple's map: where the split seg info came from
            "split-seg-info": "synthesized" if d.input.synthesized_split_seg else "linker",
        }
        if d.install_name != d.image.install_name:
            # not in Apple's map: the input's own name, when the cache carries another
            image["input-install-name"] = d.image.install_name
        images.append(image)
    doc = {
        "base-address": f"0x{config.base_address:x}",
        "disposition": disposition,
        # not in Apple's map: which inputs were left out, and why
        "evicted": [{"path": e.path, "reason": e.reason} for e in evictions],
        "images": images,
        "uuid": uuid_string(uuid),
        "version": "1",
    }
    return json.dumps(json_safe(doc), indent=2, sort_keys=True) + "\n"
