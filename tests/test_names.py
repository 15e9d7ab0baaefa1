"""Names that are not UTF-8 (symbol names, install paths, file names in a root) go through the
builder and the commands as bytes: the cache holds exactly the input bytes, people see ``\\xNN``,
JSON stays valid, and nothing fails on a strict UTF-8 stdout.

The inputs are the example dylibs with one byte of one name changed to 0xEB (never valid UTF-8
on its own), the way a fuzzer's 1-byte mutation does it, in every place that holds the name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, RawCache, emulate_calls
from conftest import run_cli

NAME = b"_fxa_apply\0"
#: the same name with its 8th byte (the first 'p' of "apply") replaced
ODD = b"_fxa_a\xebply\0"
ODD_TEXT = "_fxa_a\\xebply"
ODD_ALIAS = b"libfx\xeb.dylib"


def _rename_everywhere(path: Path, *, exporter: bool) -> int:
    """Replace NAME by ODD in the file (string table, fixup symbol pool) and, in the dylib that
    exports it, in its export trie, whose key for it ends in the label "pply" after "_fxa_" "a"."""
    data = path.read_bytes()
    count = data.count(NAME)
    data = data.replace(NAME, ODD)
    if exporter:
        # the label starts right after its node's child count, not after a letter
        data, n = re.subn(rb"(?<![A-Za-z_])pply\0", b"\xebply\0", data)
        assert n == 1, "exactly one trie label 'pply'"
    path.write_bytes(data)
    return count


@pytest.fixture(scope="module")
def odd_root(cache_factory: CacheFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("odd-names")
    root = base / "root"
    shutil.copytree(cache_factory.root("arm64"), root, symlinks=True)
    lib = root / "usr" / "lib"
    assert _rename_everywhere(lib / "libfxa.dylib", exporter=True) > 0
    clients = [p for p in sorted(lib.glob("*.dylib")) if p.name != "libfxa.dylib" and NAME in p.read_bytes()]
    assert any(p.name == "libfxb.dylib" for p in clients)
    for p in clients:
        _rename_everywhere(p, exporter=False)
    os.symlink(b"libfxc.dylib", os.path.join(os.fsencode(lib), ODD_ALIAS))
    return root


def _strict_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")


def test_a_name_that_is_not_utf8_survives_the_build(
    odd_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _strict_utf8(monkeypatch)
    out = tmp_path / "out"
    proc = run_cli("build", "--arch", "arm64", "--json", "-o", str(out), "--root", str(odd_root))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["evictions"] == []
    main = doc["files"][0]
    cache = Path(main).read_bytes()
    assert ODD in cache, "the odd name is in the cache as its own bytes"
    raw = RawCache(main)
    trie = raw.read(raw.main.field("dylibsTrieAddr"), raw.main.field("dylibsTrieSize"))
    assert b"\xeb.dylib" in trie, "the alias is in the dylibs trie as its own bytes"
    # the JSON map is valid JSON and shows the byte as \xNN
    json_map = json.loads(Path(main + ".json").read_text(encoding="ascii"))
    assert json_map["images"]
    # the bind through the odd name is made: libfxb's call into libfxa returns what gcc computes
    run = emulate_calls(main, "arm64", 0x4000)
    wrong = {k: v for k, v in run.mismatches.items() if k[1] != "fxa_apply"}
    assert wrong == {}
    assert any(k[1] == "fxa_apply" for k in run.mismatches), "fxa_apply is no longer exported by that name"


def test_commands_print_odd_names_escaped(
    odd_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _strict_utf8(monkeypatch)
    dylib = str(odd_root / "usr" / "lib" / "libfxa.dylib")
    text = run_cli("macho", dylib)
    assert text.returncode == 0, text.stderr
    assert ODD_TEXT in text.stdout
    as_json = run_cli("macho", "--json", dylib)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert ODD_TEXT in json.dumps(doc, ensure_ascii=False).replace("\\\\", "\\")
    out = tmp_path / "out"
    built = run_cli("build", "--arch", "arm64", "-q", "-o", str(out), "--root", str(odd_root))
    assert built.returncode == 0, built.stderr
    listing = run_cli("list", "--json", str(out / "dyld_shared_cache_arm64"))
    assert listing.returncode == 0, listing.stderr
    json.loads(listing.stdout)
    verify = run_cli("verify", str(out / "dyld_shared_cache_arm64"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
