"""``dyldcache verify CACHE``: check a cache against the format's own consistency rules.

For every file (main, subcaches, ``.symbols``): the code signature (structure and every page
hash), that the UUID is the one derived from the code directory (``docs/cache-format.md`` §6),
and that the mappings are laid out as dyld's preflight requires (§12.1). For the whole
cache: the subcache UUIDs in the main header, every slide-info chain (inside its page and
region, every value pointing into the cache), and every image's segments inside a mapping.
Each problem is one line naming the file and what is wrong (exit status 1). A file that is
not a cache at all (unreadable, another kind of file, too short for a header) is bad input,
as for ``info`` and ``list``: one error line and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import CacheFormatError, DyldCacheError, UsageError
from ..report import add_json_option, print_json
from . import code_signature as cs
from .format import HEADER_SIZE, CacheHeader, uuid_string
from .reader import CacheFile, DyldCache

_R, _RW, _RX = 1, 3, 5
#: images parsed between two releases of the files' pages
_RELEASE_EVERY = 8


def _check_signature(f: CacheFile) -> list[str]:
    h = f.header
    name = os.path.basename(f.path)
    size = len(f.data)
    if h.code_signature_offset + h.code_signature_size != size:
        return [
            f"{name}: code signature {h.code_signature_offset:#x}+{h.code_signature_size:#x} does not end at "
            f"the end of the file ({size:#x})"
        ]
    raw = cs.verify_code_signature(f.data, h.code_signature_offset, h.code_signature_size)
    sig = f.data[h.code_signature_offset : h.code_signature_offset + h.code_signature_size]
    try:
        cd_raw = bytearray(cs.code_directory(sig))
    except ValueError:
        return [f"{name}: {p}" for p in raw]
    cd = cs.CodeDirectory.unpack_from(cd_raw)
    page = 1 << cd.page_size
    if raw:
        return [f"{name}: {p}{_what_is_at(f, p, page)}" for p in raw]
    # the UUID was derived from the code directory computed while the UUID field was zero
    first = bytearray(f.data[: min(page, h.code_signature_offset)])
    uuid_at = CacheHeader.offset_of("uuid")
    first[uuid_at : uuid_at + 16] = bytes(16)
    cd_raw[cd.hash_offset : cd.hash_offset + cd.hash_size] = hashlib.sha256(first).digest()[: cd.hash_size]
    expected = cs.uuid_from_code_directory(bytes(cd_raw))
    problems = []
    if expected != h.uuid:
        problems.append(
            f"{name}: UUID {uuid_string(h.uuid)} is not the one derived from its code directory "
            f"({uuid_string(expected)})"
        )
    return problems


def _what_is_at(f: CacheFile, problem: str, page: int) -> str:
    """' (in __TEXT)' or ' (in __LINKEDIT: slide info of __DATA)' for a problem naming a file offset."""
    m = re.search(r"file offset (0x[0-9a-fA-F]+)", problem)
    if m is None:
        return ""
    start = int(m.group(1), 16)
    for mp in f.mappings:
        if mp.file_offset <= start < mp.file_offset + mp.size:
            slid = [
                o.name
                for o in f.mappings
                if o.slide_info_size
                and start < o.slide_info_offset + o.slide_info_size
                and o.slide_info_offset < start + page
            ]
            return f" (in {mp.name}" + (f": slide info of {', '.join(slid)}" if slid else "") + ")"
    if start < 0x4000:
        return " (in the cache header)"
    return ""


def _check_mappings(f: CacheFile) -> list[str]:
    """dyld's preflight rules for one file's mappings."""
    name = os.path.basename(f.path)
    maps = f.mappings
    out = []
    if not maps:
        return [f"{name}: no mappings"]
    if maps[0].file_offset != 0:
        out.append(f"{name}: first mapping starts at file offset {maps[0].file_offset:#x}, not 0")
    for m in maps:
        if m.file_offset + m.size > len(f.data):
            out.append(f"{name}: mapping {m.name} ({m.file_offset:#x}+{m.size:#x}) extends past the file")
        if m.init_prot & ~m.max_prot:
            out.append(f"{name}: mapping {m.name} initProt {m.init_prot} exceeds maxProt {m.max_prot}")
    for a, b in itertools.pairwise(maps):
        if a.address + a.size > b.address:
            out.append(f"{name}: mappings {a.name} and {b.name} overlap in VM")
        if a.file_offset + a.size != b.file_offset:
            out.append(f"{name}: mapping {b.name} does not follow {a.name} in the file")
    if len(maps) > 1:
        if maps[-1].max_prot != _R:
            out.append(f"{name}: last mapping is not read-only LINKEDIT")
        for m in maps[1:-1]:
            if m.max_prot != _RW:
                out.append(f"{name}: middle mapping {m.name} is not read-write")
    if maps[0].max_prot not in (_RX, _R):
        out.append(f"{name}: first mapping is not r-x")
    for m in maps:
        if m.slide_info_size:
            le = maps[-1]
            if not (
                le.file_offset <= m.slide_info_offset
                and m.slide_info_offset + m.slide_info_size <= le.file_offset + le.size
            ):
                out.append(f"{name}: slide info of {m.name} is not inside this file's LINKEDIT mapping")
    return out


#: runs ``task(0) ... task(count - 1)`` (perhaps in parallel) and returns the results in order
TaskRunner = Callable[[Callable[[int], list[str]], int], list[list[str]]]


def _one_by_one(task: Callable[[int], list[str]], count: int) -> list[list[str]]:
    return [task(i) for i in range(count)]


def _check_slide_info(cache: DyldCache, run: TaskRunner = _one_by_one) -> list[str]:
    ranges = sorted((m.address, m.end) for f in cache.files for m in f.mappings)
    starts = np.array([r[0] for r in ranges], dtype=np.uint64)
    ends = np.array([r[1] for r in ranges], dtype=np.uint64)
    slid = [(f, i) for f in cache.files for i, m in enumerate(f.mappings) if m.slide_info_size]
    found = run(lambda k: _check_mapping_slide_info(slid[k][0], slid[k][1], starts, ends), len(slid))
    return [problem for problems in found for problem in problems]


def _check_mapping_slide_info(f: CacheFile, i: int, starts: np.ndarray, ends: np.ndarray) -> list[str]:
    """The problems of mapping ``i``'s slide info: a chain the format refuses, or pointers whose
    targets lie in no mapping of the cache (``starts``/``ends``, sorted)."""
    name = os.path.basename(f.path)
    m = f.mappings[i]
    try:
        windows = list(_bad_targets(f.slide_info_windows(i), starts, ends))
        version = f.slide_info_version(i) or 0
    except CacheFormatError as exc:
        return [f"{name}: slide info of {m.name}: {exc.message}"]
    bad = [w for w in windows if w[1]]
    if not bad:
        return []
    offset, count, target = bad[0][0], sum(w[1] for w in bad), bad[0][2]
    page = offset // _page_size(version)
    return [
        f"{name}: slide info v{version} of {m.name}, page {page}: pointer at "
        f"{m.address + offset:#x} holds {target:#x}, outside the cache "
        f"({count} such pointers)"
    ]


def _bad_targets(
    windows: Iterator[np.ndarray], starts: np.ndarray, ends: np.ndarray
) -> Iterator[tuple[int, int, int]]:
    """Per window of decoded pointers: (offset of the first pointer whose target is in no
    mapping, how many there are, its target); (0, 0, 0) for a window without any."""
    for ptrs in windows:
        targets = ptrs["target"]
        live = targets != 0
        idx = np.searchsorted(starts, targets, side="right") - 1
        inside = (idx >= 0) & (targets < ends[np.clip(idx, 0, len(ends) - 1)])
        bad = np.flatnonzero(live & ~inside)
        if len(bad):
            k = int(bad[0])
            yield int(ptrs["offset"][k]), len(bad), int(targets[k])
        else:
            yield 0, 0, 0


def _page_size(version: int) -> int:
    return 0x4000 if version == 5 else 0x1000


def _check_images(cache: DyldCache, run: TaskRunner = _one_by_one) -> list[str]:
    spans = [(m.address, m.end) for f in cache.files for m in f.mappings]
    found = run(lambda i: _check_image(cache, i, spans), len(cache.images))
    return [problem for problems in found for problem in problems]


def _check_image(cache: DyldCache, i: int, spans: list[tuple[int, int]]) -> list[str]:
    """The problems of the ``i``-th image: a Mach-O the reader refuses, or a segment outside
    every mapping (``spans``)."""
    img = cache.images[i]
    if i % _RELEASE_EVERY == 0:
        # each parse maps header and LINKEDIT pages: thousands of images would add up
        for f in cache.files:
            f.release_pages()
    try:
        macho = cache.image_macho(img.index)
    except DyldCacheError as exc:
        return [f"image {img.path}: {exc}"]
    out = []
    for seg in macho.segments:
        if seg.vmsize == 0:
            continue
        if not any(a <= seg.vmaddr and seg.vmaddr + seg.vmsize <= b for a, b in spans):
            out.append(
                f"image {img.path}: segment {seg.name} ({seg.vmaddr:#x}+{seg.vmsize:#x}) is not "
                "inside a mapping"
            )
    return out


def _check_is_a_cache(path: str) -> None:
    """CacheFormatError when ``path`` cannot be read as a cache at all (the same errors as
    ``info``): unreadable, not a regular file, not a cache's magic, too short for a header."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except OSError as exc:
        raise CacheFormatError(path, None, f"cannot read: {exc.strerror}") from None
    CacheHeader.read_any(head, path)


def verify_cache(path: str, *, signatures: bool = True, run: TaskRunner = _one_by_one) -> list[str]:
    """Every problem found in the cache at ``path`` (empty when it is consistent).

    A path that does not exist is a UsageError, and a file that is not a cache at all a
    CacheFormatError; a cache whose structure stops the reader (bad subcache UUID, mapping
    outside its file...) is reported as a problem. Without ``signatures`` the page hashes are
    not checked (the builder's own quick check). ``run`` runs the per-mapping slide-info
    and per-image checks (the builder passes its worker processes).
    """
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    _check_is_a_cache(path)
    try:
        cache = DyldCache.open(path)
    except CacheFormatError as exc:
        return [str(exc)]
    try:
        problems: list[str] = []
        files = [*cache.files, *([cache.symbols_file] if cache.symbols_file else [])]
        checks: list[Callable[[], list[str]]] = []
        for f in files:
            checks.append(functools.partial(_check_mappings, f))
            if signatures:
                checks.append(functools.partial(_check_signature, f))
        checks += [
            functools.partial(_check_slide_info, cache, run),
            functools.partial(_check_images, cache, run),
        ]
        for check in checks:
            # a structure that stops one check (an image path outside the file...) is its problem
            try:
                problems += check()
            except CacheFormatError as exc:
                problems.append(str(exc))
        return problems
    finally:
        cache.close()


def _run(args: argparse.Namespace) -> int:
    problems = verify_cache(args.cache)
    if args.json:
        doc: dict[str, Any] = {"cache": args.cache, "ok": not problems, "problems": problems}
        print_json(doc)
    else:
        for p in problems:
            print(p)
        if not problems:
            print(f"{args.cache}: ok")
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        print(f"dyldcache verify: {args.cache}: {count} (listed on standard output)", file=sys.stderr)
    return 1 if problems else 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "verify", help="check a cache's signatures, UUIDs, mappings, slide info, images"
    )
    p.add_argument("cache", help="the main cache file")
    add_json_option(p)
    p.set_defaults(func=_run)
