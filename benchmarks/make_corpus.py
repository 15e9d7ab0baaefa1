#!/usr/bin/env python3
"""Generates the benchmark corpus: a root filesystem of N dylibs for ``dyldcache build --root``,
linked by dyldcache's own linker from committed clang-22 objects (no compiler needed).

Sources of objects:

- the example objects (``src/dyldcache/examples/obj/<arch>``), linked once each as shipped
  (libSystem, libfxa..libfxd, libobjc, libfxobjc), plus renamed copies of ``liba.o``, whose
  48 KiB pointer table makes a realistic big, rebase-heavy chunk;
- the templates in ``benchmarks/objects/<arch>`` (sources in ``benchmarks/src``): ``code``
  (machine code and an exported API), ``data`` (pointer tables) and ``client`` (imports of the
  API of three other ``code`` copies).

Each template names its external symbols with a fixed token (``Zc0000_`` ...). A copy of an
object is the same bytes with the tokens replaced, in the string table only, by tokens of the
same length: one template gives any number of copies whose symbols do not collide, so a dylib
can link many copies together, and a ``client`` copy's imports can be pointed at the ``code``
copies of earlier dylibs, which become its dependencies (binds across dylibs).

The corpus is deterministic for given (arch, count, scale, seed): the plan comes from one
seeded RNG and the linker's output depends only on its inputs.

    python benchmarks/make_corpus.py --arch arm64 --root /tmp/corpus/root [--count 600]
        [--scale 1.0] [--seed 1] [--jobs N] [--manifest FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
try:
    import dyldcache  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

from dyldcache.examples import EXAMPLE_DYLIBS, OBJ_DIR, link_examples  # noqa: E402
from dyldcache.link.linker import LinkInput, LinkOptions, link  # noqa: E402
from dyldcache.macho import constants as C  # noqa: E402
from dyldcache.macho.file import parse_macho  # noqa: E402

sys.path.insert(0, str(HERE))
import derive  # noqa: E402

#: bump when the plan or the templates change, so that run.py regenerates cached corpora
GENERATOR_VERSION = 2
#: generated dylibs linked at most; the rest of --count are copies of them (derive.py)
DEFAULT_DISTINCT = 256
ARCHS = ("arm64", "arm64e", "x86_64")
OBJECTS_DIR = HERE / "objects"
LIBSYSTEM = "/usr/lib/libSystem.B.dylib"
KIB = 1024
MIB = 1024 * 1024
#: generated dylibs' sizes are drawn in [MIN_SIZE, MAX_SIZE] (times --scale)
MIN_SIZE = 20 * KIB
MAX_SIZE = 2 * MIB


@dataclass(frozen=True, slots=True)
class Template:
    """One object the generator copies: its own symbol token and the tokens of its imports."""

    name: str
    path: Path
    own: bytes
    imports: tuple[bytes, ...] = ()

    @property
    def token_letter(self) -> str:
        """The letter after "Z" in the template's own token (c, d, e): copies keep it, so that
        copies of different templates never share a token."""
        return chr(self.own[1])


def templates(arch: str) -> dict[str, Template]:
    return {
        "code": Template("code", OBJECTS_DIR / arch / "tpl_code.o", b"Zc0000_"),
        "data": Template("data", OBJECTS_DIR / arch / "tpl_data.o", b"Zd0000_"),
        "client": Template(
            "client", OBJECTS_DIR / arch / "tpl_client.o", b"Ze0000_", (b"Zi0001_", b"Zi0002_", b"Zi0003_")
        ),
        # the example liba.o: every one of its own symbols starts with "fxa_"
        "liba": Template("liba", OBJ_DIR / arch / "liba.o", b"fxa_"),
    }


# ---- renaming copies of an object ----------------------------------------------------------------


def _strtab_range(data: bytes, path: str) -> tuple[int, int]:
    """(offset, size) of a 64-bit Mach-O object's string table (from LC_SYMTAB)."""
    magic, ncmds = struct.unpack_from("<I12xI", data, 0)
    if magic != 0xFEEDFACF:
        raise SystemExit(f"{path}: not a 64-bit Mach-O object")
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x2:  # LC_SYMTAB
            _symoff, _nsyms, stroff, strsize = struct.unpack_from("<IIII", data, off + 8)
            return stroff, strsize
        off += size
    raise SystemExit(f"{path}: no LC_SYMTAB")


class Renamer:
    """Makes copies of one template object with its tokens replaced in the string table."""

    def __init__(self, tpl: Template) -> None:
        self.tpl = tpl
        self.data = tpl.path.read_bytes()
        self.tokens = (tpl.own, *tpl.imports)
        self.strtab = _strtab_range(self.data, str(tpl.path))
        self.pattern = re.compile(b"|".join(re.escape(t) for t in self.tokens))
        self._check()

    def copy(self, own: bytes, imports: Sequence[bytes] = ()) -> bytes:
        mapping = dict(zip(self.tokens, (own, *imports), strict=True))
        for old, new in mapping.items():
            assert len(old) == len(new), (old, new)
        off, size = self.strtab
        table = self.pattern.sub(lambda m: mapping[m.group()], self.data[off : off + size])
        return self.data[:off] + table + self.data[off + size :]

    def _check(self) -> None:
        """A token must only ever occur inside whole symbol names (no tail-shared strings
        cut through it), so that replacing it renames exactly the symbols that contain it."""
        off, size = self.strtab
        if self.pattern.search(self.data[:off] + self.data[off + size :]):
            raise SystemExit(f"{self.tpl.path}: a rename token occurs outside the string table")
        if not self.pattern.search(self.data[off : off + size]):
            raise SystemExit(f"{self.tpl.path}: no symbol carries the token {self.tpl.own!r}")
        probes = [bytes([0x51 + i]) * len(t) for i, t in enumerate(self.tokens)]  # "QQQQ...", "RRR..."
        before = parse_macho(self.data, str(self.tpl.path)).symbol_table.names()
        after = parse_macho(self.copy(probes[0], probes[1:]), str(self.tpl.path)).symbol_table.names()
        expect = before
        for t, p in zip(self.tokens, probes, strict=True):
            expect = [n.replace(t.decode(), p.decode()) for n in expect]
        if after != expect:
            raise SystemExit(f"{self.tpl.path}: renaming its tokens does not rename exactly its symbols")


def _base36(n: int, width: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = digits[r] + out
    if n:
        raise SystemExit("too many template copies for the token width")
    return out


def copy_token(tpl: Template, serial: int) -> str:
    """The token of copy number ``serial`` of ``tpl`` (same length as the template's own)."""
    if tpl.name == "liba":
        return "Y" + _base36(serial, 3)  # replaces "fxa_": _fxa_counter -> _Y00acounter
    return "Z" + tpl.token_letter + _base36(serial, 4) + "_"


# ---- the plan --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Unit:
    template: str
    own: str
    imports: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DylibPlan:
    index: int
    install_name: str
    wave: int
    target_size: int
    units: list[Unit] = field(default_factory=list)
    #: (install name, mode) in link order; mode as LinkInput.mode
    deps: list[tuple[str, str]] = field(default_factory=list)
    #: folders (install paths) where the linker finds dylibs re-exported by a dependency
    search_paths: list[str] = field(default_factory=list)
    #: (link install path, target relative to the link's folder)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    umbrella: bool = False
    #: the made-up word of the install name, and its folder ("" for /usr/lib)
    word: str = ""
    folder: str = ""


#: consonant-vowel syllables for made-up library names
_SYLLABLES = (*(c + v for c in "bcdfghklmnprstvz" for v in "aeiou"), "an", "el", "in", "or", "us")


def install_path(word: str, folder: str) -> tuple[str, list[tuple[str, str]]]:
    """(install name, symlinks) of the dylib named ``word``: ``/usr/lib/lib<word>.dylib`` when
    ``folder`` is empty, else a framework in ``/System/Library/<folder>``."""
    if not folder:
        return f"/usr/lib/lib{word}.dylib", []
    name = word.capitalize()
    fw = f"/System/Library/{folder}/{name}.framework"
    # the usual bundle layout: Foo.framework/Foo -> Versions/Current/Foo, Current -> A
    links = [(f"{fw}/Versions/Current", "A"), (f"{fw}/{name}", f"Versions/Current/{name}")]
    return f"{fw}/Versions/A/{name}", links


class Planner:
    """Draws the corpus: install names, sizes, units and the dependency graph."""

    def __init__(self, arch: str, count: int, scale: float, seed: int, unit_sizes: dict[str, int]) -> None:
        self.rng = random.Random(seed)
        self.count = count
        self.scale = scale
        self.unit_sizes = unit_sizes
        self.serials = dict.fromkeys(TEMPLATE_SHAPES, 0)
        self.words: set[str] = set()

    def _word(self, length: int | None = None, rng: random.Random | None = None) -> str:
        """A new word of 2-4 syllables (``length // 2`` when given), drawn with ``rng``."""
        rng = rng or self.rng
        while True:
            n = length // 2 if length is not None else rng.randint(2, 4)
            w = "".join(rng.choice(_SYLLABLES) for _ in range(n))
            if w not in self.words:
                self.words.add(w)
                return w

    def _install_name(self, framework: bool) -> tuple[str, str, str, list[tuple[str, str]]]:
        """(install name, word, folder, symlinks) of a new dylib."""
        w = self._word()
        folder = ""
        if framework:
            folder = "Frameworks" if self.rng.random() < 0.65 else "PrivateFrameworks"
        name, links = install_path(w, folder)
        return name, w, folder, links

    def copy_name(self, plan: DylibPlan, rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
        """(install name, symlinks) for a copy of ``plan``: a new word of the same length in the
        same folder, so that the name is as long as the original's."""
        return install_path(self._word(len(plan.word), rng), plan.folder)

    def _size(self) -> int:
        if self.rng.random() < 0.04:  # the few big frameworks
            size = self.rng.uniform(1.0, 2.0) * MIB
        else:  # log-normal, median 80 KiB
            size = math.exp(self.rng.gauss(math.log(80 * KIB), 0.9))
        return int(min(max(size, MIN_SIZE), MAX_SIZE) * self.scale)

    def _unit(self, name: str, imports: list[str] | None = None) -> Unit:
        serial = self.serials[name]
        self.serials[name] += 1
        return Unit(name, copy_token(TEMPLATE_SHAPES[name], serial), imports or [])

    def plan(self) -> list[DylibPlan]:
        generated = self.count - len(EXAMPLE_DYLIBS)
        waves = min(16, max(2, generated // 8))
        per_wave = -(-generated // waves)
        plans: list[DylibPlan] = []
        #: code copies of dylibs in earlier waves: (dylib index, token)
        providers: list[tuple[int, str]] = []
        #: install name -> umbrella that re-exports it (earlier waves only)
        umbrella_of: dict[str, DylibPlan] = {}
        wave_start = 0
        for g in range(generated):
            wave = g // per_wave
            if g == wave * per_wave and g:
                # everything before this wave is linked before it starts: usable as a dependency
                for p in plans[wave_start:]:
                    providers += [(p.index, u.own) for u in p.units if u.template == "code"]
                    if p.umbrella:
                        for dep, mode in p.deps:
                            if mode == "reexport":
                                umbrella_of.setdefault(dep, p)
                wave_start = len(plans)
            umbrella = wave > 0 and self.rng.random() < 0.04
            name, word, folder, links = self._install_name(umbrella or self.rng.random() < 0.45)
            plan = DylibPlan(
                g, name, wave, self._size(), symlinks=links, umbrella=umbrella, word=word, folder=folder
            )
            self._fill(plan, plans, providers, umbrella_of)
            plans.append(plan)
        return plans

    def _pick_dylib(self, plans: list[DylibPlan], limit: int) -> DylibPlan:
        # squared uniform: early (foundational) dylibs get many more clients than late ones
        return plans[int(limit * self.rng.random() ** 2)]

    def _fill(
        self,
        plan: DylibPlan,
        plans: list[DylibPlan],
        providers: list[tuple[int, str]],
        umbrella_of: dict[str, DylibPlan],
    ) -> None:
        rng = self.rng
        target = plan.target_size
        est = self.unit_sizes["base"]
        deps: list[tuple[str, str]] = []
        searches: set[str] = set()

        def need(dep: DylibPlan) -> None:
            # sometimes reach a re-exported dylib through its umbrella, as clients of a
            # framework do (the linker binds to the umbrella's ordinal)
            u = umbrella_of.get(dep.install_name)
            if u is not None and rng.random() < 0.6:
                searches.update(os.path.dirname(d) for d, m in u.deps if m == "reexport")
                dep = u
            if all(d != dep.install_name for d, _ in deps):
                deps.append((dep.install_name, "load"))

        plan.units.append(self._unit("code"))
        est += self.unit_sizes["code"]
        if providers:
            nclients = 1 + min(5, target // (160 * KIB)) + (rng.random() < 0.3)
            for _ in range(nclients):
                tokens = []
                for _ in range(3):
                    # early providers are picked more often (a few hubs, many leaves)
                    idx, token = providers[int(len(providers) * rng.random() ** 2)]
                    tokens.append(token)
                    need(plans[idx])
                plan.units.append(self._unit("client", tokens))
                est += self.unit_sizes["client"]
        if plan.umbrella:
            # re-exported dylibs: a dylib linked twice keeps its first mode, so a re-export
            # replaces a plain dependency on the same dylib
            earlier = [p for p in plans if not p.umbrella and p.wave < plan.wave]
            for dep in rng.sample(earlier, min(len(earlier), rng.randint(2, 4))):
                deps = [(d, m) for d, m in deps if d != dep.install_name]
                deps.append((dep.install_name, "reexport"))
        if target >= 300 * KIB and rng.random() < 0.6:
            for _ in range(int(target * rng.uniform(0.15, 0.4)) // self.unit_sizes["liba"]):
                plan.units.append(self._unit("liba"))
                est += self.unit_sizes["liba"]
        while est < target:
            name = "code" if rng.random() < 0.7 else "data"
            plan.units.append(self._unit(name))
            est += self.unit_sizes[name]
        rng.shuffle(plan.units)
        # some dependencies the dylib does not use, as real ones have: earlier generated
        # dylibs and a few of the examples
        earlier = [p for p in plans if p.wave < plan.wave]
        for _ in range(rng.randint(0, 3)):
            if earlier and rng.random() < 0.7:
                dep_name = self._pick_dylib(earlier, len(earlier)).install_name
            else:
                dep_name = rng.choice(
                    ("/usr/lib/libfxa.dylib", "/usr/lib/libfxc.dylib", "/usr/lib/libobjc.A.dylib")
                )
            if all(d != dep_name for d, _ in deps):
                deps.append((dep_name, "load"))
        rng.shuffle(deps)
        deps.append((LIBSYSTEM, "load"))
        plan.deps = deps
        plan.search_paths = sorted(searches)


#: template shapes (names and tokens do not depend on the arch)
TEMPLATE_SHAPES = templates("arm64")


# ---- linking -----------------------------------------------------------------------------------------

Log = Callable[[str], None] | None
#: how a dependency is linked, by its load command (as LinkInput.mode)
_MODES = {
    C.LC_LOAD_DYLIB: "load",
    C.LC_LOAD_WEAK_DYLIB: "weak",
    C.LC_REEXPORT_DYLIB: "reexport",
    C.LC_LOAD_UPWARD_DYLIB: "upward",
    C.LC_LAZY_LOAD_DYLIB: "lazy",
}

_RENAMERS: dict[str, Renamer] = {}
_JOB: dict[str, str] = {}


def _host(root: str, install_path: str) -> str:
    return os.path.join(root, install_path.lstrip("/"))


def _link_one(plan: DylibPlan) -> tuple[int, int, float]:
    """Link one planned dylib (in a worker); returns (index, size, seconds)."""
    t0 = time.perf_counter()
    arch, root, scratch = _JOB["arch"], _JOB["root"], _JOB["scratch"]
    out = _host(root, plan.install_name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f"d{plan.index}-", dir=scratch)
    try:
        inputs = []
        for k, u in enumerate(plan.units):
            path = os.path.join(folder, f"{k}-{u.template}.o")
            with open(path, "wb") as f:
                f.write(_RENAMERS[u.template].copy(u.own.encode(), [t.encode() for t in u.imports]))
            inputs.append(LinkInput(path))
        inputs += [LinkInput(_host(root, d), mode) for d, mode in plan.deps]
        link(
            LinkOptions(
                arch=arch,
                output=out,
                install_name=plan.install_name,
                inputs=inputs,
                search_paths=[_host(root, s) for s in plan.search_paths],
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for link_path, target in plan.symlinks:
        host = _host(root, link_path)
        if not os.path.lexists(host):
            os.symlink(target, host)
    return plan.index, os.path.getsize(out), time.perf_counter() - t0


def _load_renamers(arch: str) -> dict[str, Renamer]:
    return {name: Renamer(t) for name, t in templates(arch).items()}


def _unit_sizes(arch: str, renamers: dict[str, Renamer]) -> dict[str, int]:
    """Bytes one copy of each template adds to a linked dylib (and "base": the rest of a dylib
    with one code copy), measured by linking a few small dylibs, so that planned sizes hold
    whatever the arch's page size and the linker's output."""
    Copy = tuple[str, bytes, list[bytes]]
    apis = [f"Zc000{k}_".encode() for k in range(3)]

    def copies(name: str, n: int, first: int = 100) -> list[Copy]:
        tpl = TEMPLATE_SHAPES[name]
        return [(name, copy_token(tpl, first + k).encode(), apis if tpl.imports else []) for k in range(n)]

    with tempfile.TemporaryDirectory(prefix="dyldcache-calibrate-") as tmp:

        def linked(name: str, units: list[Copy], deps: list[str]) -> str:
            inputs = []
            for k, (tpl, own, imports) in enumerate(units):
                path = os.path.join(tmp, f"{name}-{k}.o")
                with open(path, "wb") as f:
                    f.write(renamers[tpl].copy(own, imports))
                inputs.append(LinkInput(path))
            out = os.path.join(tmp, f"{name}.dylib")
            inputs += [LinkInput(d) for d in deps]
            link(LinkOptions(arch=arch, output=out, install_name=f"/usr/lib/{name}.dylib", inputs=inputs))
            return out

        libsystem = os.path.join(tmp, "libSystem.B.dylib")
        obj = str(OBJ_DIR / arch / "libsystem.o")
        link(LinkOptions(arch=arch, output=libsystem, install_name=LIBSYSTEM, inputs=[LinkInput(obj)]))
        provider = linked("provider", [("code", t, []) for t in apis], [libsystem])
        one = os.path.getsize(linked("one", copies("code", 1), [libsystem]))
        out = {}
        for name, n in (("code", 12), ("data", 12), ("client", 12), ("liba", 3)):
            path = linked(name, copies("code", 1) + copies(name, n, 200), [provider, libsystem])
            out[name] = (os.path.getsize(path) - one) // n
        out["base"] = one - out["code"]
    return out


@dataclass(slots=True)
class Corpus:
    arch: str
    count: int
    scale: float
    seed: int
    root: str
    generator_version: int
    seconds: float
    total_bytes: int
    #: every dylib of the corpus: install name, size, how it was made
    dylibs: list[dict[str, object]]
    #: symlinks (install path -> the path it resolves to); those to files are aliases in the cache
    aliases: dict[str, str]
    #: generated dylibs that were linked (the others are copies of them, derive.py)
    distinct: int = 0
    #: seconds spent linking (0 when the linked dylibs came from a --bases folder made earlier)
    link_seconds: float = 0.0
    #: seconds spent writing the copies
    derive_seconds: float = 0.0

    @property
    def install_names(self) -> list[str]:
        return [str(d["install_name"]) for d in self.dylibs]


def _link_plans(
    arch: str, root: str, plans: list[DylibPlan], renamers: dict[str, Renamer], jobs: int, log: Log
) -> dict[int, int]:
    """Link the examples and every planned dylib into ``root``; the planned dylibs' sizes."""
    link_examples(arch, root)
    sizes: dict[int, int] = {}
    scratch = tempfile.mkdtemp(prefix="dyldcache-corpus-")
    _RENAMERS.clear()
    _RENAMERS.update(renamers)
    _JOB.update(arch=arch, root=os.path.abspath(root), scratch=scratch)
    try:
        ctx = (
            multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        )
        if jobs > 1 and ctx is not None:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                _link_in_dependency_order(pool, jobs, plans, sizes, log)
        else:
            for p in plans:  # plans come in dependency order
                sizes[p.index] = _link_one(p)[1]
                if log is not None and len(sizes) % 50 == 0:
                    log(f"{len(sizes)}/{len(plans)} dylibs linked")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _RENAMERS.clear()
        _JOB.clear()
    return sizes


def _link_in_dependency_order(
    pool: ProcessPoolExecutor, jobs: int, plans: list[DylibPlan], sizes: dict[int, int], log: Log
) -> None:
    """Link every plan in ``pool`` as soon as the dylibs it links against are written, the
    biggest ready one first (so that the big frameworks do not finish last alone). The output
    does not depend on the order: each link reads only finished files."""
    by_name = {p.install_name: p.index for p in plans}
    plan_of = {p.index: p for p in plans}
    waiting = {p.index: {by_name[d] for d, _mode in p.deps if d in by_name} for p in plans}
    dependents: dict[int, list[int]] = {}
    for index, needs in waiting.items():
        for n in needs:
            dependents.setdefault(n, []).append(index)
    ready = [p for p in plans if not waiting[p.index]]
    running: dict[Future[tuple[int, int, float]], int] = {}
    while ready or running:
        ready.sort(key=lambda p: (p.target_size, -p.index))
        while ready and len(running) < 2 * jobs:
            p = ready.pop()
            running[pool.submit(_link_one, p)] = p.index
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            del running[future]
            index, size, _secs = future.result()
            sizes[index] = size
            for d in dependents.get(index, []):
                waiting[d].discard(index)
                if not waiting[d]:
                    ready.append(plan_of[d])
            if log is not None and len(sizes) % 50 == 0:
                log(f"{len(sizes)}/{len(plans)} dylibs linked")


def _bases_key(arch: str, scale: float, seed: int, nbase: int) -> dict[str, object]:
    return {"arch": arch, "scale": scale, "seed": seed, "distinct": nbase, "version": GENERATOR_VERSION}


def _linked_bases(
    arch: str,
    folder: str,
    scale: float,
    seed: int,
    plans: list[DylibPlan],
    renamers: dict[str, Renamer],
    jobs: int,
    log: Log,
) -> tuple[dict[int, int], float]:
    """The linked dylibs in ``folder``, linked now unless a link of the same plan is there:
    (sizes, seconds spent linking now)."""
    stamp = folder.rstrip("/") + ".json"
    key = _bases_key(arch, scale, seed, len(plans))
    try:
        with open(stamp, encoding="utf-8") as f:
            done = json.load(f)
        if done["key"] == key and all(
            os.path.getsize(_host(folder, p.install_name)) == done["sizes"][str(p.index)] for p in plans
        ):
            return {int(k): v for k, v in done["sizes"].items()}, 0.0
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    sizes = _link_plans(arch, folder, plans, renamers, jobs, log)
    seconds = time.perf_counter() - t0
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump({"key": key, "sizes": sizes, "seconds": seconds}, f)
    return sizes, seconds


def count_for_size(
    arch: str,
    target_bytes: int,
    bases: str,
    scale: float = 1.0,
    seed: int = 1,
    distinct: int = DEFAULT_DISTINCT,
    jobs: int = 0,
    log: Log = None,
) -> int:
    """The --count whose corpus holds about ``target_bytes`` of dylibs: the examples, the
    ``distinct`` linked dylibs (linked into ``bases`` now unless they are there) and as many
    copies as the rest needs at the linked dylibs' mean size."""
    renamers = _load_renamers(arch)
    plans = Planner(arch, distinct + len(EXAMPLE_DYLIBS), scale, seed, _unit_sizes(arch, renamers)).plan()
    sizes, _seconds = _linked_bases(
        arch, bases, scale, seed, plans, renamers, jobs or os.cpu_count() or 1, log
    )
    fixed = sum(sizes.values()) + sum(os.path.getsize(_host(bases, d.install_name)) for d in EXAMPLE_DYLIBS)
    if target_bytes < fixed:
        raise SystemExit(
            f"{target_bytes / MIB:.0f} MiB is less than the {distinct} linked dylibs alone "
            f"({fixed / MIB:.0f} MiB): lower --distinct or --scale"
        )
    mean = sum(sizes.values()) / len(sizes)
    return len(EXAMPLE_DYLIBS) + len(sizes) + round((target_bytes - fixed) / mean)


def _mirror(src: str, dst: str) -> None:
    """Hard links (copies where that fails) of every file under ``src`` in ``dst``; symlinks
    are made again."""
    for dirpath, _dirs, files in os.walk(src):
        out_dir = os.path.join(dst, os.path.relpath(dirpath, src))
        os.makedirs(out_dir, exist_ok=True)
        for name in files:
            a, b = os.path.join(dirpath, name), os.path.join(out_dir, name)
            if os.path.islink(a):
                os.symlink(os.readlink(a), b)
            else:
                try:
                    os.link(a, b)
                except OSError:
                    shutil.copyfile(a, b)
    for dirpath, dirs, _files in os.walk(src):  # symlinks to folders (Versions/Current)
        for name in dirs:
            a = os.path.join(dirpath, name)
            b = os.path.join(dst, os.path.relpath(a, src))
            if os.path.islink(a) and not os.path.lexists(b):
                os.symlink(os.readlink(a), b)


def _token_owners(plans: list[DylibPlan]) -> Callable[[bytes], str | None]:
    """``owner_of(symbol name)``: the install name of the planned dylib whose units define it."""
    owners = {u.own.encode(): p.install_name for p in plans for u in p.units}
    # a token's first letter tells its length: "Zc0000_" (7), "Y000" (4)
    lengths = {ord(tok[0]): len(tok) for tok in (copy_token(t, 0) for t in TEMPLATE_SHAPES.values())}

    def owner_of(name: bytes) -> str | None:
        n = lengths.get(name[1]) if len(name) > 1 else None
        return owners.get(name[1 : 1 + n]) if n else None

    return owner_of


def _derive(
    root: str,
    planner: Planner,
    plans: list[DylibPlan],
    copies: int,
    seed: int,
) -> list[tuple[DylibPlan, derive.Node, list[tuple[str, str]]]]:
    """Write ``copies`` copies of the linked ``plans`` into ``root`` (derive.py)."""
    rng = random.Random(f"derive {seed}")
    order = rng.sample(range(len(plans)), len(plans))
    names: list[tuple[int, str]] = []
    links: dict[str, list[tuple[str, str]]] = {}
    for j in range(copies):
        k = order[j % len(plans)]
        name, symlinks = planner.copy_name(plans[k], rng)
        names.append((k, name))
        links[name] = symlinks
    owner_of = _token_owners(plans)
    data = {}
    templates = []
    for p in plans:
        path = _host(root, p.install_name)
        with open(path, "rb") as f:
            data[p.install_name] = f.read()
        templates.append(derive.read_template(data[p.install_name], path, owner_of))
    examples = [d.install_name for d in EXAMPLE_DYLIBS]
    nodes = derive.plan_nodes(templates, examples, names, rng.choice)
    made = []
    by_base = {p.install_name: (p, t) for p, t in zip(plans, templates, strict=True)}
    for node in sorted(nodes, key=lambda n: (n.base, n.variant)):
        p, t = by_base[node.base]
        derive.write_copy(data[node.base], t, node, _host(root, node.install_name))
        for link_path, target in links[node.install_name]:
            host = _host(root, link_path)
            if not os.path.lexists(host):
                os.symlink(target, host)
        made.append((p, node, links[node.install_name]))
    return made


def make_corpus(
    arch: str,
    root: str,
    count: int = 600,
    scale: float = 1.0,
    seed: int = 1,
    jobs: int = 0,
    log: Log = None,
    distinct: int = DEFAULT_DISTINCT,
    bases: str | None = None,
) -> Corpus:
    """Generate the corpus into ``root`` (which must not exist or be empty): the examples,
    ``distinct`` linked dylibs (at most) and copies of those up to ``count`` dylibs. With
    ``bases``, the linked dylibs are kept in that folder and reused by later calls with the
    same arch, scale, seed and ``distinct`` (``root`` then holds hard links to them)."""
    if arch not in ARCHS:
        raise SystemExit(f"unknown arch {arch!r} (one of {', '.join(ARCHS)})")
    if scale <= 0:
        raise SystemExit("--scale must be positive")
    if count <= len(EXAMPLE_DYLIBS):
        raise SystemExit(f"--count must be more than {len(EXAMPLE_DYLIBS)} (the example dylibs)")
    if distinct < 1:
        raise SystemExit("--distinct must be at least 1")
    if os.path.isdir(root) and os.listdir(root):
        raise SystemExit(f"{root} is not empty")
    t0 = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    renamers = _load_renamers(arch)
    nbase = min(count - len(EXAMPLE_DYLIBS), distinct)
    ncopies = count - len(EXAMPLE_DYLIBS) - nbase
    if ncopies > nbase * (derive.MAX_VARIANTS - 1):
        raise SystemExit(
            f"--count {count} needs more than {derive.MAX_VARIANTS - 1} copies of each of the "
            f"{nbase} linked dylibs: raise --distinct"
        )
    planner = Planner(arch, nbase + len(EXAMPLE_DYLIBS), scale, seed, _unit_sizes(arch, renamers))
    plans = planner.plan()
    jobs = jobs or os.cpu_count() or 1
    if bases is None:
        t_link = time.perf_counter()
        sizes = _link_plans(arch, root, plans, renamers, jobs, log)
        link_seconds = time.perf_counter() - t_link
    else:
        sizes, link_seconds = _linked_bases(arch, bases, scale, seed, plans, renamers, jobs, log)
        _mirror(bases, root)
    dylibs: list[dict[str, object]] = []
    for d in EXAMPLE_DYLIBS:
        size = os.path.getsize(_host(root, d.install_name))
        dylibs.append({"install_name": d.install_name, "size": size, "kind": "example"})
    for p in plans:
        counts: dict[str, int] = {}
        for u in p.units:
            counts[u.template] = counts.get(u.template, 0) + 1
        dylibs.append(
            {
                "install_name": p.install_name,
                "size": sizes[p.index],
                "kind": "umbrella" if p.umbrella else "generated",
                "wave": p.wave,
                "target_size": p.target_size,
                "units": counts,
                "deps": [f"{mode}:{d}" for d, mode in p.deps],
            }
        )
    t_derive = time.perf_counter()
    made = _derive(root, planner, plans, ncopies, seed) if ncopies else []
    derive_seconds = time.perf_counter() - t_derive
    if log is not None and made:
        log(f"{len(made)} copies of {nbase} linked dylibs written in {derive_seconds:.1f} s")
    aliases = {}
    for p, node, _links in made:
        dylibs.append(
            {
                "install_name": node.install_name,
                "size": sizes[p.index],
                "kind": "copy",
                "copy_of": p.install_name,
                "variant": node.variant,
                "deps": [
                    f"{_MODES[cmd]}:{d.install_name}" for d, cmd in zip(node.deps, node.commands, strict=True)
                ],
            }
        )
    symlinks = [s for p in plans for s in p.symlinks] + [s for _p, _n, links in made for s in links]
    for link_path, target in symlinks:
        aliases[link_path] = os.path.normpath(os.path.join(os.path.dirname(link_path), target))
    return Corpus(
        arch,
        count,
        scale,
        seed,
        os.path.abspath(root),
        GENERATOR_VERSION,
        time.perf_counter() - t0,
        sum(int(str(d["size"])) for d in dylibs),
        dylibs,
        aliases,
        nbase,
        link_seconds,
        derive_seconds,
    )


def write_manifest(corpus: Corpus, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(asdict(corpus), f, indent=1)
        f.write("\n")


def read_manifest(path: str) -> Corpus:
    with open(path, encoding="utf-8") as f:
        return Corpus(**json.load(f))


def summary(corpus: Corpus) -> str:
    sizes = sorted(int(str(d["size"])) for d in corpus.dylibs)
    n = len(sizes)
    deps = [len(d.get("deps", [])) for d in corpus.dylibs]  # type: ignore[arg-type]
    return (
        f"{n} dylibs for {corpus.arch} in {corpus.root}: {corpus.total_bytes / MIB:.1f} MiB "
        f"(min {sizes[0] / KIB:.0f} KiB, median {sizes[n // 2] / KIB:.0f} KiB, "
        f"max {sizes[-1] / KIB:.0f} KiB), "
        f"{sum(deps)} dependency edges, {len(corpus.aliases)} symlinks; "
        f"generated in {corpus.seconds:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--arch", required=True, choices=ARCHS)
    ap.add_argument("--root", required=True, help="folder to create (the root filesystem)")
    ap.add_argument("--count", type=int, default=600, help="dylibs in the corpus, examples included")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every generated dylib's size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=0, help="link processes (default: all cores)")
    ap.add_argument(
        "--distinct",
        type=int,
        default=DEFAULT_DISTINCT,
        help="generated dylibs to link (default %(default)s); the others are copies of them",
    )
    ap.add_argument(
        "--bases", metavar="DIR", help="keep the linked dylibs in DIR and reuse them when they match"
    )
    ap.add_argument("--manifest", help="where to write the manifest (default: ROOT.json)")
    ap.add_argument("--json", action="store_true", help="print the manifest on stdout")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = None if args.quiet or args.json else (lambda s: print(s, file=sys.stderr))
    corpus = make_corpus(
        args.arch, args.root, args.count, args.scale, args.seed, args.jobs, log, args.distinct, args.bases
    )
    manifest = args.manifest or args.root.rstrip("/") + ".json"
    write_manifest(corpus, manifest)
    if args.json:
        json.dump(asdict(corpus), sys.stdout, indent=1)
        print()
    else:
        print(summary(corpus))
        print(f"manifest: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
