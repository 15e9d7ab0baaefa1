"""``dyldcache link -stub_library``: stand-in dylibs made from a .tbd (link/stub_library.py).

Expected values come from the stubs written in this file and the rules the usage text states;
the oracles are llvm-objdump-22 (it must read every stand-in without a warning; its exports
trie, load commands, sections and disassembly must show the stub's install name, versions,
re-exports, weak definitions, a trap at every function and zero-filled storage at every data
symbol) and unicorn, which runs the real code an input object gives and must stop at the rest.
"""

from __future__ import annotations

import itertools
import re
import struct
import subprocess
from pathlib import Path

import objdump
import pytest
from conftest import python_module, run_cli
from test_link import _main, _one_line_error

from dyldcache.builder.config import make_config
from dyldcache.builder.inputs import check_eligibility
from dyldcache.errors import LinkError
from dyldcache.examples import OBJ_DIR
from dyldcache.link.linker import LinkInput, LinkOptions, link
from dyldcache.macho.file import open_macho

INSTALL_NAME = "/usr/lib/libstandin.dylib"
STUB = """\
--- !tapi-tbd
tbd-version:     4
targets:         [ arm64-macos, arm64e-macos, x86_64-macos, arm64-ios, arm64e-ios ]
install-name:    '/usr/lib/libstandin.dylib'
current-version: 1.4.5
compatibility-version: 1.2
exports:
  - targets:   [ arm64-macos, arm64e-macos, x86_64-macos, arm64-ios, arm64e-ios ]
    symbols:   [ _open, _close, _environ, _errno_table ]
    weak-symbols: [ _hook ]
    objc-classes: [ NSThing ]
    objc-eh-types: [ NSThing ]
    objc-ivars: [ NSThing._count ]
    thread-local-symbols: [ _tls_state ]
  - targets:   [ x86_64-macos ]
    symbols:   [ _only_on_intel ]
...
"""
#: what the stub lists for every target, by the meaning the usage text gives each kind
FUNCTIONS = {"_open", "_close", "_hook"}
DATA_LISTED = {"_environ", "_errno_table"}  # plain symbols named in -stub_data_list
OBJC_DATA = {
    "_OBJC_CLASS_$_NSThing",
    "_OBJC_METACLASS_$_NSThing",
    "_OBJC_EHTYPE_$_NSThing",
    "_OBJC_IVAR_$_NSThing._count",
}
#: the smallest object stood in for: an ObjC class_t is five pointers
CLASS_T_SIZE = 40
TRAP = {"arm64": ("brk", "#0x1"), "arm64e": ("brk", "#0x1"), "x86_64": ("ud2", "")}
PLATFORMS = {"arm64": "ios", "arm64e": "ios", "x86_64": "macos"}
ARCHS = tuple(PLATFORMS)


def _write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.write_text(text, encoding="utf-8")
    return p


_INSN = re.compile(r"^\s*([0-9a-f]+):\t[0-9a-f ]+\t(\S+)\s*(\S*)")


def disassembly(path: Path) -> dict[str, tuple[str, str]]:
    """label -> (mnemonic, first operand) of the instruction at the label, from llvm-objdump -d."""
    out: dict[str, tuple[str, str]] = {}
    label = None
    for line in objdump.run(path, "-d").splitlines():
        if line.endswith(":") and not line.startswith((" ", "\t", "(")):
            label = line[:-1]
            continue
        m = _INSN.match(line)
        if m and label is not None:
            out[label] = (m.group(2), m.group(3))
            label = None
    return out


def _section_of(ph: objdump.PrivateHeaders, address: int) -> objdump.ObjSection:
    for s in ph.sections:
        if s.addr <= address < s.addr + max(s.size, 1):
            return s
    raise AssertionError(f"{address:#x} is in no section")


@pytest.mark.parametrize("arch", ARCHS)
def test_stand_in_from_a_stub_alone(arch: str, tmp_path: Path) -> None:
    """No object at all: every function traps, data is zero-filled __bss, the stub's identity."""
    stub = _write(tmp_path, "libstandin.tbd", STUB)
    names = _write(tmp_path, "data.txt", "# data, not code\n_environ\n\n_errno_table\n")
    out = tmp_path / "libstandin.dylib"
    proc = run_cli(
        "link", "-arch", arch, "-platform", PLATFORMS[arch], "-o", str(out),
        "-stub_library", str(stub), "-stub_data_list", str(names),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # the thread-local symbol is the one thing it cannot stand in for, and it says so
    assert "_tls_state" in proc.stderr and "thread-local" in proc.stderr

    extra = {"_only_on_intel"} if arch == "x86_64" else set()
    exports = {e.name: e for e in objdump.exports_trie(out)}
    assert set(exports) == FUNCTIONS | DATA_LISTED | OBJC_DATA | extra
    assert exports["_hook"].attributes == {"weak_def"}
    assert all(not e.attributes for n, e in exports.items() if n != "_hook")

    ph = objdump.private_headers(out)
    assert "WEAK_DEFINES" in ph.header and "TWOLEVEL" in ph.header
    (ident,) = ph.commands_named("LC_ID_DYLIB")
    assert ident["name"].split()[0] == INSTALL_NAME
    assert (ident["current version"], ident["compatibility version"]) == ("1.4.5", "1.2.0")
    assert ph.commands_named("LC_SEGMENT_SPLIT_INFO"), "cache-ready: split seg info like every output"
    assert objdump.dylibs_used(out)[1:] == [], "a stand-in made from a stub alone links nothing"

    code = disassembly(out)
    for name in FUNCTIONS | extra:
        assert code.get(name) == TRAP[arch], (name, code.get(name))
        assert _section_of(ph, exports[name].address or 0).sectname == "__text"
    data = sorted((exports[n].address or 0, n) for n in DATA_LISTED | OBJC_DATA)
    for (addr, name), (nxt, _) in zip(data, [*data[1:], (None, "")], strict=True):
        sect = _section_of(ph, addr)
        assert (sect.segname, sect.sectname, sect.type) == ("__DATA", "__bss", "S_ZEROFILL"), name
        end = sect.addr + sect.size if nxt is None else nxt
        assert end - addr >= CLASS_T_SIZE, f"{name}: only {end - addr} bytes"

    image = open_macho(out)
    assert check_eligibility(image, INSTALL_NAME, make_config(arch, PLATFORMS[arch])) is None


@pytest.mark.parametrize("arch", ARCHS)
def test_input_objects_give_real_code_and_the_rest_traps(arch: str, tmp_path: Path) -> None:
    """libsystem.o defines _strlen and _memcpy: those run; _puts, only in the stub, traps."""
    python_module("unicorn")
    python_module("lief")
    from emulator import EmulationError, load_standalone

    stub = _write(
        tmp_path,
        "libsystem_c.tbd",
        STUB.replace("/usr/lib/libstandin.dylib", "/usr/lib/system/libsystem_c.dylib").replace(
            "[ _open, _close, _environ, _errno_table ]", "[ _strlen, _memcpy, _puts ]"
        ),
    )
    out = tmp_path / "libsystem_c.dylib"
    result = link(
        LinkOptions(
            arch=arch,
            output=str(out),
            install_name="",
            inputs=[LinkInput(str(OBJ_DIR / arch / "libsystem.o"))],
            platform="macos",
            stub_library=str(stub),
        )
    )
    assert any("_tls_state" in w for w in result.warnings)
    exports = {e.name: e.address for e in objdump.exports_trie(out)}
    # the object's own exports stay exported, listed or not
    assert {"_strlen", "_memcpy", "_puts", "_malloc", "_fx_system_version"} <= set(exports)
    code = disassembly(out)
    assert code["_puts"] == TRAP[arch]
    assert code["_strlen"] != TRAP[arch] and code["_memcpy"] != TRAP[arch]

    machine, images = load_standalone([str(out)], arch, seed=7)
    lib = images["/usr/lib/system/libsystem_c.dylib"].exports
    buf = 0x5000_0000
    machine.map(buf, 0x4000)
    machine.write(buf, b"stand-in\0")
    assert machine.call(lib["_strlen"], buf) == 8
    machine.call(lib["_memcpy"], buf + 0x100, buf, 9)
    assert machine.read(buf + 0x100, 9) == b"stand-in\0"
    with pytest.raises(EmulationError) as trapped:
        machine.call(lib["_puts"], buf)
    # it stops at the first instruction: the stand-in itself, not somewhere it jumped to
    assert f"at pc {lib['_puts']:#x}" in str(trapped.value)


UMBRELLA = """\
--- !tapi-tbd
tbd-version:     4
targets:         [ arm64-ios ]
install-name:    '/usr/lib/libumbrella.dylib'
current-version: 7
reexported-libraries:
  - targets:   [ arm64-ios ]
    libraries: [ '/usr/lib/system/libsub.dylib' ]
exports:
  - targets:   [ arm64-ios ]
    symbols:   [ _umbrella_fn ]
"""
SUB = """\
--- !tapi-tbd
tbd-version:     4
targets:         [ arm64-ios ]
install-name:    '/usr/lib/system/libsub.dylib'
current-version: 3.2.1
compatibility-version: 1.0
exports:
  - targets:   [ arm64-ios ]
    symbols:   [ _sub_fn ]
...
"""


def test_reexports_come_from_the_stub(tmp_path: Path) -> None:
    """The umbrella's re-exported library, inlined as a second document, becomes an
    LC_REEXPORT_DYLIB with that document's versions; its symbols are not defined again."""
    stub = _write(tmp_path, "umbrella.tbd", UMBRELLA + SUB)
    out = tmp_path / "libumbrella.dylib"
    link(LinkOptions("arm64", str(out), "", [], platform="ios", stub_library=str(stub)))
    used = objdump.dylibs_used(out)
    assert used[0][0] == "/usr/lib/libumbrella.dylib"
    assert used[1:] == [
        ("/usr/lib/system/libsub.dylib", "compatibility version 1.0.0, current version 3.2.1, reexport")
    ]
    assert "NO_REEXPORTED_DYLIBS" not in objdump.private_headers(out).header
    assert {e.name for e in objdump.exports_trie(out)} == {"_umbrella_fn"}


def test_a_reexport_found_through_the_search_paths(tmp_path: Path) -> None:
    (tmp_path / "sdk").mkdir()
    stub = _write(tmp_path, "umbrella.tbd", UMBRELLA + "...\n")
    out = tmp_path / "libumbrella.dylib"
    options = LinkOptions("arm64", str(out), "", [], platform="ios", stub_library=str(stub))
    with pytest.raises(LinkError, match=r"re-exported library /usr/lib/system/libsub.dylib not found"):
        link(options)
    _write(tmp_path / "sdk", "libsub.tbd", SUB)
    options.search_paths = [str(tmp_path / "sdk")]
    link(options)
    assert objdump.dylibs_used(out)[1][0] == "/usr/lib/system/libsub.dylib"


def test_command_line_values_win_over_the_stub(tmp_path: Path) -> None:
    stub = _write(tmp_path, "libstandin.tbd", STUB)
    out = tmp_path / "other.dylib"
    proc = run_cli(
        "link", "-arch", "arm64", "-platform", "ios", "-o", str(out), "-stub_library", str(stub),
        "-install_name", "/usr/lib/libother.dylib",
        "-current_version", "2.0", "-compatibility_version", "2.0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (ident,) = objdump.private_headers(out).commands_named("LC_ID_DYLIB")
    assert ident["name"].split()[0] == "/usr/lib/libother.dylib"
    assert (ident["current version"], ident["compatibility version"]) == ("2.0.0", "2.0.0")


def _exit_and_line(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    proc: subprocess.CompletedProcess[str] = _main(capsys, "link", *args)
    return proc.returncode, _one_line_error(proc)


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub = _write(tmp_path, "libstandin.tbd", STUB)
    obj = str(OBJ_DIR / "arm64" / "libsystem.o")
    out = str(tmp_path / "x.dylib")
    status, line = _exit_and_line(capsys, "-arch", "arm64", "-o", out, "-stub_library", obj)
    assert status == 2 and obj in line and ".tbd" in line
    status, line = _exit_and_line(capsys, "-arch", "arm64", "-o", out, "-stub_library", str(stub))
    assert status == 1 and "-platform" in line
    status, line = _exit_and_line(
        capsys, "-arch", "arm64", "-o", out, "-install_name", "/usr/lib/x.dylib", "-stub_data_list", "d", obj
    )
    assert status == 2 and "-stub_data_list needs -stub_library" in line
    status, line = _exit_and_line(capsys, "-arch", "arm64", "-o", out, obj)
    assert status == 2 and "missing -install_name" in line
    missing = str(tmp_path / "nowhere.txt")
    status, line = _exit_and_line(
        capsys, "-arch", "arm64", "-platform", "ios", "-o", out, "-stub_library", str(stub),
        "-stub_data_list", missing,
    )  # fmt: skip
    assert status == 2 and missing in line
    assert not Path(out).exists()


def test_usage_text_documents_the_option() -> None:
    proc = run_cli("link", "--help")
    assert proc.returncode == 0
    for words in ("-stub_library FILE.tbd", "-stub_data_list FILE", "brk #1", "ud2", "zeroed"):
        assert words in proc.stdout, words


def test_data_storage_is_zero_in_the_file_and_in_memory(tmp_path: Path) -> None:
    """The zero fill is real: __bss takes no file bytes, and a loaded stand-in reads zeros there."""
    python_module("unicorn")
    python_module("lief")
    from emulator import load_standalone

    stub = _write(tmp_path, "libstandin.tbd", STUB)
    out = tmp_path / "libstandin.dylib"
    link(LinkOptions("arm64", str(out), "", [], platform="ios", stub_library=str(stub)))
    (bss,) = [s for s in objdump.private_headers(out).sections if s.sectname == "__bss"]
    assert bss.offset == 0
    machine, images = load_standalone([str(out)], "arm64", seed=3)
    cls = images[INSTALL_NAME].exports["_OBJC_CLASS_$_NSThing"]
    assert struct.unpack("<5Q", machine.read(cls, CLASS_T_SIZE)) == (0, 0, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# the real code tests/standins.py links into stand-ins (tests/fixtures/src/standin_system.c)


@pytest.mark.parametrize("arch", ["arm64", "x86_64"])
def test_standin_system_object_keeps_the_c_semantics(arch: str, tmp_path: Path) -> None:
    """The heap and string functions real libraries call, checked against the C standard's
    semantics (and Python's bytes), for both builds of the committed object."""
    python_module("unicorn")
    python_module("lief")
    from emulator import EmulationError, load_standalone
    from standins import STANDIN_OBJECTS, object_exports

    obj = STANDIN_OBJECTS[arch]
    names = sorted(object_exports(obj, arch))
    stub = _write(
        tmp_path,
        "libsystem_c.tbd",
        STUB.replace("[ _open, _close, _environ, _errno_table ]", f"[ {', '.join(names)} ]"),
    )
    out = tmp_path / "libsystem_c.dylib"
    link(
        LinkOptions(
            arch, str(out), "", [LinkInput(str(obj))], platform=PLATFORMS[arch], stub_library=str(stub)
        )
    )
    m, images = load_standalone([str(out)], arch, seed=11)
    f = images[INSTALL_NAME].exports
    buf = 0x5000_0000
    m.map(buf, 0x10000)

    def call(name: str, *args: int) -> int:
        return int(m.call(f[name], *args))

    # malloc: 16-byte aligned, disjoint blocks; calloc zeroes memory a freed block dirtied
    blocks = [call("_malloc", n) for n in (1, 24, 100, 0)]
    assert all(b % 16 == 0 for b in blocks) and len(set(blocks)) == 4
    ends = sorted((b, b + max(n, 1)) for b, n in zip(blocks, (1, 24, 100, 0), strict=True))
    assert all(e <= nb for (_, e), (nb, _) in itertools.pairwise(ends))
    m.write(blocks[2], b"\xa5" * 100)
    for b in blocks:
        call("_free", b)
    z = call("_calloc", 10, 10)
    assert m.read(z, 100) == bytes(100)
    assert call("_calloc", 1 << 62, 8) == 0  # count * size overflows
    m.write(z, bytes(range(100)))
    r = call("_realloc", z, 300)
    assert r != z and m.read(r, 100) == bytes(range(100))
    assert m.read(call("_realloc", r, 10), 10) == bytes(range(10))

    # memmove both ways over an overlap, as Python's slice assignment does
    data = bytes(range(64))
    for dst, src in ((8, 0), (0, 8)):
        m.write(buf, data)
        call("_memmove", buf + dst, buf + src, 40)
        expect = bytearray(data)
        expect[dst : dst + 40] = data[src : src + 40]
        assert m.read(buf, 64) == bytes(expect), (dst, src)
    m.write(buf, b"abcd\0abce\0")
    assert m.call_int(f["_memcmp"], buf, buf + 5, 4) < 0 < m.call_int(f["_memcmp"], buf + 5, buf, 4)
    assert m.call_int(f["_strncmp"], buf, buf + 5, 3) == 0 and m.call_int(f["_strcmp"], buf, buf + 5) < 0
    m.write(buf, b"hello, world\0lo, \0")
    assert call("_strcspn", buf, buf + 13) == b"hello, world".index(b"l")
    assert call("_strspn", buf + 2, buf + 13) == 5  # "llo, " are all in "lo, "
    m.write(buf, b"0123456789abcdef")
    call("_memset_pattern16", buf + 0x100, buf, 40)
    assert m.read(buf + 0x100, 40) == (b"0123456789abcdef" * 3)[:40]
    assert m.call_int(f["_memset_s"], buf, 8, 0x41, 16) == 84  # EOVERFLOW: only 8 bytes set
    assert m.read(buf, 9) == b"AAAAAAAA8"
    with pytest.raises(EmulationError):
        call("___memcpy_chk", buf, buf + 0x100, 32, 16)  # overflows its destination: traps
    errno = call("___error")
    assert errno == call("___error") and errno % 4 == 0
    call("___chkstk_darwin")  # returns at once: the emulated stack needs no probing
