"""The Mach-O reader (macho/) on damaged whole files: every linked example dylib and Apple's dylibs
in shared/data/macho, mutated by hypothesis (bytes replaced, bits flipped, 32-bit fields forged,
files cut short), then parsed with every LINKEDIT decoder and ``describe_image`` touched. The only
exception allowed is a FormatError (MachOFormatError), and nothing may hang. The fuzzer findings of
shared/data/fuzzed go through ``dyldcache macho``: exit 2, one line on stderr, no traceback.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import pytest
from conftest import SHARED, Hang, run_cli, shared_path, time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linked_examples import CONFIGS, linked

from dyldcache.errors import FormatError, MachOFormatError
from dyldcache.macho.describe import describe_image
from dyldcache.macho.file import MachOFile, parse_macho

#: seconds one parse-and-decode of a (small) file may take before it counts as a hang
TIME_LIMIT = 5.0


@cache
def corpus() -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of the files mutated: every linked example (chained formats 6 and 12, opcodes)
    and Apple's dylibs."""
    files = []
    for arch, fixups in CONFIGS:
        for name, path in linked(arch, fixups).items():
            files.append((f"{arch}-{fixups}-{name}", path.read_bytes()))
    apple = SHARED / "data" / "macho"
    if apple.is_dir():
        files += [(p.name, p.read_bytes()) for p in sorted(apple.iterdir())]
    return tuple(files)


def touch_everything(data: bytes, path: str) -> None:
    """Parse and run every decoder of the reader on ``data``."""
    touch_image(parse_macho(data, path))


def touch_image(image: MachOFile) -> None:
    """Run every LINKEDIT decoder of the reader and ``describe_image`` on a parsed image."""
    fixups = image.fixups
    fixups.counts()
    for r in fixups.records[:64]:
        if int(r["bind"]) >= 0:
            fixups.import_name(r)
    decoded = [
        image.exports,
        image.split_seg,
        image.function_starts,
        image.indirect_symbols,
        image.data_in_code,
    ]
    assert len(decoded) == 5
    image.symbol_table.names()
    list(image.iter_symbols())
    describe_image(image)


@cache
def _regions(data: bytes) -> list[tuple[int, int]]:
    """Where mutations are interesting: the load commands, LINKEDIT (fixups, exports, split seg,
    symbols...), the data segments (where chained fixups keep their chains), anywhere."""
    sizeofcmds = struct.unpack_from("<I", data, 20)[0]
    regions = [(16, min(len(data), 32 + sizeofcmds))]
    ncmds = struct.unpack_from("<I", data, 16)[0]
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x19:
            fileoff, filesize = struct.unpack_from("<QQ", data, off + 40)
            if fileoff and filesize:  # not __TEXT (which holds the header)
                regions.append((fileoff, fileoff + filesize))
        off += size
    regions.append((0, len(data)))
    return regions


INTERESTING_U32 = [
    0,
    1,
    7,
    8,
    0x7F,
    0x80,
    0xFF,
    0x1000,
    0x4000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFF8,
    0xFFFFFFFF,
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    files = corpus()
    name, original = files[draw(st.integers(0, len(files) - 1))]
    data = bytearray(original)
    lo, hi = draw(st.sampled_from(_regions(original)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(lo, max(lo, hi - 1)))
        how = draw(st.sampled_from(["byte", "flip", "u32", "u32", "u64"]))
        if how == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif how == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "u32":
            pos &= ~3
            value = draw(st.sampled_from(INTERESTING_U32) | st.integers(0, 0xFFFFFFFF))
            data[pos : pos + 4] = struct.pack("<I", value)[: len(data) - pos]
        else:  # a whole chained pointer or 64-bit field
            pos &= ~7
            value = draw(st.integers(0, (1 << 64) - 1))
            data[pos : pos + 8] = struct.pack("<Q", value)[: len(data) - pos]
    if draw(st.integers(1, 10)) == 10:  # now and then, a file cut short (mostly near its end)
        del data[len(data) - 1 - draw(st.integers(0, len(data) - 1)) :]
    return name, bytes(data)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(mutated())
def test_mutated_files_raise_only_format_errors(case: tuple[str, bytes]) -> None:
    name, data = case
    with time_limit(TIME_LIMIT):
        try:
            touch_everything(data, name)
        except FormatError as exc:
            assert isinstance(exc, MachOFormatError), exc
            assert exc.path == name
            assert exc.offset is None or 0 <= exc.offset <= len(data), exc


def test_unmutated_corpus_decodes_cleanly() -> None:
    """The mutation test starts from files the reader reads without error."""
    files = corpus()
    assert len(files) >= 35
    for name, data in files:
        with time_limit(TIME_LIMIT):
            touch_everything(data, name)


# ---------------------------------------------------------------------------------------------
# fuzzer findings through the CLI


def _fuzzed() -> list[Path]:
    return sorted(p for p in shared_path("data", "fuzzed").iterdir() if p.is_file())


def test_fuzzed_files_in_process() -> None:
    """Each finding is either rejected with a MachOFormatError or fully decodable."""
    for path in _fuzzed():
        data = path.read_bytes()
        with time_limit(TIME_LIMIT):
            try:
                touch_everything(data, str(path))
            except MachOFormatError as exc:
                assert exc.path == str(path)


def _check_cli_error(path: Path, status: int, stderr: str) -> None:
    assert "Traceback" not in stderr, (path, stderr)
    assert status == 2, (path, status, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, (path, stderr)
    assert lines[0].startswith(f"dyldcache macho: error: {path}: "), lines[0]


def test_fuzzed_files_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """``dyldcache macho FILE`` on every finding (in this process: the CLI's own entry point)."""
    from dyldcache.cli import main

    paths = _fuzzed()
    assert len(paths) >= 30
    for path in paths:
        capsys.readouterr()
        with time_limit(TIME_LIMIT):
            status = main(["macho", str(path)])
        out = capsys.readouterr()
        _check_cli_error(path, status, out.err)
        assert out.out == ""


@pytest.mark.parametrize(
    "name", ["crash-macho", "mach12", "mach1", "dyldcache_read4", "macho-negativesymcount"]
)
def test_fuzzed_files_through_python_m_dyldcache(name: str) -> None:
    """A few findings (32-bit, bad opcodes, bad fat header, a cache, bad cmdsize) in a real process."""
    path = shared_path("data", "fuzzed", name)
    proc = run_cli("macho", str(path), timeout=60)
    _check_cli_error(path, proc.returncode, proc.stderr)
    assert proc.stdout == ""


@pytest.mark.parametrize("seconds", [0.2])
def test_time_limit_catches_a_hang(seconds: float) -> None:
    """The guard used above really interrupts a loop that never ends."""
    with pytest.raises(Hang), time_limit(seconds):
        while True:
            pass
