"""mypy --strict keeps the builder's address spaces apart (``builder/types.py``): small programs
that mix two of them through the layout model (Chunk, Region, SubCache), a cache dylib's
segments and the named conversions must each be rejected at the mixing line, and the same
programs written with the right conversion must pass.

One mypy run checks every program (``--follow-imports=silent``: only these files report).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, cli_env

PRELUDE = """\
from dyldcache.builder.cache_dylib import CacheDylib
from dyldcache.builder.layout import Chunk, Region, SubCache
from dyldcache.builder.types import (
    CacheFileOffset,
    CacheVMAddr,
    CacheVMOffset,
    InputFileOffset,
    InputVMAddr,
    file_offset_of_vm,
    moved_address,
    vm_of_file_offset,
    vm_offset,
)
"""

#: name -> (a correct line, the same line mixing two spaces, mypy's error code for the mix)
CASES: dict[str, tuple[str, str, str]] = {
    "chunk file offset stored as its VM address": (
        "chunk.vm_addr = vm_of_file_offset(chunk.file_offset, region.file_offset, region.vm_addr)",
        "chunk.vm_addr = chunk.file_offset",
        "assignment",
    ),
    "region VM address stored as its file offset": (
        "region.file_offset = file_offset_of_vm(region.vm_addr, sub.vm_addr, chunk.file_offset)",
        "region.file_offset = region.vm_addr",
        "assignment",
    ),
    "file offset given where a VM offset is computed": (
        "delta: CacheVMOffset = vm_offset(chunk.vm_addr, sub.vm_addr)",
        "delta: CacheVMOffset = vm_offset(chunk.file_offset, sub.vm_addr)",
        "arg-type",
    ),
    "VM offset stored as a cache address": (
        "sub.vm_addr = chunk.vm_addr",
        "sub.vm_addr = vm_offset(chunk.vm_addr, sub.vm_addr)",
        "assignment",
    ),
    "cache address looked up as an input address": (
        "seg = dylib.segment_for_input_address(dylib.text.input_vmaddr)",
        "seg = dylib.segment_for_input_address(dylib.text.cache_vmaddr)",
        "arg-type",
    ),
    "input address taken for a cache address": (
        "moved: CacheVMAddr = moved_address(InputVMAddr(4), dylib.text.input_vmaddr, sub.vm_addr)",
        "moved: CacheVMAddr = dylib.text.input_vmaddr",
        "assignment",
    ),
    "input file offset stored as a cache file offset": (
        "off: InputFileOffset = dylib.text.input_fileoff",
        "off: CacheFileOffset = dylib.text.input_fileoff",
        "assignment",
    ),
    "plain integer stored as a chunk address": (
        "chunk.vm_addr = CacheVMAddr(0x180000000)",
        "chunk.vm_addr = 0x180000000",
        "assignment",
    ),
}


def _program(line: str) -> str:
    body = textwrap.indent(line, "    ")
    return (
        PRELUDE
        + "\n\ndef check(chunk: Chunk, region: Region, sub: SubCache, dylib: CacheDylib) -> None:\n"
        + body
        + "\n"
    )


#: line of the statement inside each program (1-based)
_STATEMENT_LINE = PRELUDE.count("\n") + 4


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """file stem -> [(line, message, code)] from one mypy --strict run over every program."""
    folder = tmp_path_factory.mktemp("address_types")
    files = []
    for k, (good, bad, _) in enumerate(CASES.values()):
        for kind, line in (("good", good), ("bad", bad)):
            path = folder / f"{kind}_{k}.py"
            path.write_text(_program(line))
            files.append(str(path))
    env = cli_env(MYPYPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--follow-imports=silent", *files],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr or proc.stdout
    errors: dict[str, list[tuple[int, str, str]]] = {Path(f).stem: [] for f in files}
    for row in proc.stdout.splitlines():
        m = re.match(r"(.+?\.py):(\d+): error: (.*)  \[([a-z-]+)\]$", row)
        assert m is not None, f"unexpected mypy output: {row}"
        errors[Path(m.group(1)).stem].append((int(m.group(2)), m.group(3), m.group(4)))
    return errors


@pytest.mark.parametrize("name", list(CASES))
def test_mypy_rejects_a_mix_of_address_spaces(
    name: str, mypy_errors: dict[str, list[tuple[int, str, str]]]
) -> None:
    k = list(CASES).index(name)
    code = CASES[name][2]
    assert mypy_errors[f"good_{k}"] == [], "the program written with the right conversion type-checks"
    bad = mypy_errors[f"bad_{k}"]
    assert [(line, c) for line, _, c in bad] == [(_STATEMENT_LINE, code)], bad
    # the message names the two spaces (or the plain int) that were mixed
    assert re.search(r'"(Cache|Input)\w+"', bad[0][1]), bad[0][1]
