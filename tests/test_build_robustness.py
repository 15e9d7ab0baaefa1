"""What a build does when something goes wrong after phase 1, and with the files it leaves.

- A dylib that fails in a later phase is evicted with the reason and the cache is laid out again
  without it (its clients follow it out); the result still passes ``verify``.
- Output files are staged and committed together; a failure leaves the folder as it was, and a
  rebuild removes what an earlier cache of the same name owned and the new one does not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, fixture_install_names, snapshot

import dyldcache.builder.optimizers.pack_segments as pack_segments
import dyldcache.builder.pipeline as pipeline
from dyldcache.builder.pipeline import BuildOptions, build_cache
from dyldcache.cache.verify import verify_cache
from dyldcache.errors import BuildError
from dyldcache.macho.file import open_macho


def _clients_of(root: str, victim: str) -> set[str]:
    """Every example dylib that depends on ``victim``, directly or not (from the input files)."""
    deps = {}
    for name in fixture_install_names().values():
        deps[name] = {d.path for d in open_macho(os.path.join(root, name.lstrip("/"))).dylibs}
    out = {victim}
    changed = True
    while changed:
        changed = False
        for name, ds in deps.items():
            if name not in out and ds & out:
                out.add(name)
                changed = True
    return out - {victim}


def test_a_dylib_failing_in_a_later_phase_is_evicted_and_the_rest_rebuilt(
    cache_factory: CacheFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cache_factory.root("arm64")
    victim = "/usr/lib/libfxc.dylib"
    real = pack_segments.apply_split_seg
    calls: list[str] = []

    def failing(dylib, buf):  # type: ignore[no-untyped-def]
        calls.append(dylib.install_name)
        if dylib.install_name == victim:
            raise BuildError("ARM64_ADRP target out of range at split seg location 0x1234")
        return real(dylib, buf)

    monkeypatch.setattr(pack_segments, "apply_split_seg", failing)
    result = build_cache(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=root, jobs=1))
    reasons = {e.path: e.reason for e in result.evictions}
    assert reasons[victim] == "ARM64_ADRP target out of range at split seg location 0x1234"
    clients = _clients_of(root, victim)
    for c in clients:
        assert reasons[c] == f"Depends on dylib '{victim}' which was evicted from the cache"
    assert sorted(result.dylibs) == sorted(set(fixture_install_names().values()) - clients - {victim})
    assert calls.count(victim) == 1, "the second layout does not include it"
    assert verify_cache(result.files[0]) == []


def test_a_failed_build_leaves_no_staging_folder_and_the_old_cache_intact(
    cache_factory: CacheFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    root = cache_factory.root("arm64")
    build_cache(BuildOptions(arch="arm64", output_dir=str(out), root=root, jobs=1))
    before = snapshot(out)

    def boom(self):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.CacheBuilder, "_check_own_output", boom)
    with pytest.raises(KeyboardInterrupt):
        build_cache(BuildOptions(arch="arm64", output_dir=str(out), root=root, jobs=1))
    assert snapshot(out) == before
    assert sorted(os.listdir(out)) == sorted(before), "no staging folder or temporary file is left"


def test_a_rebuild_removes_files_the_new_cache_does_not_own(
    cache_factory: CacheFactory, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    root = cache_factory.root("arm64")
    multi = build_cache(
        BuildOptions(arch="arm64", output_dir=str(out), root=root, jobs=1, subcache_text_limit=0x2000)
    )
    subcaches = [f for f in multi.files if not f.endswith("arm64")]
    assert subcaches, "the small text limit makes subcaches"
    (out / "unrelated.txt").write_text("mine")
    single = build_cache(BuildOptions(arch="arm64", output_dir=str(out), root=root, jobs=1))
    assert sorted(single.removed) == sorted(subcaches)
    left = sorted(os.listdir(out))
    assert left == sorted(
        [
            "unrelated.txt",
            "dyld_shared_cache_arm64",
            "dyld_shared_cache_arm64.map",
            "dyld_shared_cache_arm64.json",
        ]
    )
    assert verify_cache(single.files[0]) == []


@pytest.mark.parametrize("arch", ["arm64", "arm64e", "x86_64"])
def test_a_rebase_target_outside_the_image_evicts_it(
    cache_factory: CacheFactory, tmp_path: Path, arch: str
) -> None:
    """A 1-byte change in a chained rebase's target (the fuzz finding): the pointer would leave the
    dylib, so it is evicted in phase 1 on every arch, and the rest builds and verifies."""
    from dyldcache.macho.fixups import FixupKind

    root = tmp_path / "root"
    shutil.copytree(cache_factory.root(arch, "ios" if arch == "arm64e" else "macos"), root, symlinks=True)
    victim = root / "usr" / "lib" / "libfxa.dylib"
    data = bytearray(victim.read_bytes())
    image = open_macho(victim)
    rebase = next(r for r in image.fixups.records if r["kind"] == FixupKind.REBASE)
    seg = image.segment_for_address(int(rebase["address"]))
    assert seg is not None
    at = seg.fileoff + int(rebase["address"]) - seg.vmaddr
    del image
    data[at + 3] ^= 0x40  # bit 30 of the target: far past the image in every 64-bit format
    victim.write_bytes(bytes(data))
    platform = "ios" if arch == "arm64e" else "macos"
    result = build_cache(
        BuildOptions(arch=arch, platform=platform, output_dir=str(tmp_path / "out"), root=str(root), jobs=1)
    )
    reasons = {e.path: e.reason for e in result.evictions}
    assert "/usr/lib/libfxa.dylib" in reasons
    assert "rebase target" in reasons["/usr/lib/libfxa.dylib"]
    assert "outside the dylib's segments" in reasons["/usr/lib/libfxa.dylib"]
    assert verify_cache(result.files[0]) == []
