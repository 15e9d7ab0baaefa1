"""What keeps a build's memory bounded (docs/architecture.md, "Memory"), checked where it can
fail:

- slide info encoded window by window and joined (builder/optimizers/slide_info.py) is the blob
  and the chained words that slide info's encoders (cache/slide_info.py) produce for the whole
  mapping at once, for v2 with page extras, v3 and v5;
- a build that encodes slide info and hashes pages for the code signature 16 KiB at a time is
  byte-identical to a normal build (8 MiB windows: one for nearly every test cache);
- the builder process keeps no decoded fixups or split seg info after phase 1, and no bound
  pointers after phase 5 (they are in the scratch files);
- the scratch files go with the staging folder.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from cache_fixtures import CacheFactory

from dyldcache.builder.optimizers import code_sign as code_sign_optimizer
from dyldcache.builder.optimizers import slide_info as slide_info_optimizer
from dyldcache.builder.optimizers.slide_info import join_slide_info
from dyldcache.builder.output import STAGING_PREFIX
from dyldcache.builder.pipeline import BuildOptions, CacheBuilder, build_cache
from dyldcache.cache.reader import DyldCache
from dyldcache.cache.slide_info import (
    CACHE_POINTER_DTYPE,
    encode_slide_info_v2,
    encode_slide_info_v3,
    encode_slide_info_v5,
)
from dyldcache.cache.slide_info_decode import decode_slide_info
from dyldcache.errors import CacheFormatError
from dyldcache.macho.exports_trie import Export
from dyldcache.macho.fixups import Import


def _random_pointers(rng: np.random.Generator, size: int, page: int, version: int) -> np.ndarray:
    """Pointers at random 8-byte slots of a ``size``-byte mapping: dense pages, sparse pages,
    empty pages; targets each version can express (v3/v5: a third authenticated)."""
    slots = np.arange(0, size - 7, 8, dtype=np.uint64)
    dense = (slots // np.uint64(page)) % np.uint64(3) == 0  # every third page nearly full
    keep = np.where(dense, rng.random(len(slots)) < 0.9, rng.random(len(slots)) < 0.02)
    keep &= (slots % np.uint64(page)) <= np.uint64(page - 8)
    off = slots[keep]
    p = np.zeros(len(off), dtype=CACHE_POINTER_DTYPE)
    p["offset"] = off
    base = 0x180000000
    p["target"] = base + rng.integers(0x1000, 1 << 30, len(off), dtype=np.uint64)
    if version in (3, 5):
        auth = rng.random(len(off)) < 0.33
        p["auth"] = auth
        p["key"] = np.where(auth, rng.choice([0, 2], len(off)), 0)
        p["addr_div"] = np.where(auth, rng.integers(0, 2, len(off)), 0)
        p["diversity"] = np.where(auth, rng.integers(0, 1 << 16, len(off)), 0)
        p["high8"] = np.where(auth, 0, rng.integers(0, 256, len(off)))
    else:
        p["high8"] = rng.integers(0, 256, len(off))
    return p


def _encode(version: int, mapping: memoryview, p: np.ndarray, page: int) -> bytes:
    if version == 2:
        # a 2-bit delta field: most pages need several chains (page extras)
        return encode_slide_info_v2(mapping, p, value_add=0, page_size=page, delta_mask=0x0000030000000000)
    if version == 3:
        return encode_slide_info_v3(mapping, p, auth_value_add=0x180000000, page_size=page)
    return encode_slide_info_v5(mapping, p, value_add=0x180000000, page_size=page)


@pytest.mark.parametrize(("version", "page"), [(2, 4096), (3, 4096), (5, 16384)])
def test_windows_joined_are_the_whole_mapping_encoded_at_once(version: int, page: int) -> None:
    rng = np.random.default_rng(version)
    size = 23 * page + page // 2  # the last page is partly outside the mapping
    window = 4 * page
    p = _random_pointers(rng, size, page, version)
    whole_map = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    windowed_map = bytearray(whole_map)
    whole = _encode(version, memoryview(whole_map), p, page)

    blobs = []
    for start in range(0, size, window):
        length = min(window, size - start)
        inside = (p["offset"] >= start) & (p["offset"] < start + length)
        part = p[inside].copy()
        part["offset"] -= np.uint64(start)
        blobs.append(_encode(version, memoryview(windowed_map)[start : start + length], part, page))
    assert len(blobs) == 6
    joined = join_slide_info(version, blobs)

    assert joined == whole
    assert windowed_map == whole_map
    # and the joined blob reads back as the pointers (our decoder of the format)
    got_version, decoded = decode_slide_info(joined, bytes(windowed_map), 0x180000000, "m", 0)
    assert got_version == version
    np.testing.assert_array_equal(np.sort(decoded["offset"]), np.sort(p["offset"]))
    if version == 2:
        assert int.from_bytes(whole[20:24], "little") > 0, "the test must exercise page extras"


def test_v2_extras_index_past_14_bits_is_refused_after_joining() -> None:
    """Each window's extras fit; joined, the last page's index does not (as in one piece)."""
    page = 4096
    blobs = []
    for _ in range(2):
        mapping = bytearray(page * 5000)
        offs = np.array([k * page + d for k in range(5000) for d in (0, 0x100)], dtype=np.uint64)
        p = np.zeros(len(offs), dtype=CACHE_POINTER_DTYPE)
        p["offset"] = offs
        p["target"] = 0x1000
        blobs.append(_encode(2, memoryview(mapping), p, page))
    with pytest.raises(ValueError, match="page extras index 19998 does not fit in 14 bits"):
        join_slide_info(2, blobs)


def _cache_bytes(files: list[str]) -> list[bytes]:
    return [Path(f).read_bytes() for f in files]


@pytest.mark.parametrize("arch", ["arm64", "arm64e", "x86_64"])
def test_one_page_windows_build_the_same_cache(
    cache_factory: CacheFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    root = cache_factory.root(arch)
    normal = build_cache(BuildOptions(arch=arch, output_dir=str(tmp_path / "a"), root=root, jobs=1))
    monkeypatch.setattr(slide_info_optimizer, "MEMORY_WINDOW", 16384)
    monkeypatch.setattr(code_sign_optimizer, "MEMORY_WINDOW", 16384)
    chain = slide_info_optimizer.chain_slide_info
    log = tmp_path / "encoded"  # the windows are encoded in worker processes too

    def counting(cfg: object, mapping: memoryview, off: np.ndarray, value: np.ndarray) -> bytes:
        with open(log, "a") as f:
            f.write(f"{len(mapping)}\n")
        return chain(cfg, mapping, off, value)  # type: ignore[arg-type]

    monkeypatch.setattr(slide_info_optimizer, "chain_slide_info", counting)
    small = build_cache(BuildOptions(arch=arch, output_dir=str(tmp_path / "b"), root=root, jobs=2))
    encoded = [int(n) for n in log.read_text().split()]
    # phase 6 chains 16 KiB windows, several per data region
    assert encoded.count(16384) >= 4, encoded
    assert [os.path.basename(f) for f in small.files] == [os.path.basename(f) for f in normal.files]
    assert _cache_bytes(small.files) == _cache_bytes(normal.files)


def test_the_builder_keeps_no_decoded_fixups_and_no_pointers(
    cache_factory: CacheFactory, tmp_path: Path
) -> None:
    root = cache_factory.root("arm64")
    out = tmp_path / "out"
    builder = CacheBuilder(BuildOptions(arch="arm64", output_dir=str(out), root=root, jobs=1))
    builder.calculate_inputs()
    assert builder.model is not None and builder.model.dylibs
    for d in builder.model.dylibs:
        held = set(vars(d.image)) & {"fixups", "split_seg"}
        assert not held, f"{d.install_name}: {held} decoded in the builder process after phase 1"
    builder.estimate_global_optimizations()
    builder.create_subcaches()
    builder.pre_dylib_emit()
    builder.run_dylib_passes()
    pointers = sum(len(r.bound.pointers) for r in builder.results if r.bound is not None)
    assert pointers == 0, "bound pointers must be in the scratch files, not in the results"
    for d in builder.model.dylibs:
        assert not set(vars(d.image)) & {"fixups", "split_seg"}, d.install_name
    assert builder.output is not None
    scratch = [n for n in os.listdir(builder.output.staging) if n.startswith("scratch.")]
    assert scratch, "the scratch files are in the staging folder"
    builder.post_dylib_emit()
    builder.finalize()
    assert not [n for n in os.listdir(out) if n.startswith(STAGING_PREFIX)], "scratch files left behind"


def test_exports_and_imports_pickle_field_for_field() -> None:
    """Phase 1's workers send every export back; Export and Import pickle through __reduce__."""
    export = Export("_a", 0x4 | 0x8, 0x1234, 0x5678, 3, "_b")
    imp = Import("_c", -3, True)
    for obj in (export, imp):
        back = pickle.loads(pickle.dumps(obj))
        assert back == obj and type(back) is type(obj)
    assert [f.name for f in dataclasses.fields(Export)] == [
        "name",
        "flags",
        "address",
        "resolver",
        "ordinal",
        "import_name",
    ], "Export.__reduce__ lists the fields in this order"
    assert [f.name for f in dataclasses.fields(Import)] == ["name", "ordinal", "weak"]


@pytest.mark.parametrize("arch", ["arm64", "arm64e", "x86_64"])
def test_slide_info_read_window_by_window_is_the_whole_mapping(
    cache_factory: CacheFactory, tmp_path: Path, arch: str
) -> None:
    """CacheFile.slide_info_windows (what verify uses) against slide_info (one decode)."""
    root = cache_factory.root(arch)
    built = build_cache(BuildOptions(arch=arch, output_dir=str(tmp_path), root=root, jobs=1))
    windows_seen = 0
    with DyldCache.open(built.files[0]) as cache:
        for f in cache.files:
            for i in range(len(f.mappings)):
                whole = f.slide_info(i)
                if whole is None:
                    continue
                parts = list(f.slide_info_windows(i, window=16384))
                windows_seen += len(parts)
                np.testing.assert_array_equal(np.concatenate(parts), whole[1])
    assert windows_seen >= 4, "the data mappings must span several 16 KiB windows"


def test_a_broken_chain_in_a_later_window_reports_what_the_whole_decode_reports(
    cache_factory: CacheFactory, tmp_path: Path
) -> None:
    root = cache_factory.root("arm64")
    built = build_cache(BuildOptions(arch="arm64", output_dir=str(tmp_path), root=root, jobs=1))
    path = built.files[0]
    with DyldCache.open(path) as cache:
        f = cache.files[0]
        k, m = next((k, m) for k, m in enumerate(f.mappings) if m.slide_info_size and m.size > 0x8000)
        first = m.slide_info_offset + 40  # v2: the page starts follow the 40-byte header
        starts = np.frombuffer(bytes(f.data[first : first + 2 * (m.size // 4096)]), "<u2")
        page = int(np.flatnonzero((starts != 0x4000) & (np.arange(len(starts)) >= 5))[0])
        at = first + 2 * page
    raw = bytearray(Path(path).read_bytes())
    raw[at : at + 2] = (0x3FF).to_bytes(2, "little")  # a chain start past its page
    Path(path).write_bytes(bytes(raw))
    with DyldCache.open(path) as cache:
        f = cache.files[0]
        with pytest.raises(CacheFormatError) as whole:
            f.slide_info(k)
        with pytest.raises(CacheFormatError) as windowed:
            list(f.slide_info_windows(k, window=16384))
    assert str(windowed.value) == str(whole.value)
    assert "outside its page" in str(whole.value)
