"""Derived dylibs: copies of a linked corpus dylib under a new install name, with new symbol
names and a new dependency graph, made by editing bytes in place (no linking).

Every edit keeps each length and offset, so the copy stays a valid, cache-eligible dylib with
the same segments, fixups and split seg info as its original:

- **install names**: the copy's own name (LC_ID_DYLIB) is a made-up word of the same length as
  the original's, and each LC_*_DYLIB names the copy of that dependency which the copy links
  against (same length again: copies of one dylib all have names of the same length);
- **symbols**: every symbol a generated dylib defines starts with ``_Z`` (the ``Zc0000_``
  tokens of the templates) or ``_Y`` (``liba`` copies). Copy number ``v`` replaces that one
  character, the second of the name, by ``VARIANT_CHARS[c][v]`` in the string table, in the
  export trie (the edge label that holds the second character of every key: the trie keeps its
  shape, because the same character is replaced in every key that had it) and, for imports, in
  the chained fixups' symbol pool and the string table: an import takes the character of the
  copy that defines it, found through the copy's dependencies and their re-exports;
- **LC_UUID**: a new UUID from a hash of the copy's install name.

Nothing else names a symbol or a dylib in these files (no code signature; the templates carry
their tokens in the string table only, checked by make_corpus.Renamer).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dyldcache.macho import constants as C
from dyldcache.macho.chained_fixups import parse_chained_fixups_blob
from dyldcache.macho.exports_trie import read_trie
from dyldcache.macho.file import parse_macho
from dyldcache.macho.leb128 import uleb_decode

#: the character a name's second byte becomes in copy number ``v`` (0: the linked original):
#: upper case for ``_Z`` names, lower case for ``_Y`` names, so the two never meet
VARIANT_CHARS = {ord("Z"): b"ZABCDEFGHIJKLMNOPQRSTUVWX", ord("Y"): b"Yabcdefghijklmnopqrstuvwx"}
#: the linked original and its copies: at most this many dylibs share one original
MAX_VARIANTS = len(VARIANT_CHARS[ord("Z")])
#: which byte of a symbol name tells the copies apart (after the leading "_")
NAME_INDEX = 1


class DeriveError(SystemExit):
    """A linked dylib cannot be copied this way (names the file and the problem)."""


@dataclass(slots=True)
class Template:
    """Where the copies of one linked dylib differ from it: file offsets, found once."""

    path: str
    install_name: str
    #: file offset of the LC_ID_DYLIB name string
    id_name: int
    #: its dependencies in load-command order (ordinal N is deps[N-1]): (install name,
    #: command, file offset of the name string)
    deps: list[tuple[str, int, int]]
    #: file offset of the 16 UUID bytes
    uuid: int
    #: original character -> file offsets of the names' second bytes that carry it (own names)
    own: dict[int, np.ndarray]
    #: (ordinal, install name of the defining dylib, original character) -> file offsets
    imports: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)


def _trie_char_offsets(trie: bytes, index: int) -> list[int]:
    """Offsets in ``trie`` of byte ``index`` of every key: inside the edge labels that span it."""
    out: list[int] = []
    stack = [(0, 0)]
    while stack:
        node, depth = stack.pop()
        term_size, pos = uleb_decode(trie, node)
        pos += term_size
        count = trie[pos]
        pos += 1
        for _ in range(count):
            end = trie.index(b"\0", pos)
            label_end = depth + end - pos
            if depth <= index < label_end:
                out.append(pos + index - depth)
            child, pos = uleb_decode(trie, end + 1)
            if label_end <= index:
                stack.append((child, label_end))
    return out


def read_template(data: bytes, path: str, owner_of: Callable[[bytes], str | None]) -> Template:
    """The offsets to edit in the linked dylib ``data``. ``owner_of(name)`` is the install name
    of the generated dylib that defines the symbol ``name`` (None for the examples' symbols)."""
    image = parse_macho(data, path)
    me = image.install_name
    if me is None:
        raise DeriveError(f"{path}: no LC_ID_DYLIB")
    id_name = uuid = -1
    deps: list[tuple[str, int, int]] = []
    for lc in image.load_commands:
        if lc.cmd == C.LC_ID_DYLIB or lc.cmd in C.DYLIB_LOAD_COMMANDS:
            name_off = lc.offset + struct.unpack_from("<I", data, lc.offset + 8)[0]
            name = data[name_off : data.index(b"\0", name_off)].decode()
            if lc.cmd == C.LC_ID_DYLIB:
                id_name = name_off
            else:
                deps.append((name, lc.cmd, name_off))
        elif lc.cmd == C.LC_UUID:
            uuid = lc.offset + 8
    if uuid < 0:
        raise DeriveError(f"{path}: no LC_UUID")
    places: dict[int, tuple[str, int, str, int]] = {}  # offset -> (who, ordinal, name, char)

    def add(offset: int, ordinal: int, name: bytes, what: str) -> None:
        char = name[NAME_INDEX] if len(name) > NAME_INDEX else -1
        owner = owner_of(name)
        if owner is None or char not in VARIANT_CHARS:
            if ordinal == 0:
                raise DeriveError(f"{path}: {what} {name.decode()!r} is not a generated symbol")
            return  # an import from an example dylib: the same in every copy
        if owner == me:
            ordinal = 0  # its own: a definition, or a weak-lookup (-3) import of its weak definition
        elif ordinal <= 0:
            raise DeriveError(f"{path}: {what} {name.decode()!r} of {owner} has library ordinal {ordinal}")
        place = (owner, ordinal, name.decode(), char)
        if places.setdefault(offset + NAME_INDEX, place) != place:
            raise DeriveError(f"{path}: offset {offset:#x} holds two names ({what} {name.decode()!r})")

    st = image.symtab_command
    table = image.symbol_table
    if st is not None and len(table.nlist):
        # only names whose second byte can be a token's first are looked at one by one
        strings = np.frombuffer(table.strings, dtype=np.uint8)
        strx = table.nlist["n_strx"].astype(np.int64)
        second = np.zeros(len(strx), dtype=np.uint8)
        inside = (strx > 0) & (strx + NAME_INDEX < len(strings))
        second[inside] = strings[strx[inside] + NAME_INDEX]
        for k in np.flatnonzero(inside & np.isin(second, list(VARIANT_CHARS))).tolist():
            entry = table.nlist[k]
            at = int(strx[k])
            sym = table.strings[at : table.strings.index(b"\0", at)]
            if int(entry["n_type"]) & C.N_TYPE == C.N_UNDF:
                add(st.stroff + at, (int(entry["n_desc"]) >> 8) & 0xFF, sym, "import")
            elif owner_of(sym) is not None:
                add(st.stroff + at, 0, sym, "symbol")
    fixups = image.linkedit_commands.get(C.LC_DYLD_CHAINED_FIXUPS)
    if fixups is not None:
        blob = data[fixups.dataoff : fixups.dataoff + fixups.datasize]
        info = parse_chained_fixups_blob(blob, path, fixups.dataoff)
        pool = fixups.dataoff + info.header.symbols_offset
        for imp in info.imports:
            add(pool + imp.name_offset, imp.lib_ordinal, imp.name.encode(), "import")
    trie = image.linkedit_commands.get(C.LC_DYLD_EXPORTS_TRIE)
    if trie is not None:
        raw = data[trie.dataoff : trie.dataoff + trie.datasize]
        for key, _payload in read_trie(raw, path, trie.dataoff):
            if len(key) <= NAME_INDEX or key[NAME_INDEX] not in VARIANT_CHARS or owner_of(key) != me:
                raise DeriveError(f"{path}: export {key.decode()!r} is not one of its generated symbols")
        for off in _trie_char_offsets(raw, NAME_INDEX):
            # one edge byte stands for every key below it: all of them are this dylib's own
            if raw[off] not in VARIANT_CHARS:
                raise DeriveError(f"{path}: export trie byte {trie.dataoff + off:#x} is not a token")
            places[trie.dataoff + off] = (me, 0, "", raw[off])
    own: dict[int, list[int]] = {}
    imports: dict[tuple[int, str, int], list[int]] = {}
    for offset, (owner, ordinal, _name, char) in places.items():
        if ordinal == 0:
            own.setdefault(char, []).append(offset)
        else:
            imports.setdefault((ordinal, owner, char), []).append(offset)
    for (ordinal, owner, _c), _offs in imports.items():
        if not 1 <= ordinal <= len(deps):
            raise DeriveError(f"{path}: an import of {owner}'s symbols has library ordinal {ordinal}")
    return Template(
        path,
        me,
        id_name,
        deps,
        uuid,
        {c: np.array(sorted(v), dtype=np.int64) for c, v in own.items()},
        {k: np.array(sorted(v), dtype=np.int64) for k, v in imports.items()},
    )


def copy_uuid(install_name: str) -> bytes:
    """A UUID (RFC 4122 version 5 layout) for the copy named ``install_name``."""
    raw = bytearray(hashlib.sha256(b"dyldcache benchmark copy\0" + install_name.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


@dataclass(slots=True)
class Node:
    """One dylib of the corpus: a linked original (variant 0) or a copy of it."""

    base: str
    variant: int
    install_name: str
    #: dependencies in load-command order, as nodes (the same count and commands as the base's)
    deps: list[Node] = field(default_factory=list)
    #: LC_* command of each dependency
    commands: list[int] = field(default_factory=list)

    def definer(self, base: str) -> Node | None:
        """The node that defines the symbols of ``base`` for a client of this node: this one,
        or one it re-exports (depth first, as dyld searches)."""
        if self.base == base:
            return self
        for dep, cmd in zip(self.deps, self.commands, strict=True):
            if cmd == C.LC_REEXPORT_DYLIB:
                found = dep.definer(base)
                if found is not None:
                    return found
        return None


def write_copy(data: bytes, t: Template, node: Node, out_path: str) -> None:
    """Write the copy ``node`` of the linked dylib ``data`` (whose template is ``t``)."""
    buf = np.frombuffer(bytearray(data), dtype=np.uint8).copy()

    def put_name(offset: int, old: str, new: str) -> None:
        if len(new) != len(old):
            raise DeriveError(f"{t.path}: {new!r} is not as long as {old!r}")
        buf[offset : offset + len(new)] = np.frombuffer(new.encode(), dtype=np.uint8)

    put_name(t.id_name, t.install_name, node.install_name)
    for (old, _cmd, offset), dep in zip(t.deps, node.deps, strict=True):
        put_name(offset, old, dep.install_name)
    buf[t.uuid : t.uuid + 16] = np.frombuffer(copy_uuid(node.install_name), dtype=np.uint8)
    for char, offsets in t.own.items():
        buf[offsets] = VARIANT_CHARS[char][node.variant]
    for (ordinal, owner, char), offsets in t.imports.items():
        found = node.deps[ordinal - 1].definer(owner)
        if found is None:
            raise DeriveError(
                f"{node.install_name}: dependency {ordinal} ({node.deps[ordinal - 1].install_name}) "
                f"does not lead to a copy of {owner}"
            )
        buf[offsets] = VARIANT_CHARS[char][found.variant]
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(buf.tobytes())


def plan_nodes(
    templates: Sequence[Template],
    examples: Sequence[str],
    copies: Sequence[tuple[int, str]],
    choose: Callable[[Sequence[Node]], Node],
) -> list[Node]:
    """The copies, in the order of ``copies``: (template index, install name); the k-th copy of
    a template is its variant k. A copy depends on what its original depends on, except that
    for each generated dependency it takes ``choose(candidates)``: that dylib or one of its
    copies. The originals keep their dependencies."""
    by_name = {name: Node(name, 0, name) for name in examples}
    originals = [Node(t.install_name, 0, t.install_name) for t in templates]
    family: dict[str, list[Node]] = {}
    for node in originals:
        by_name[node.base] = node
        family[node.base] = [node]
    made: list[tuple[Template, Node]] = []
    for index, name in copies:
        t = templates[index]
        node = Node(t.install_name, len(family[t.install_name]), name)
        if node.variant >= MAX_VARIANTS:
            raise DeriveError(f"{t.install_name}: more than {MAX_VARIANTS - 1} copies")
        family[t.install_name].append(node)
        made.append((t, node))

    def dep(t: Template, name: str) -> Node:
        if name not in by_name:
            raise DeriveError(f"{t.path}: depends on {name}, which is not in the corpus")
        return by_name[name]

    for t, node in zip(templates, originals, strict=True):
        node.deps = [dep(t, name) for name, _cmd, _off in t.deps]
        node.commands = [cmd for _name, cmd, _off in t.deps]
    for t, node in made:
        node.deps = [choose(family[n]) if n in family else dep(t, n) for n, _cmd, _off in t.deps]
        node.commands = [cmd for _name, cmd, _off in t.deps]
    return [node for _t, node in made]
