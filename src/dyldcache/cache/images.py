"""One image of a cache: ``dyldcache image``, ``exports`` and ``dependents``.

An image is named by its install name, by an alias of the cache's dylibs trie (a symlink the
builder saw), or by a file name only one image has (:meth:`DyldCache.find_image`). ``image``
gives the image's Mach-O view as ``dyldcache macho`` does for a file; ``exports`` lists export
tries with unslid cache addresses (every image's, as ``dyld_shared_cache_util -exports``, or one
image's); ``dependents`` lists the dylibs an image loads, as ``dyld_shared_cache_util
-dependents``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..macho import constants as C
from ..macho.describe import _print_text as print_macho_text
from ..macho.describe import describe_image
from ..macho.exports_trie import Export
from ..macho.file import format_version
from ..report import add_json_option, print_json
from .reader import DyldCache

_KIND_NAMES = {
    C.EXPORT_SYMBOL_FLAGS_KIND_REGULAR: "regular",
    C.EXPORT_SYMBOL_FLAGS_KIND_THREAD_LOCAL: "thread-local",
    C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE: "absolute",
}


def describe_cache_image(path: str, name: str) -> dict[str, Any]:
    """``dyldcache macho``'s description of one cache image, with its place in the cache."""
    with DyldCache.open(path) as cache:
        index = cache.find_image(name)
        d = describe_image(cache.image_macho(index))
        paths = cache.image_paths()[index]
        d.update({"index": index, "address": cache.images[index].address, "aliases": paths[1:]})
        return d


def export_record(install_name: str, base: int, e: Export, dylibs: list[str]) -> dict[str, Any]:
    """One export as plain data, with its unslid cache address (None for a re-export)."""
    rec: dict[str, Any] = {
        "image": install_name,
        "name": e.name,
        "flags": e.flags,
        "kind": _KIND_NAMES.get(e.kind, str(e.kind)),
        "weak": e.is_weak_def,
        "address": None if e.is_reexport else e.address if e.is_absolute else base + e.address,
    }
    if e.is_reexport:
        rec["reexport"] = {
            "ordinal": e.ordinal,
            "dylib": dylibs[e.ordinal - 1] if 1 <= e.ordinal <= len(dylibs) else None,
            "name": e.import_name or e.name,
        }
    if e.is_resolver:
        rec["resolver"] = base + e.resolver
    return rec


def cache_exports(path: str, name: str | None = None) -> list[dict[str, Any]]:
    """Every export of every image (or of the image ``name``), in image then trie order."""
    with DyldCache.open(path) as cache:
        indexes = [cache.find_image(name)] if name is not None else range(len(cache.images))
        out = []
        for i in indexes:
            img = cache.images[i]
            image = cache.image_macho(i)
            dylibs = [d.path for d in image.dylibs]
            out += [export_record(img.path, img.address, e, dylibs) for e in image.exports]
        return out


def cache_dependents(path: str, name: str) -> dict[str, Any]:
    """The image's own LC_ID_DYLIB and its LC_*_DYLIB dependents, in load-command order."""
    with DyldCache.open(path) as cache:
        index = cache.find_image(name)
        image = cache.image_macho(index)

        def versions(current: int, compatibility: int) -> dict[str, str]:
            return {
                "current_version": format_version(current),
                "compatibility_version": format_version(compatibility),
            }

        own = image.id_dylib
        return {
            "image": cache.images[index].path,
            "install_name": own.path if own else None,
            **(versions(own.current_version, own.compatibility_version) if own else {}),
            "dependents": [
                {"path": d.path, "kind": d.kind, **versions(d.current_version, d.compatibility_version)}
                for d in image.dylibs
            ],
        }


def _run_image(args: argparse.Namespace) -> int:
    d = describe_cache_image(args.cache, args.path)
    if args.json:
        print_json(d)
        return 0
    aliases = f", aliases {', '.join(d['aliases'])}" if d["aliases"] else ""
    sys.stdout.write(f"image {d['index']} at {d['address']:#x}{aliases}\n")
    print_macho_text(d)
    return 0


def _export_text(e: dict[str, Any]) -> str:
    if "reexport" in e:
        r = e["reexport"]
        return f"[re-export] {e['name']} (from {r['dylib'] or 'ordinal ' + str(r['ordinal'])} {r['name']})"
    tags = [t for t, on in (("weak", e["weak"]), (e["kind"], e["kind"] != "regular")) if on]
    if "resolver" in e:
        tags.append(f"resolver {e['resolver']:#x}")
    return f"{e['address']:#x} {e['name']}" + (f" [{', '.join(tags)}]" if tags else "")


def _run_exports(args: argparse.Namespace) -> int:
    exports = cache_exports(args.cache, args.path)
    if args.json:
        print_json(exports)
        return 0
    for e in exports:
        # dyld_shared_cache_util -exports prefixes each line with the image when listing them all
        prefix = "" if args.path is not None else f"{e['image']}: "
        sys.stdout.write(prefix + _export_text(e) + "\n")
    return 0


def _run_dependents(args: argparse.Namespace) -> int:
    d = cache_dependents(args.cache, args.path)
    if args.json:
        print_json(d)
        return 0

    def line(path: str, kind: str | None, rec: dict[str, Any]) -> str:
        text = f"\t{path}"
        if args.versions and "current_version" in rec:
            text += (
                f" (compatibility version {rec['compatibility_version']}, "
                f"current version {rec['current_version']})"
            )
        return text + (f" [{kind}]" if kind and kind != "load" else "") + "\n"

    if d["install_name"] is not None:
        sys.stdout.write(line(d["install_name"], None, d))
    for dep in d["dependents"]:
        sys.stdout.write(line(dep["path"], dep["kind"], dep))
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    where = "install name, alias or file name of a cache image"
    p = subparsers.add_parser("image", help="describe one image of a cache, as 'macho' does a file")
    p.add_argument("cache", help="the main cache file")
    p.add_argument("path", help=where)
    add_json_option(p)
    p.set_defaults(func=_run_image)
    p = subparsers.add_parser("exports", help="list the exports of a cache's images, at cache addresses")
    p.add_argument("cache", help="the main cache file")
    p.add_argument("path", nargs="?", help=f"{where} (default: every image)")
    add_json_option(p)
    p.set_defaults(func=_run_exports)
    p = subparsers.add_parser("dependents", help="list the dylibs a cache image loads")
    p.add_argument("cache", help="the main cache file")
    p.add_argument("path", help=where)
    p.add_argument("--versions", action="store_true", help="show compatibility and current versions")
    add_json_option(p)
    p.set_defaults(func=_run_dependents)
