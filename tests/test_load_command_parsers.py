"""The per-command parsers of the Mach-O reader (dyldcache.macho.commands).

Each load command the reader understands has a fixed-size record in <mach-o/loader.h>; a
command whose cmdsize is smaller than its record must be refused with a MachOFormatError that
names the file, the command's offset and both sizes. A command the reader does not know is kept
as it is. The images are built here with struct, one command each, after a mach_header_64.
"""

from __future__ import annotations

import struct

import pytest

from dyldcache.errors import MachOFormatError
from dyldcache.macho.file import parse_macho

MH_MAGIC_64 = 0xFEEDFACF
CPU_TYPE_ARM64 = 0x0100000C
MH_DYLIB = 6
HEADER_SIZE = 32  # sizeof(struct mach_header_64)

#: cmd -> (name, sizeof the command's struct in <mach-o/loader.h>)
RECORD_SIZES = {
    0x19: ("LC_SEGMENT_64", 72),  # segment_command_64
    0x0C: ("LC_LOAD_DYLIB", 24),  # dylib_command
    0x0D: ("LC_ID_DYLIB", 24),
    0x80000018: ("LC_LOAD_WEAK_DYLIB", 24),
    0x8000001F: ("LC_REEXPORT_DYLIB", 24),
    0x80000023: ("LC_LOAD_UPWARD_DYLIB", 24),
    0x8000001C: ("LC_RPATH", 12),  # rpath_command
    0x0E: ("LC_LOAD_DYLINKER", 12),  # dylinker_command
    0x14: ("LC_SUB_CLIENT", 12),  # sub_client_command
    0x1B: ("LC_UUID", 24),  # uuid_command
    0x32: ("LC_BUILD_VERSION", 24),  # build_version_command
    0x24: ("LC_VERSION_MIN_MACOSX", 16),  # version_min_command
    0x25: ("LC_VERSION_MIN_IPHONEOS", 16),
    0x2A: ("LC_SOURCE_VERSION", 16),  # source_version_command
    0x02: ("LC_SYMTAB", 24),  # symtab_command
    0x0B: ("LC_DYSYMTAB", 80),  # dysymtab_command
    0x22: ("LC_DYLD_INFO", 48),  # dyld_info_command
    0x80000022: ("LC_DYLD_INFO_ONLY", 48),
    0x1D: ("LC_CODE_SIGNATURE", 16),  # linkedit_data_command
    0x1E: ("LC_SEGMENT_SPLIT_INFO", 16),
    0x26: ("LC_FUNCTION_STARTS", 16),
    0x80000034: ("LC_DYLD_CHAINED_FIXUPS", 16),
    0x80000033: ("LC_DYLD_EXPORTS_TRIE", 16),
    0x2C: ("LC_ENCRYPTION_INFO_64", 24),  # encryption_info_command_64
    0x80000028: ("LC_MAIN", 24),  # entry_point_command
    0x1A: ("LC_ROUTINES_64", 72),  # routines_command_64
}


def image_with(cmd: int, body: bytes) -> bytes:
    """A mach_header_64 and one load command (cmd, cmdsize = 8 + len(body), body)."""
    command = struct.pack("<II", cmd, 8 + len(body)) + body
    header = struct.pack("<7I4x", MH_MAGIC_64, CPU_TYPE_ARM64, 0, MH_DYLIB, 1, len(command), 0)
    return header + command


@pytest.mark.parametrize("cmd", sorted(RECORD_SIZES), ids=lambda c: RECORD_SIZES[c][0])
def test_a_command_shorter_than_its_record_is_refused(cmd: int) -> None:
    name, size = RECORD_SIZES[cmd]
    short = size - 4  # still a multiple of 4, as cmdsize must be
    with pytest.raises(MachOFormatError) as err:
        parse_macho(image_with(cmd, bytes(short - 8)), "short.dylib")
    assert err.value.path == "short.dylib"
    assert err.value.offset == HEADER_SIZE
    assert f"{name} cmdsize {short} < {size}" in err.value.message


def test_build_version_must_hold_its_tools() -> None:
    # build_version_command (24 bytes) with ntools = 2: two build_tool_version (8 bytes each) follow
    body = struct.pack("<4I", 1, 0x000E0000, 0x000E0000, 2)
    with pytest.raises(MachOFormatError, match=r"LC_BUILD_VERSION cmdsize 24 < 40"):
        parse_macho(image_with(0x32, body), "tools.dylib")
    image = parse_macho(image_with(0x32, body + struct.pack("<4I", 3, 0x03000000, 4, 0x04000000)), "ok")
    assert image.build_versions[0].tools == ((3, 0x03000000), (4, 0x04000000))


def test_a_32_bit_segment_is_refused() -> None:
    with pytest.raises(MachOFormatError, match=r"LC_SEGMENT \(32-bit\) in a 64-bit image"):
        parse_macho(image_with(0x1, bytes(48)), "seg32.dylib")


def test_an_unknown_command_is_kept_as_it_is() -> None:
    image = parse_macho(image_with(0x7777, bytes(8)), "unknown.dylib")
    (lc,) = image.load_commands
    assert (lc.cmd, lc.offset, lc.size) == (0x7777, HEADER_SIZE, 16)
    assert image.segments == [] and image.uuid is None


def test_string_commands_read_their_string() -> None:
    # rpath_command: path.offset = 12, then the NUL-terminated string, padded to 4 bytes
    image = parse_macho(image_with(0x8000001C, struct.pack("<I", 12) + b"@loader_path\0\0\0\0"), "rpath")
    assert image.rpaths == ["@loader_path"]
    with pytest.raises(MachOFormatError, match="LC_RPATH string offset 40 is outside the command"):
        parse_macho(image_with(0x8000001C, struct.pack("<I", 40) + bytes(4)), "rpath")
