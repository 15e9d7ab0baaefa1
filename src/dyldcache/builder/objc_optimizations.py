"""Apple's ``objcOptimizations`` file: which classes get ObjC IMP caches (``--objc-optimizations``).

dyld-1162 reads it as JSON (mrm_shared_cache_builder.cpp parseObjcOptimizationsFile; the keys are
read by IMPCaches.cpp's IMPCachesBuilder constructor):

- ``version`` (optional, default 1). Version 2: ``neededClasses`` is one array of
  ``{"name": ..., "metaclass": 0|1}`` objects. Otherwise ``neededClasses`` and
  ``neededMetaclasses`` are arrays of class names;
- ``selectorsToInline`` (optional): dyld-1162 asserts it is empty (its emitter is not written);
  a non-empty list is refused here with the same reason;
- ``flatteningRoots`` (optional): ``{"name", "metaclass"}`` objects. Without the key, dyld-1162
  flattens ``OS_object`` (class and metaclass), as files older than the key implied.

An empty file (``{}``) builds no IMP cache, as dyld-1162's estimateIMPCaches returns early.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import InputError

#: what dyld-1162 flattens when the file has no flatteningRoots
DEFAULT_FLATTENING_ROOT = b"OS_object"


@dataclass(frozen=True, slots=True)
class ObjCOptimizations:
    """Which classes get IMP caches, and whose hierarchies are flattened (names as bytes)."""

    needed_classes: frozenset[bytes] = field(default_factory=frozenset)
    needed_metaclasses: frozenset[bytes] = field(default_factory=frozenset)
    flattening_roots: frozenset[bytes] = field(default_factory=frozenset)
    flattening_meta_roots: frozenset[bytes] = field(default_factory=frozenset)
    #: every class and metaclass of the cache is needed (no file given: see objc_imp_caches.py)
    everything: bool = False

    @property
    def empty(self) -> bool:
        return not (self.everything or self.needed_classes or self.needed_metaclasses)

    def needs(self, name: bytes, meta: bool) -> bool:
        if self.everything:
            return True
        return name in (self.needed_metaclasses if meta else self.needed_classes)

    def flattens(self, name: bytes, meta: bool) -> bool:
        return name in (self.flattening_meta_roots if meta else self.flattening_roots)


ALL_CLASSES = ObjCOptimizations(everything=True)


def _named(path: str, node: object, key: str) -> tuple[bytes, bool]:
    """A ``{"name": ..., "metaclass": ...}`` object."""
    if not isinstance(node, dict) or not isinstance(node.get("name"), str) or "metaclass" not in node:
        raise InputError(f"{path}: an entry of {key} is not an object with 'name' and 'metaclass'")
    meta = node["metaclass"]
    if isinstance(meta, str) and meta.lstrip("-").isdigit():
        meta = int(meta)
    if not isinstance(meta, int):
        raise InputError(f"{path}: {key} entry {node['name']!r}: 'metaclass' is not an integer")
    return node["name"].encode(), meta != 0


def _split(path: str, nodes: object, key: str) -> tuple[set[bytes], set[bytes]]:
    """The class names and the metaclass names of an array of name/metaclass objects."""
    if not isinstance(nodes, list):
        raise InputError(f"{path}: {key} is not an array")
    classes: set[bytes] = set()
    metas: set[bytes] = set()
    for node in nodes:
        name, meta = _named(path, node, key)
        (metas if meta else classes).add(name)
    return classes, metas


def _names(path: str, doc: dict[str, object], key: str) -> list[bytes]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{path}: {key} is not an array of class names")
    return [v.encode() for v in value]


def parse_objc_optimizations(path: str) -> ObjCOptimizations:
    """The file at ``path``; InputError names the file and the problem when it is not readable
    or not in the schema above."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the objcOptimizations file: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: the objcOptimizations file is not a JSON object")
    version = doc.get("version", 1)
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if version == 2:
        classes, metas = _split(path, doc.get("neededClasses"), "neededClasses")
    else:
        classes, metas = set(_names(path, doc, "neededClasses")), set(_names(path, doc, "neededMetaclasses"))
    inline = doc.get("selectorsToInline", [])
    if inline:
        raise InputError(f"{path}: selectorsToInline is not empty (dyld-1162 requires it empty)")
    if "flatteningRoots" in doc:
        roots, meta_roots = _split(path, doc["flatteningRoots"], "flatteningRoots")
    else:
        roots, meta_roots = {DEFAULT_FLATTENING_ROOT}, {DEFAULT_FLATTENING_ROOT}
    return ObjCOptimizations(frozenset(classes), frozenset(metas), frozenset(roots), frozenset(meta_roots))
