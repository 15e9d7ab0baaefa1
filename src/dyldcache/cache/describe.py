"""``dyldcache info CACHE`` and ``dyldcache list CACHE``: what an existing cache holds.

``info`` reports what ``dyld_shared_cache_util -info`` does (UUID, platform, cache type,
header size, mappings of every file with their slide info, subcaches, code signature, local
symbols, dylibs trie); ``list`` prints one image per line (``--aliases``: and one line per alias
the dylibs trie gives it). Both are plain functions returning plain data (:func:`cache_info`,
:func:`cache_list`) with a text or ``--json`` rendering.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..macho import constants as C
from ..report import add_json_option, print_json
from .format import CACHE_TYPE_NAMES, uuid_string
from .reader import CacheFile, DyldCache


def _prot(p: int) -> str:
    return ("r" if p & 1 else "-") + ("w" if p & 2 else "-") + ("x" if p & 4 else "-")


def _file_info(f: CacheFile) -> dict[str, Any]:
    h = f.header
    return {
        "path": f.path,
        "suffix": f.suffix,
        "uuid": uuid_string(h.uuid),
        "mappings": [
            {
                "name": m.name,
                "address": m.address,
                "end": m.end,
                "size": m.size,
                "file_offset": m.file_offset,
                "max_prot": m.max_prot,
                "init_prot": m.init_prot,
                "flags": m.flags,
                "slide_info": None
                if not m.slide_info_size
                else {
                    "version": f.slide_info_version(m.index),
                    "offset": m.slide_info_offset,
                    "size": m.slide_info_size,
                },
            }
            for m in f.mappings
        ],
        "code_signature": {"offset": h.code_signature_offset, "size": h.code_signature_size}
        if h.code_signature_size
        else None,
    }


def cache_info(path: str) -> dict[str, Any]:
    """Everything ``dyldcache info`` prints, as plain data (addresses and sizes as ints)."""
    with DyldCache.open(path) as cache:
        h = cache.header

        def field(name: str) -> Any:
            return getattr(h, name) if h.has_field(name) else None

        locals_ = cache.local_symbols()
        trie_size = field("dylibs_trie_size")
        return {
            "path": cache.path,
            "magic": h.magic.rstrip(b"\0").decode("ascii", "replace"),
            "arch": cache.arch,
            "uuid": uuid_string(cache.uuid),
            "platform": cache.platform,
            "platform_name": C.PLATFORM_NAMES.get(cache.platform, str(cache.platform)),
            "cache_type": h.cache_type,
            "cache_type_name": CACHE_TYPE_NAMES.get(h.cache_type, str(h.cache_type)),
            "cache_sub_type": field("cache_sub_type"),
            "header_size": h.mapping_offset,
            "format_version": h.format_version,
            "dylibs_expected_on_disk": h.dylibs_expected_on_disk,
            "simulator": h.simulator,
            "locally_built_cache": h.locally_built_cache,
            "image_count": len(cache.images),
            "base_address": cache.base_address,
            "shared_region_size": field("shared_region_size"),
            "max_slide": field("max_slide"),
            "files": [_file_info(f) for f in cache.files],
            "subcaches": [
                {
                    "index": s.index,
                    "suffix": s.suffix,
                    "uuid": uuid_string(s.uuid),
                    "cache_vm_offset": s.cache_vm_offset,
                }
                for s in cache.subcaches
            ],
            "symbols_file": None if cache.symbols_file is None else _file_info(cache.symbols_file),
            "local_symbols": None
            if locals_ is None
            else {
                "path": locals_.path,
                "offset": locals_.offset,
                "nlist_count": int(locals_.nlist.size),
                "strings_size": len(locals_.strings),
                "entries_count": len(locals_.entries),
                "vm_offsets": locals_.vm_offsets,
            },
            "dylibs_trie": None
            if not trie_size
            else {"address": h.dylibs_trie_addr, "size": trie_size, "entries": len(cache.dylibs_trie())},
        }


def cache_list(path: str, aliases: bool = False) -> list[dict[str, Any]]:
    """One dict per image, in image order: index, path, address and UUID (and, with ``aliases``,
    the other paths the dylibs trie gives the image).

    The UUID comes from the image text info when the cache has it, else from the image's LC_UUID.
    """
    with DyldCache.open(path) as cache:
        texts = {t.load_address: t for t in cache.image_text_infos}
        paths = cache.image_paths() if aliases else None
        out = []
        for img in cache.images:
            text = texts.get(img.address)
            if text is not None:
                uuid: str | None = uuid_string(text.uuid)
            else:
                raw = cache.image_macho(img.index).uuid
                uuid = uuid_string(raw) if raw else None
            out.append({"index": img.index, "path": img.path, "address": img.address, "uuid": uuid})
            if paths is not None:
                out[-1]["aliases"] = paths[img.index][1:]
        return out


def _print_info(d: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"path:           {d['path']}\n")
    w(f"uuid:           {d['uuid']}\n")
    w(f"arch:           {d['arch']} (magic '{d['magic']}')\n")
    w(f"platform:       {d['platform_name']} ({d['platform']})\n")
    sub = "" if d["cache_sub_type"] is None else f", subtype {d['cache_sub_type']}"
    w(f"cache type:     {d['cache_type_name']} ({d['cache_type']}){sub}\n")
    bits = [name for name in ("dylibs_expected_on_disk", "simulator", "locally_built_cache") if d[name]]
    w(f"header:         {d['header_size']:#x} bytes, format version {d['format_version']}")
    w((", " + ", ".join(b.replace("_", " ") for b in bits) if bits else "") + "\n")
    w(f"image count:    {d['image_count']}\n")
    w(f"base address:   {d['base_address']:#x}\n")
    if d["shared_region_size"] is not None:
        w(f"shared region:  {d['shared_region_size']:#x} bytes, max slide {d['max_slide']:#x}\n")
    for f in [*d["files"], *([d["symbols_file"]] if d["symbols_file"] else [])]:
        w(f"file {f['path']}" + (f" ({f['suffix']})" if f["suffix"] else "") + f": uuid {f['uuid']}\n")
        for m in f["mappings"]:
            slide = ""
            if m["slide_info"]:
                s = m["slide_info"]
                slide = f"  slide info v{s['version']} at {s['offset']:#x} ({s['size']:#x} bytes)"
            w(
                f"  {m['name']:<14} {m['address']:#014x} -> {m['end']:#014x}  file {m['file_offset']:#012x}"
                f"  {_prot(m['init_prot'])}/{_prot(m['max_prot'])}{slide}\n"
            )
        cs = f["code_signature"]
        w(
            f"  code signature at {cs['offset']:#x} ({cs['size']:#x} bytes)\n"
            if cs
            else "  no code signature\n"
        )
    if d["subcaches"]:
        w("subcaches:\n")
        for s in d["subcaches"]:
            w(f"  {s['suffix']:<24} {s['uuid']}  base + {s['cache_vm_offset']:#x}\n")
    ls = d["local_symbols"]
    if ls:
        kind = "VM offsets" if ls["vm_offsets"] else "file offsets"
        w(
            f"local symbols:  {ls['nlist_count']} in {ls['path']} at {ls['offset']:#x}, "
            f"{ls['entries_count']} dylibs ({kind})\n"
        )
    else:
        w("local symbols:  none\n")
    t = d["dylibs_trie"]
    w(
        f"dylibs trie:    {t['address']:#x} ({t['size']:#x} bytes, {t['entries']} paths)\n"
        if t
        else "dylibs trie:    none\n"
    )


def _run_info(args: argparse.Namespace) -> int:
    d = cache_info(args.cache)
    if args.json:
        print_json(d)
    else:
        _print_info(d)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    images = cache_list(args.cache, args.aliases)
    if args.json:
        print_json(images)
        return 0
    for img in images:
        line = ""
        if args.vmaddr:
            line += f"{img['address']:#011x} "
        if args.uuid:
            line += f"<{img['uuid'] or '-'}> "
        sys.stdout.write(line + img["path"] + "\n")
        # dyld_shared_cache_util -list prints every path of the image, with the same prefix
        for alias in img.get("aliases", []):
            sys.stdout.write(f"{line}{alias} -> {img['path']}\n")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("info", help="describe a dyld shared cache (header, mappings, subcaches)")
    p.add_argument("cache", help="the main cache file (subcaches and .symbols are found next to it)")
    add_json_option(p)
    p.set_defaults(func=_run_info)
    p = subparsers.add_parser("list", help="list the images of a dyld shared cache")
    p.add_argument("cache", help="the main cache file")
    add_json_option(p, "machine-readable output (all fields)")
    p.add_argument("--uuid", action="store_true", help="show each image's UUID")
    p.add_argument("--vmaddr", action="store_true", help="show each image's load address")
    p.add_argument(
        "--aliases", action="store_true", help="also list the other paths of each image (dylibs trie)"
    )
    p.set_defaults(func=_run_list)
