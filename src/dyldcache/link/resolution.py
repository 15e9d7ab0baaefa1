"""Phase 2 of a link: symbol resolution. Every object symbol is bound to one
:class:`~dyldcache.link.model.LinkSymbol`: a definition in an object (weak definitions give way
to strong ones), a common symbol placed in ``__DATA,__common``, or an import from the first
linked dylib that exports it. ``-alias`` names are added last."""

from __future__ import annotations

from ..errors import LinkError
from ..macho import constants as C
from .inputs import Inputs
from .model import LinkSymbol, OutSection, SectionKind, SymKind
from .objects import InputSection, ObjectFile, ObjSymbol, Target


class Symbols:
    """The resolved symbols of a link, by name and per object symbol."""

    def __init__(self, inputs: Inputs) -> None:
        self.inputs = inputs
        self.arch_name = inputs.arch.name
        self.globals: dict[str, LinkSymbol] = {}
        #: per object: object symbol index -> resolved symbol
        self.symbol_maps: list[list[LinkSymbol | None]] = []
        #: -alias names of imports: re-exported under the alias
        self.aliases_reexported: list[tuple[str, LinkSymbol]] = []
        self.common_section: OutSection | None = None

    @property
    def objects(self) -> list[ObjectFile]:
        return self.inputs.objects

    def resolve(self, aliases: list[tuple[str, str]]) -> None:
        commons: dict[str, tuple[int, int]] = {}
        undefined: dict[str, list[str]] = {}
        weak_refs: dict[str, bool] = {}
        for obj in self.objects:
            table: list[LinkSymbol | None] = []
            for sym in obj.symbols:
                if sym.is_stab:
                    table.append(None)
                    continue
                if sym.is_defined:
                    ls = self._defined_symbol(obj, sym)
                    if sym.is_external:
                        ls = self._add_global(ls, obj)
                    table.append(ls)
                elif sym.is_common:
                    size, align = sym.n_value, 1 << ((sym.n_desc >> 8) & 0xF)
                    old = commons.get(sym.name)
                    commons[sym.name] = (max(size, old[0] if old else 0), max(align, old[1] if old else 1))
                    table.append(None)
                else:
                    undefined.setdefault(sym.name, []).append(obj.path)
                    weak_refs[sym.name] = weak_refs.get(sym.name, True) and sym.is_weak_ref
                    table.append(None)
            self.symbol_maps.append(table)
        self._place_commons(commons)
        missing = []
        for name, refs in undefined.items():
            if name in self.globals:
                continue
            found = self.import_symbol(name, weak_refs[name])
            if found is None:
                missing.append(f"  {name}, referenced from {', '.join(sorted(set(refs)))}")
        if missing:
            raise LinkError(
                "undefined symbols for architecture " + self.arch_name + ":\n" + "\n".join(missing)
            )
        for k, obj in enumerate(self.objects):
            table = self.symbol_maps[k]
            for i, sym in enumerate(obj.symbols):
                if table[i] is None and not sym.is_stab:
                    table[i] = self.globals[sym.name]
        for name, alias in aliases:
            self._add_alias(name, alias)

    def _defined_symbol(self, obj: ObjectFile, sym: ObjSymbol) -> LinkSymbol:
        if sym.is_absolute:
            return LinkSymbol(
                sym.name,
                SymKind.ABSOLUTE,
                value=sym.n_value,
                external=sym.is_external and not sym.is_private_extern,
                private_extern=sym.is_private_extern,
            )
        isect = obj.section(sym.n_sect)
        return LinkSymbol(
            sym.name,
            SymKind.DEFINED,
            isect=isect,
            offset=sym.n_value - isect.addr,
            external=sym.is_external and not sym.is_private_extern,
            private_extern=sym.is_private_extern,
            weak_def=sym.is_weak_def,
        )

    def _add_global(self, ls: LinkSymbol, obj: ObjectFile) -> LinkSymbol:
        old = self.globals.get(ls.name)
        if old is None:
            self.globals[ls.name] = ls
            return ls
        if old.weak_def and not ls.weak_def:
            self.globals[ls.name] = ls
            return ls
        if ls.weak_def:
            return old
        raise LinkError(f"duplicate symbol {ls.name} (in {obj.path} and an earlier object)")

    def _place_commons(self, commons: dict[str, tuple[int, int]]) -> None:
        todo = [(n, s, a) for n, (s, a) in sorted(commons.items()) if n not in self.globals]
        if not todo:
            return
        sect = OutSection("__DATA", "__common", C.S_ZEROFILL, 1, SectionKind.COMMON)
        off = 0
        for name, size, align in todo:
            off = -(-off // align) * align
            self.globals[name] = LinkSymbol(name, SymKind.COMMON, out=sect, offset=off, external=True)
            sect.align = max(sect.align, align)
            off += size
        sect.size = off
        self.common_section = sect

    def import_symbol(self, name: str, weak_ref: bool) -> LinkSymbol | None:
        """Bind ``name`` to the first linked dylib that exports it (None if none does)."""
        for d in self.inputs.dylibs:
            kind = self.inputs.dylib_set.lookup(d.iface, name)
            if kind is None:
                continue
            ls = LinkSymbol(
                name,
                SymKind.IMPORT,
                ordinal=d.ordinal,
                weak_import=weak_ref or d.mode == "weak",
                import_is_weak_def=kind == "weak",
            )
            self.globals[name] = ls
            return ls
        return None

    def _add_alias(self, name: str, alias: str) -> None:
        target = self.globals.get(name)
        if target is None:
            target = self.import_symbol(name, False)
            if target is None:
                raise LinkError(f"-alias: symbol {name} is not defined")
        if alias in self.globals:
            raise LinkError(f"-alias: {alias} is already defined")
        if target.is_import:
            self.aliases_reexported.append((alias, target))
        else:
            self.globals[alias] = LinkSymbol(
                alias,
                target.kind,
                isect=target.isect,
                offset=target.offset,
                out=target.out,
                value=target.value,
                external=True,
            )

    def symbol_for(self, obj_index: int, target: Target) -> LinkSymbol:
        assert target.symbol is not None
        ls = self.symbol_maps[obj_index][target.symbol]
        if ls is None:
            raise LinkError(
                f"{self.objects[obj_index].path}: relocation to symbol #{target.symbol}, which has no "
                "definition"
            )
        return ls

    def defined_place(self, obj_index: int, target: Target, addend: int) -> tuple[InputSection, int]:
        """(input section, offset) of a target that must be defined in a section of the link."""
        obj = self.objects[obj_index]
        if target.section is not None:
            return obj.section(target.section), target.offset + addend
        ls = self.symbol_for(obj_index, target)
        if ls.isect is None:
            raise LinkError(f"{obj.path}: unwind info refers to {ls.name}, which is not defined in a section")
        return ls.isect, ls.offset + addend
