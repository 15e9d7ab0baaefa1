"""What the cached load commands drop, and the dylib commands whose names change.

A dylib's load commands stay where the linker put them, between the mach header and the first
section of ``__TEXT``. The cache drops some of them (``DROPPED_COMMANDS``) and may rename the
paths of others (a relative ``LC_ID_DYLIB`` or ``LC_LOAD_DYLIB`` becomes absolute,
``builder/install_names.py``); a longer name must still fit in that room, or the dylib is evicted.
"""

from __future__ import annotations

from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.format import DylibCommand, MachHeader64
from ..names import encode_name

#: load commands a cached dylib does not keep
DROPPED_COMMANDS = frozenset(
    {
        C.LC_CODE_SIGNATURE,
        C.LC_DYLIB_CODE_SIGN_DRS,
        C.LC_DYLD_CHAINED_FIXUPS,
        C.LC_SEGMENT_SPLIT_INFO,
        C.LC_RPATH,
    }
)
DYLIB_COMMANDS = C.DYLIB_LOAD_COMMANDS | {C.LC_ID_DYLIB}
#: load commands are padded to this in a 64-bit image
_COMMAND_ALIGN = 8


def dylib_command(old: DylibCommand, name: str) -> bytes:
    """``old`` (an LC_*_DYLIB) with its path replaced by ``name``."""
    raw = encode_name(name) + b"\0"
    size = DylibCommand.SIZE + len(raw)
    size += -size % _COMMAND_ALIGN
    head = DylibCommand(
        old.cmd, size, DylibCommand.SIZE, old.timestamp, old.current_version, old.compatibility_version
    ).pack()
    return head + raw + bytes(size - DylibCommand.SIZE - len(raw))


def dylib_command_names(image: MachOFile, install_name: str, load_names: list[str]) -> list[str]:
    """The path each LC_*_DYLIB of ``image`` carries in the cache, in load-command order."""
    loads = iter(load_names)
    return [
        install_name if lc.cmd == C.LC_ID_DYLIB else next(loads)
        for lc in image.load_commands
        if lc.cmd in DYLIB_COMMANDS
    ]


def load_command_room_problem(image: MachOFile, install_name: str, load_names: list[str]) -> str | None:
    """Why the cached load commands of ``image`` (its LC_ID_DYLIB naming ``install_name``, its
    loads ``load_names``) do not fit before the first section of __TEXT, or None."""
    originals = [image.id_dylib, *image.dylibs] if image.id_dylib is not None else list(image.dylibs)
    wanted = [install_name, *load_names] if image.id_dylib is not None else list(load_names)
    if all(ref.path == name for ref, name in zip(originals, wanted, strict=True)):
        return None  # nothing grows
    names = iter(dylib_command_names(image, install_name, load_names))
    size = 0
    for lc in image.load_commands:
        if lc.cmd in DROPPED_COMMANDS:
            continue
        if lc.cmd in DYLIB_COMMANDS:
            n = DylibCommand.SIZE + len(encode_name(next(names))) + 1
            size += n + (-n % _COMMAND_ALIGN)
        else:
            size += lc.size
    text = image.segments[0] if image.segments else None
    contents = [s.offset for s in (text.sections if text else []) if s.size and not s.is_zerofill]
    if not contents:
        return None
    room = min(contents) - (text.fileoff if text else 0) - MachHeader64.SIZE
    if size > room:
        return (
            f"its load commands with absolute paths take {size} bytes, more than the {room} bytes "
            "before its first section (relink it with -headerpad)"
        )
    return None
