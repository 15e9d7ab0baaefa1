"""The import contracts of pyproject.toml ([tool.importlinter]), run by lint-imports.

tests/run.sh runs lint-imports on the tree; here the contracts are also shown to bite: a copy of
the package with one forbidden import added (an upward import, an import between two packages
of one layer, a cycle inside a package, hidden in a function as the old macho cycle was) must
break the contract that forbids it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_module


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    python_module("importlinter")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)  # the copy's dyldcache comes first
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=src,
        check=False,
        timeout=120,
    )


def test_the_tree_keeps_every_contract() -> None:
    proc = _lint_imports(REPO / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


_CYCLE_IN_MACHO = "No cycles are allowed in dyldcache.macho"


def _not_allowed(low: str, high: str) -> str:
    return f"dyldcache.{low} is not allowed to import dyldcache.{high}"


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        # macho is below arch (the old macho.file -> arch.arch_name import)
        ("macho/fat.py", "from ..arch import ARCHS", _not_allowed("macho", "arch")),
        # link and cache are one layer, independent of each other
        ("link/header.py", "from ..cache import format", _not_allowed("link", "cache")),
        # synth reads Mach-O; the linker is not its to use (the old synth -> link.unwind import)
        ("synth/lsda.py", "from ..link import unwind", _not_allowed("synth", "link")),
        # nothing below the builder reaches up to it
        ("cache/images.py", "from ..builder import config", _not_allowed("cache", "builder")),
        # a cycle inside macho, hidden in a function (the old fixups <-> file cycle)
        ("macho/fixups.py", "def _late():\n    from .file import MachOFile", _CYCLE_IN_MACHO),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, added: str, broken: str) -> None:
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "src" / "dyldcache", src / "dyldcache", ignore=ignore)
    target = src / "dyldcache" / module
    target.write_text(target.read_text(encoding="utf-8") + "\n\n" + added + "\n", encoding="utf-8")
    proc = _lint_imports(src)
    assert proc.returncode != 0, proc.stdout
    assert broken in proc.stdout, proc.stdout
