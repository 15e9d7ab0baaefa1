"""``dyldcache objc CACHE``: the ObjC optimization of a cache, as ``dyld_shared_cache_util -objc-info``.

Without options it prints the summary ``-objc-info`` prints (table version and flags, how many
selectors, classes and protocols the tables hold, the relative method list selector base, and one
line per header_info entry with its ``objc_image_info`` version and flags), plus where the tables
were found. ``--selectors``, ``--classes`` and ``--protocols`` add the selector table, the classes
(and categories) of every image with their method lists, and the protocol table with the
protocols every image defines; ``--image`` narrows those to one image. A cache without ObjC
optimization says so in one line and exits 0.

:func:`objc_report` returns all of it as plain data; ``--json`` prints that.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..names import decode_name, json_safe
from ..record import Record
from .memory import CacheMemory
from .objc import ObjCOptimization, ObjectTable, StringTable, read_objc_optimization
from .objc_format import IMAGE_INFO_FLAG_NAMES, LIBOBJC_PATH, OBJC_OPT_FLAG_NAMES
from .objc_metadata import ImageMetadata, MethodList, read_metadata
from .reader import DyldCache


def _flag_names(value: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in names.items() if value & bit]


def _no_optimization_reason(cache: DyldCache) -> str:
    h = cache.header
    if h.has_field("objc_opts_size"):
        return "the header's objcOptsOffset is 0"
    if not any(img.path == LIBOBJC_PATH for img in cache.images):
        return f"the header predates objcOptsOffset and {LIBOBJC_PATH} is not in the cache"
    return f"{LIBOBJC_PATH} has no __TEXT,__objc_opt_ro with objc_opt_t version 15 or 16"


def _record(rec: Record, address: int | None) -> dict[str, Any]:
    return {"address": address, **dict(zip(rec.__match_args__, rec.values(), strict=True))}


def _table(t: StringTable | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "address": t.address,
        "capacity": t.capacity,
        "occupied": t.occupied,
        "shift": t.shift,
        "mask": t.mask,
        "salt": t.salt,
    }


def _object_table(t: ObjectTable | None, opt: ObjCOptimization) -> list[dict[str, Any]]:
    if t is None:
        return []
    paths = {img.objc_index: img.path for img in opt.images}
    return [
        {
            "name": o.name,
            "address": o.address,
            "objc_index": o.objc_index,
            "image": paths.get(o.objc_index) if o.objc_index is not None else None,
            "duplicate": o.duplicate,
        }
        for o in sorted(t.objects, key=lambda o: (o.name, o.address))
    ]


def _summary(cache: DyldCache, opt: ObjCOptimization) -> dict[str, Any]:
    base_value = None
    if opt.relative_method_selector_base is not None:
        raw = CacheMemory(cache).cstring(opt.relative_method_selector_base, "relative method selector base")
        base_value = decode_name(raw)
    return {
        "source": opt.source,
        "layout": opt.layout,
        "address": opt.address,
        "version": opt.version,
        "flags": opt.flags,
        "flag_names": _flag_names(opt.flags, OBJC_OPT_FLAG_NAMES),
        "objc_opt": None if opt.objc_opt is None else _record(opt.objc_opt, opt.objc_opt_address),
        "header_info_ro": opt.header_info_ro,
        "header_info_rw": opt.header_info_rw,
        "selector_count": opt.selectors.occupied if opt.selectors else 0,
        "class_count": len(opt.classes.objects) if opt.classes else 0,
        "protocol_count": len(opt.protocols.objects) if opt.protocols else 0,
        "relative_method_selector_base": opt.relative_method_selector_base,
        "relative_method_selector_base_value": base_value,
        "empty": opt.is_empty,
        "tables": {
            "selectors": _table(opt.selectors),
            "classes": _table(opt.classes.strings if opt.classes else None),
            "protocols": _table(opt.protocols.strings if opt.protocols else None),
        },
        "notes": list(opt.notes),
    }


def _methods(ml: MethodList | None) -> dict[str, Any] | None:
    if ml is None:
        return None
    return {
        "address": ml.address,
        "kind": ml.kind,
        "direct_selectors": ml.direct_selectors,
        "flags": ml.flags,
        "objc_index": ml.objc_index,
        "methods": [
            {"name": m.name, "selector": m.selector, "types": m.types, "imp": m.imp} for m in ml.methods
        ],
    }


def _classes(meta: list[ImageMetadata], opt: ObjCOptimization | None) -> list[dict[str, Any]]:
    in_table: set[int] | None = None
    # an empty table (our builder's) says nothing about any class
    if opt is not None and opt.classes is not None and opt.classes.objects:
        in_table = {o.address for o in opt.classes.objects}
    out = []
    for im in meta:
        for c in im.classes:
            imp = c.imp_cache
            out.append(
                {
                    "image": im.path,
                    "name": c.name,
                    "address": c.address,
                    "metaclass": c.is_meta,
                    "isa": c.isa,
                    "superclass": c.superclass,
                    "superclass_name": c.superclass_name,
                    "ro": c.ro_address,
                    "ro_flags": c.ro_flags,
                    "instance_start": c.instance_start,
                    "instance_size": c.instance_size,
                    "swift_flags": c.swift_flags,
                    "in_class_table": None if in_table is None or c.is_meta else c.address in in_table,
                    "method_lists": [_methods(ml) for ml in c.method_lists],
                    "protocols": c.protocols,
                    "imp_cache": None
                    if imp is None
                    else {
                        "address": imp.address,
                        "version": imp.version,
                        "fallback_class": imp.fallback_class,
                        "shift": imp.shift,
                        "mask": imp.mask,
                        "occupied": imp.occupied,
                        "has_inlines": imp.has_inlines,
                        "entries": [
                            {"selector": e.selector, "selector_address": e.selector_address, "imp": e.imp}
                            for e in imp.entries
                        ],
                    },
                }
            )
    return out


def _categories(meta: list[ImageMetadata]) -> list[dict[str, Any]]:
    return [
        {
            "image": im.path,
            "name": c.name,
            "address": c.address,
            "class": c.class_address,
            "class_name": c.class_name,
            "instance_methods": _methods(c.instance_methods),
            "class_methods": _methods(c.class_methods),
            "protocols": c.protocols,
        }
        for im in meta
        for c in im.categories
    ]


def _protocol_definitions(meta: list[ImageMetadata]) -> list[dict[str, Any]]:
    return [
        {
            "image": im.path,
            "name": p.name,
            "address": p.address,
            "flags": p.flags,
            "protocols": p.protocols,
            "instance_methods": _methods(p.instance_methods),
            "class_methods": _methods(p.class_methods),
            "optional_instance_methods": _methods(p.optional_instance_methods),
            "optional_class_methods": _methods(p.optional_class_methods),
        }
        for im in meta
        for p in im.protocols
    ]


def objc_report(
    path: str,
    *,
    selectors: bool = False,
    classes: bool = False,
    protocols: bool = False,
    image: str | None = None,
) -> dict[str, Any]:
    """Everything ``dyldcache objc`` prints, as plain data (addresses as ints)."""
    with DyldCache.open(path) as cache:
        memory = CacheMemory(cache)
        opt = read_objc_optimization(cache, memory)
        index = cache.find_image(image) if image is not None else None
        out: dict[str, Any] = {
            "cache": path,
            "optimization": None if opt is None else _summary(cache, opt),
            "no_optimization_reason": _no_optimization_reason(cache) if opt is None else None,
            "images": []
            if opt is None
            else [
                {
                    "objc_index": img.objc_index,
                    "path": img.path,
                    "mach_header": img.mach_header,
                    "image_info_address": img.image_info_address,
                    "image_info_version": img.image_info_version,
                    "image_info_flags": img.image_info_flags,
                    "image_info_flag_names": _flag_names(img.image_info_flags, IMAGE_INFO_FLAG_NAMES),
                    "optimized_by_dyld": img.optimized_by_dyld,
                    "loaded": img.loaded,
                    "all_classes_realized": img.all_classes_realized,
                    "metadata_address": img.metadata_address,
                }
                for img in opt.images
                if index is None or img.image_index == index
            ],
        }
        meta: list[ImageMetadata] = []
        if classes or protocols or (selectors and index is not None):
            meta = read_metadata(cache, opt, [index] if index is not None else None, memory)
        if selectors:
            if index is not None:
                # one image: the selectors its __objc_selrefs reference
                out["selectors"] = [{"name": s, "address": a} for s, a in meta[0].selector_references]
            elif opt is not None and opt.selectors is not None:
                t = opt.selectors
                out["selectors"] = sorted(
                    (
                        {"name": decode_name(s), "address": int(a), "slot": int(slot)}
                        for s, a, slot in zip(t.strings, t.string_addresses, t.slots, strict=True)
                    ),
                    key=lambda d: (d["address"], d["name"]),
                )
            else:
                out["selectors"] = []
        if classes:
            out["classes"] = _classes(meta, opt)
            out["categories"] = _categories(meta)
            out["class_table"] = [] if opt is None else _object_table(opt.classes, opt)
        if protocols:
            out["protocols"] = [] if opt is None else _object_table(opt.protocols, opt)
            out["protocol_definitions"] = _protocol_definitions(meta)
        if index is not None:
            out["image"] = cache.images[index].path
            if "class_table" in out:
                out["class_table"] = [o for o in out["class_table"] if o["image"] == out["image"]]
            if "protocols" in out:
                out["protocols"] = [o for o in out["protocols"] if o["image"] == out["image"]]
        return out


# ---------------------------------------------------------------------------------------------
# text


def _w(text: str) -> None:
    sys.stdout.write(text + "\n")


def _print_summary(d: dict[str, Any]) -> None:
    o = d["optimization"]
    if o is None:
        _w(f"no ObjC optimization: {d['no_optimization_reason']}")
        return
    where = "dyld_cache_header.objcOptsOffset" if o["source"] == "objcOptsOffset" else "libobjc __objc_opt_ro"
    _w(f"tables:                             {o['layout']} layout, from {where} ({o['address']:#x})")
    _w(f"version:                            {o['version']}")
    names = f" ({', '.join(o['flag_names'])})" if o["flag_names"] else ""
    _w(f"flags:                              {o['flags']:#010x}{names}")
    for table, count, label in (
        ("selectors", "selector_count", "num selectors:"),
        ("classes", "class_count", "num classes:"),
        ("protocols", "protocol_count", "num protocols:"),
    ):
        if o["tables"][table] is not None:
            _w(f"{label:<36}{o[count]}")
    if o["relative_method_selector_base"] is not None:
        _w(f"method list selector base address:  {o['relative_method_selector_base']:#x}")
        _w(f'method list selector base value:    "{o["relative_method_selector_base_value"]}"')
    if o["empty"]:
        _w("the tables are empty: no selector, class or protocol is optimized")
    _w(f"num objc dylibs:                    {len(d['images'])}")
    for img in d["images"]:
        state = "loaded" if img["loaded"] else "not loaded" if img["loaded"] is not None else "no RW entry"
        flags = ", ".join(img["image_info_flag_names"]) or "-"
        where = img["path"] or f"(no image at {img['mach_header']:#x})"
        info = f"{{ {img['image_info_version']:#x}, {img['image_info_flags']:#010x} }}"
        _w(f"dylib[{img['objc_index']}]: {info} {where}  [{flags}; {state}]")
    for note in o["notes"]:
        _w(f"note: {note}")


def _print_methods(owner: str, ml: dict[str, Any] | None, prefix: str) -> None:
    if ml is None:
        return
    kind = ml["kind"] + (", direct selectors" if ml["direct_selectors"] else "")
    _w(f"      {prefix} methods at {ml['address']:#x} ({kind}):")
    sign = "+" if prefix.startswith("class") or prefix.endswith("class") else "-"
    for m in ml["methods"]:
        imp = f"{m['imp']:#x}" if m["imp"] else "no IMP"
        _w(f"        {sign}[{owner} {m['name']}]  {imp}  {m['types']}")


def _print_classes(d: dict[str, Any]) -> None:
    image = None
    for c in d["classes"]:
        if c["image"] != image:
            image = c["image"]
            _w(image)
        what = "metaclass" if c["metaclass"] else "class"
        sup = f" : {c['superclass_name']}" if c["superclass_name"] else ""
        sup = sup if c["superclass"] else " (root)"
        table = {True: "", False: "  [not in the class table]", None: ""}[c["in_class_table"]]
        _w(f"  {what} {c['address']:#x} {c['name']}{sup}{table}")
        if c["protocols"]:
            _w(f"      protocols: {', '.join(c['protocols'])}")
        for ml in c["method_lists"]:
            _print_methods(c["name"], ml, "class" if c["metaclass"] else "instance")
        if c["imp_cache"]:
            ic = c["imp_cache"]
            _w(f"      IMP cache at {ic['address']:#x}: {len(ic['entries'])} of {ic['mask'] + 1} buckets")
            for e in ic["entries"]:
                _w(f"        {e['imp']:#x} {e['selector']}")
    for cat in d["categories"]:
        _w(f"{cat['image']}: category {cat['address']:#x} {cat['class_name'] or '?'}({cat['name']})")
        _print_methods(f"{cat['class_name']}({cat['name']})", cat["instance_methods"], "instance")
        _print_methods(f"{cat['class_name']}({cat['name']})", cat["class_methods"], "class")


def _print_text(d: dict[str, Any]) -> None:
    _print_summary(d)
    if "selectors" in d:
        _w(f"selectors ({len(d['selectors'])}):")
        for s in d["selectors"]:
            _w(f"  {s['address']:#x} {s['name']}")
    if "classes" in d:
        _w(f"classes ({sum(not c['metaclass'] for c in d['classes'])}):")
        _print_classes(d)
    if "protocols" in d:
        _w(f"protocol table ({len(d['protocols'])}):")
        for p in d["protocols"]:
            dup = " [duplicate name]" if p["duplicate"] else ""
            _w(f"  {p['address']:#x} {p['name']} ({p['image'] or 'no image'}){dup}")
        _w(f"protocol definitions ({len(d['protocol_definitions'])}):")
        for p in d["protocol_definitions"]:
            _w(f"  {p['image']}: protocol {p['address']:#x} {p['name']}")
            for key, label in (
                ("instance_methods", "instance"),
                ("class_methods", "class"),
                ("optional_instance_methods", "optional instance"),
                ("optional_class_methods", "optional class"),
            ):
                _print_methods(p["name"], p[key], label)


def _run(args: argparse.Namespace) -> int:
    d = objc_report(
        args.cache, selectors=args.selectors, classes=args.classes, protocols=args.protocols, image=args.image
    )
    if args.json:
        json.dump(json_safe(d), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_text(d)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "objc", help="show a cache's ObjC optimization: selectors, classes, protocols, per-image flags"
    )
    p.add_argument("cache", help="the main cache file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--selectors", action="store_true", help="list the selector table")
    p.add_argument("--classes", action="store_true", help="list every image's classes and categories")
    p.add_argument("--protocols", action="store_true", help="list the protocol table and definitions")
    p.add_argument(
        "--image", metavar="NAME", help="only this image (install name, alias or file name); with "
        "--selectors, the selectors it references",
    )  # fmt: skip
    p.set_defaults(func=_run)
