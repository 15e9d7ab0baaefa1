"""Smoke test of the benchmark corpus (benchmarks/make_corpus.py): a small corpus builds into a
cache that holds every generated dylib. The benchmark itself is too heavy for the test suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dyldcache.builder.pipeline import BuildOptions, build_cache
from dyldcache.cache.reader import DyldCache
from dyldcache.macho.file import open_macho

REPO = Path(__file__).resolve().parent.parent
MAKE_CORPUS = REPO / "benchmarks" / "make_corpus.py"


def _make_corpus(arch: str, root: Path, count: int, seed: int) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    manifest = root.parent / "manifest.json"
    cmd = [sys.executable, str(MAKE_CORPUS), "--arch", arch, "--root", str(root), "--count", str(count)]
    cmd += ["--seed", str(seed), "--jobs", "1", "--manifest", str(manifest), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(manifest, encoding="utf-8") as f:
        data: dict[str, object] = json.load(f)
    return data


def _macho_files(root: Path) -> set[str]:
    """Install paths of the regular Mach-O files under ``root`` (symlinks excluded)."""
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if p.is_symlink():
                continue
            with open(p, "rb") as f:
                if f.read(4) == b"\xcf\xfa\xed\xfe":
                    found.add("/" + p.relative_to(root).as_posix())
    return found


@pytest.mark.parametrize("arch", ["arm64", "x86_64"])
def test_small_corpus_builds_into_a_complete_cache(tmp_path: Path, arch: str) -> None:
    root = tmp_path / "root"
    manifest = _make_corpus(arch, root, 20, seed=7)
    dylibs = manifest["dylibs"]
    assert isinstance(dylibs, list)
    names = [str(d["install_name"]) for d in dylibs]
    assert len(names) == len(set(names)) == 20
    # the generator reports exactly the files it wrote, each at its install name
    assert _macho_files(root) == set(names)
    for name in names:
        assert open_macho(root / name.lstrip("/")).install_name == name
    # and the generated dylibs depend on each other, not only on libSystem
    generated = [d for d in dylibs if d["kind"] != "example"]
    generated_names = {str(d["install_name"]) for d in generated}
    edges = [
        (str(d["install_name"]), ref.path, ref.kind)
        for d in generated
        for ref in open_macho(root / str(d["install_name"]).lstrip("/")).dylibs
        if ref.kind != "id"
    ]
    assert all(target in names for _, target, _ in edges)
    assert any(target in generated_names for _, target, _ in edges)

    out = tmp_path / "cache"
    result = build_cache(BuildOptions(arch, str(out), root=str(root), jobs=2))
    assert result.evictions == []
    with DyldCache.open(result.files[0]) as cache:
        assert cache.arch == arch
        images = cache.images
        paths = {img.path for img in images}
        # every generated dylib is in the cache; anything else listed is one of the symlinks
        assert set(names) <= paths
        aliases = manifest["aliases"]
        assert isinstance(aliases, dict)
        assert paths - set(names) <= set(aliases)
        assert len({img.address for img in images}) == len(names)
        for img in images:
            if img.path in names:
                assert cache.image_macho(img.index).install_name == img.path
