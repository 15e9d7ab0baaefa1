"""The command line's contract (issue 10): one exit-status table for every command, one error
line with no traceback and no Python ``b'...'``, the misleading messages of the issue, --version,
--json consistency, ``build --example --keep-dylibs``, and the README's API example.

The exit-status table (README "Exit status", cli.EXIT_STATUS) is checked row by row for every
command, each on a small case whose status follows from the case itself: 0 on a good input;
1 when the command ran and failed (a build with nothing to place, an undefined symbol, a
damaged cache, an address or symbol that is not there) or, for commands whose work cannot fail
otherwise, when standard output is a full disk (/dev/full); 2 for bad usage or an input that
cannot be used; 130 for a real SIGINT delivered while the command works (an audit hook sends it
when the command opens its input).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, RawCache
from conftest import REPO, cli_env

from dyldcache.examples import EXAMPLE_DYLIBS, OBJ_DIR

COMMANDS = (
    "build",
    "link",
    "macho",
    "info",
    "list",
    "verify",
    "image",
    "exports",
    "dependents",
    "a2s",
    "s2a",
    "extract",
    "objc",
)


class Case:
    """Paths of the small cases: the arm64 example root and its cache."""

    def __init__(self, factory: CacheFactory, tmp: Path) -> None:
        self.tmp = tmp
        self.root = Path(factory.root("arm64"))
        self.cache = factory.build("arm64").main
        self.dylib = str(self.root / "usr/lib/libfxa.dylib")
        raw = RawCache(self.cache)
        self.fxa_address = raw.image_address("/usr/lib/libfxa.dylib")
        self.base = raw.base

    def out(self, name: str) -> str:
        return str(self.tmp / name)

    def lone_root(self) -> str:
        """A root whose one dylib depends on a dylib that is not there: nothing can be placed."""
        lone = self.tmp / "lone"
        if not lone.exists():
            (lone / "usr/lib").mkdir(parents=True)
            shutil.copy(self.root / "usr/lib/libfxd.dylib", lone / "usr/lib")
        return str(lone)

    def damaged_cache(self) -> str:
        """The cache with one byte of __TEXT changed (its page hash no longer matches)."""
        copy = self.tmp / "damaged" / "dyld_shared_cache_arm64"
        if not copy.exists():
            copy.parent.mkdir()
            data = bytearray(Path(self.cache).read_bytes())
            text = RawCache(self.cache).main.mappings[0]
            data[text.file_offset + text.size - 0x100] ^= 0x40
            copy.write_bytes(bytes(data))
        return str(copy)

    def a_file(self) -> str:
        path = self.tmp / "a-file"
        path.write_text("not a folder\n")
        return str(path)


@pytest.fixture(scope="module")
def case(cache_factory: CacheFactory, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return Case(cache_factory, tmp_path_factory.mktemp("cli-contract"))


def _obj(name: str) -> str:
    return str(OBJ_DIR / "arm64" / f"{name}.o")


#: command -> status -> argv (the input it opens first, for the SIGINT row, is in MARKERS)
ROWS: dict[str, dict[int, Callable[[Case], list[str]]]] = {
    "build": {
        0: lambda c: ["build", "--arch", "arm64", "-q", "-o", c.out("b0"), "--root", str(c.root)],
        1: lambda c: ["build", "--arch", "arm64", "-q", "-o", c.out("b1"), "--root", c.lone_root()],
        2: lambda c: ["build", "--arch", "arm64", "-o", c.out("b2"), "--root", c.out("no-such-root")],
    },
    "link": {
        0: lambda c: [
            "link",
            "-arch",
            "arm64",
            "-o",
            c.out("l0.dylib"),
            "-install_name",
            "/l0",
            _obj("libsystem"),
        ],
        1: lambda c: [
            "link",
            "-arch",
            "arm64",
            "-o",
            c.out("l1.dylib"),
            "-install_name",
            "/l1",
            _obj("liba"),
        ],
        2: lambda c: [
            "link",
            "-arch",
            "arm64",
            "-o",
            c.out("l2.dylib"),
            "-install_name",
            "/l2",
            c.out("none.o"),
        ],
    },
    "macho": {0: lambda c: ["macho", c.dylib], 2: lambda c: ["macho", str(c.root)]},
    "info": {0: lambda c: ["info", c.cache], 2: lambda c: ["info", c.dylib]},
    "list": {0: lambda c: ["list", c.cache], 2: lambda c: ["list", c.out("no-such-cache")]},
    "verify": {
        0: lambda c: ["verify", c.cache],
        1: lambda c: ["verify", c.damaged_cache()],
        2: lambda c: ["verify", c.dylib],
    },
    "image": {0: lambda c: ["image", c.cache, "libfxa.dylib"], 2: lambda c: ["image", c.cache, "/no/such"]},
    "exports": {
        0: lambda c: ["exports", c.cache, "/usr/lib/libfxa.dylib"],
        2: lambda c: ["exports", c.dylib],
    },
    "dependents": {
        0: lambda c: ["dependents", c.cache, "/usr/lib/libfxd.dylib"],
        2: lambda c: ["dependents", c.cache, "/no/such"],
    },
    "a2s": {
        0: lambda c: ["a2s", c.cache, hex(c.fxa_address)],
        1: lambda c: ["a2s", c.cache, hex(c.base + 0x10)],  # the cache header: in a mapping, in no image
        2: lambda c: ["a2s", c.cache, "0xnot-hex"],
    },
    "s2a": {
        0: lambda c: ["s2a", c.cache, "_fxa_apply"],
        1: lambda c: ["s2a", c.cache, "_no_such_symbol"],
        2: lambda c: ["s2a", c.out("no-such-cache"), "_fxa_apply"],
    },
    "extract": {
        0: lambda c: ["extract", c.cache, c.out("x0"), "/usr/lib/libfxa.dylib"],
        2: lambda c: ["extract", c.cache, c.a_file(), "/usr/lib/libfxa.dylib"],  # not a folder
    },
    "objc": {
        0: lambda c: ["objc", c.cache],
        2: lambda c: ["objc", c.a_file()],  # not a cache
    },
}

#: commands whose status 1 comes from a full standard output (their own work cannot fail)
FULL_STDOUT = [cmd for cmd in COMMANDS if 1 not in ROWS[cmd]]


def _main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    from dyldcache.cli import main

    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse
        status = exc.code if isinstance(exc.code, int) else 1
    got = capsys.readouterr()
    return status, got.out, got.err


def _one_error_line(command: str, err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith(("usage:", " "))]
    assert lines, err
    assert lines[-1].startswith(f"dyldcache {command}: error: "), err
    assert "Traceback" not in err, err
    assert not re.search(r"(?<!\w)b['\"]", err), f"Python bytes in the message: {err}"
    return lines[-1]


def test_every_command_has_a_row_of_each_kind() -> None:
    from dyldcache.cli import COMMAND_MODULES, EXIT_STATUS, make_parser

    assert EXIT_STATUS == {"ok": 0, "failed": 1, "usage": 2, "interrupted": 130}
    sub = next(a for a in make_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)  # type: ignore[arg-type]
    assert len(COMMAND_MODULES) == 9
    for cmd in COMMANDS:
        assert {0, 2} <= set(ROWS[cmd]), cmd


@pytest.mark.parametrize("command", COMMANDS)
def test_status_0_on_a_good_input(case: Case, capsys: pytest.CaptureFixture[str], command: str) -> None:
    status, _out, err = _main(capsys, ROWS[command][0](case))
    assert status == 0, err
    assert "error" not in err


@pytest.mark.parametrize("command", [c for c in COMMANDS if 1 in ROWS[c]])
def test_status_1_when_the_command_fails(
    case: Case, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    status, out, err = _main(capsys, ROWS[command][1](case))
    assert status == 1, (out, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("command", FULL_STDOUT)
def test_status_1_when_standard_output_cannot_be_written(case: Case, command: str) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    env = cli_env()
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "dyldcache", *ROWS[command][0](case)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr
    line = _one_error_line(command, proc.stderr)
    assert line.endswith("standard output: cannot write: No space left on device"), proc.stderr
    assert proc.stderr.count("\n") == 1, "nothing else, not even Python's complaint at exit"


@pytest.mark.parametrize("command", COMMANDS)
def test_status_2_for_bad_usage_or_input(
    case: Case, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    status, out, err = _main(capsys, ROWS[command][2](case))
    assert status == 2, (out, err)
    _one_error_line(command, err)
    if command != "s2a":
        assert out == "", "the error goes to standard error, nothing to standard output"


#: a path the command opens while it works: the SIGINT row sends SIGINT when it is opened
MARKERS: dict[str, Callable[[Case], str]] = {
    "build": lambda c: str(c.root / "usr/lib/libfxb.dylib"),
    "link": lambda c: _obj("libsystem"),
    "macho": lambda c: c.dylib,
}

DRIVER = """
import os, signal, sys
marker, argv = sys.argv[1], sys.argv[2:]
fired = []
def hook(event, args):
    if event == "open" and not fired and args and str(args[0]).startswith(marker):
        fired.append(True)
        os.kill(os.getpid(), signal.SIGINT)
sys.addaudithook(hook)
from dyldcache.cli import main
status = main(argv)
if not fired:
    sys.stderr.write("the marker was never opened\\n")
sys.exit(status)
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_status_130_when_interrupted(case: Case, command: str) -> None:
    marker = MARKERS.get(command, lambda c: c.cache)(case)
    argv = ROWS[command][0](case)
    env = cli_env()
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, marker, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == f"dyldcache {command}: interrupted\n", proc.stderr


# ---------------------------------------------------------------------------------------------
# the messages of the issue


def test_an_empty_root_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    status, _, err = _main(
        capsys, ["build", "--arch", "arm64", "-o", str(tmp_path / "o"), "--root", str(tmp_path / "empty")]
    )
    assert status == 2
    line = _one_error_line("build", err)
    assert f"--root {tmp_path / 'empty'}: holds no Mach-O file" in line
    assert "give --root" not in line


def test_a_dylib_list_of_missing_entries_names_the_list(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("/usr/lib/libnope.dylib\n/usr/lib/libnope2.dylib\n")
    argv = ["build", "--arch", "arm64", "-o", str(tmp_path / "o"), "--dylib-list", str(listing)]
    status, _, err = _main(capsys, [*argv, "--root", str(case.root)])
    assert status == 2
    line = _one_error_line("build", err)
    assert f"--dylib-list {listing}: none of its 2 entries is a file under --root" in line
    assert "'/usr/lib/libnope.dylib' from the dylib list does not exist" in line
    status, _, err = _main(capsys, argv)  # without a root, the entries are host paths
    assert status == 2
    line = _one_error_line("build", err)
    assert f"--dylib-list {listing}: /usr/lib/libnope.dylib: no such file" in line
    assert "host paths" in line
    listing.write_text("# nothing\n")
    status, _, err = _main(capsys, [*argv, "--root", str(case.root)])
    assert status == 2 and "lists no dylibs" in err


def test_a_folder_given_as_a_dylib_or_to_macho(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _main(capsys, ["build", "--arch", "arm64", "-o", str(tmp_path / "o"), str(case.root)])
    assert status == 2 and "is a directory" in _one_error_line("build", err)
    status, _, err = _main(capsys, ["macho", str(case.root)])
    assert status == 2
    assert _one_error_line("macho", err).endswith(f"{case.root}: is a directory, not a Mach-O file")


def test_bytes_are_shown_as_hex_or_text(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _main(capsys, ["info", case.dylib])
    assert status == 2
    # the first 16 bytes of the file, as hex: the expected text comes from the file itself
    head = Path(case.dylib).read_bytes()[:16]
    line = _one_error_line("info", err)
    assert f"it starts with {head.hex(' ')}, not 'dyld_v1'" in line
    assert "'dyldcache macho' describes it" in line
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is text\n")
    status, _, err = _main(capsys, ["list", str(text)])
    assert status == 2 and "it starts with 'hello, this is t'" in _one_error_line("list", err)


def test_verify_reports_unreadable_input_as_info_does(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    results = {cmd: _main(capsys, [cmd, case.dylib]) for cmd in ("info", "list", "verify")}
    for cmd, (status, out, err) in results.items():
        assert status == 2 and out == "", cmd
        assert (
            _one_error_line(cmd, err).split(": error: ")[1]
            == results["info"][2].split(": error: ")[1].strip()
        )


def test_negative_jobs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _main(capsys, ["build", "--arch", "arm64", "-j", "-1", "--example", "-o", str(tmp_path)])
    assert status == 2
    assert "argument -j/--jobs: -1: give 0 (one worker per core), 1 (none) or more" in err
    from dyldcache import BuildOptions, UsageError

    with pytest.raises(UsageError):
        BuildOptions(arch="arm64", output_dir=str(tmp_path), jobs=-1)


def test_an_output_folder_that_cannot_be_written_is_bad_usage(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["build", "--arch", "arm64", "-q", "--root", str(case.root), "-o", str(blocker / "out")]
    status, _, err = _main(capsys, argv)
    assert status == 2
    assert "Not a directory" in _one_error_line("build", err)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    status, out, _ = _main(capsys, ["--version"])
    assert status == 0
    assert out == f"dyldcache {version('dyldcache')} (writes and reads the dyld-1162 shared cache format)\n"
    import dyldcache

    assert dyldcache.__version__ == version("dyldcache")


# ---------------------------------------------------------------------------------------------
# build's summary and JSON


def test_build_summary_and_json_uuid(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _main(
        capsys, ["build", "--arch", "arm64", "-o", str(tmp_path / "o"), "--root", str(case.root)]
    )
    assert status == 0, err
    assert out == f"built {tmp_path / 'o' / 'dyld_shared_cache_arm64'} (7 dylibs, 1 file, 0 evicted)\n"
    status, out, err = _main(
        capsys, ["build", "--arch", "arm64", "--json", "-o", str(tmp_path / "o"), "--root", str(case.root)]
    )
    assert status == 0, err
    uuid = json.loads(out)["uuid"]
    raw = (tmp_path / "o" / "dyld_shared_cache_arm64").read_bytes()[0x58:0x68]  # header uuid (§1)
    h = raw.hex().upper()
    assert uuid == f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    status, out, _ = _main(capsys, ["info", "--json", str(tmp_path / "o" / "dyld_shared_cache_arm64")])
    assert json.loads(out)["uuid"] == uuid


def test_example_keep_dylibs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep = tmp_path / "dylibs"
    argv = [
        "build",
        "--example",
        "--arch",
        "arm64",
        "-q",
        "-o",
        str(tmp_path / "o"),
        "--keep-dylibs",
        str(keep),
    ]
    status, _, err = _main(capsys, argv)
    assert status == 0, err
    kept = sorted("/" + p.relative_to(keep).as_posix() for p in keep.rglob("*") if p.is_file())
    assert kept == sorted(d.install_name for d in EXAMPLE_DYLIBS)
    status, out, err = _main(capsys, ["macho", "--json", str(keep / "usr/lib/libfxa.dylib")])
    assert status == 0, err
    assert json.loads(out)["install_name"] == "/usr/lib/libfxa.dylib"
    status, out, _ = _main(capsys, ["list", str(tmp_path / "o" / "dyld_shared_cache_arm64")])
    assert sorted(out.split()) == kept
    status, _, err = _main(
        capsys, ["build", "--arch", "arm64", "-o", str(tmp_path / "p"), "--keep-dylibs", str(keep)]
    )
    assert status == 2 and "use it with --example" in err
    # again into the same folder: fine; into a folder with other files: refused (they would be cached)
    status, _, err = _main(capsys, argv)
    assert status == 0, err
    (keep / "notes.txt").write_text("mine")
    status, _, err = _main(capsys, argv)
    assert status == 2 and "holds other files (notes.txt)" in err


# ---------------------------------------------------------------------------------------------
# the Python API


def test_public_names_are_exported_and_documented() -> None:
    import inspect

    import dyldcache

    assert set(dyldcache.__all__) == set(dyldcache._EXPORTS) | {"__version__"}
    for name in dyldcache._EXPORTS:
        value = getattr(dyldcache, name)
        assert inspect.getdoc(value), f"dyldcache.{name} has no docstring"
    for cls in (dyldcache.BuildOptions, dyldcache.BuildResult, dyldcache.LinkOptions, dyldcache.LinkInput):
        doc = inspect.getdoc(cls) or ""
        assert not doc.startswith(cls.__name__ + "("), f"{cls.__name__}: only the dataclass's own summary"


def test_the_readme_api_example_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    env = cli_env()
    proc = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    main = tmp_path / "example-cache" / "dyld_shared_cache_arm64"
    h = main.read_bytes()[0x58:0x68].hex().upper()
    assert lines[0] == f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]} 7 dylibs"
    # the image list as the test suite's own struct reader sees it (cache_fixtures.RawCache)
    assert lines[1:] == [f"{address:#x} {path}" for path, address in RawCache(main).images]
