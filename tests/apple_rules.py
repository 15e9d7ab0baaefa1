"""Which files of a root dyld-1162 places in a cache, and why it evicts the others: the rules of
cache-format.md §8.1 and the self-containment fixed point of §8.2, applied to llvm-objdump-22's
reading of every file. An oracle for the real-root tests, independent of dyldcache's reader and
of the builder's own copy of the rules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import objdump

#: cache-format.md §8.1 rule 1 (copied from the format notes on purpose, not imported from the
#: builder: the builder's list is part of what the tests check)
SHARED_CACHE_PREFIXES = (
    "/usr/lib/",
    "/System/Library/",
    "/System/iOSSupport/usr/lib/",
    "/System/iOSSupport/System/Library/",
    "/Library/Apple/usr/lib/",
    "/Library/Apple/System/Library/",
    "/System/DriverKit/",
    "/System/Cryptexes/OS/usr/lib/",
    "/System/Cryptexes/OS/System/Library/",
    "/System/Cryptexes/OS/System/iOSSupport/usr/lib/",
    "/System/Cryptexes/OS/System/iOSSupport/System/Library/",
    "/System/ExclaveKit/usr/lib/",
    "/System/ExclaveKit/System/Library/",
)
#: rule 7: skipped without a word
SILENTLY_SKIPPED = ("/usr/lib/libobjc-trampolines.dylib", "/usr/lib/libffi-trampolines.dylib")
#: rule 4 (macOS)
MACOS_EXCLUDED = (
    "/usr/lib/system/introspection/",
    "/System/Library/QuickTime/",
    "/System/Library/Tcl/",
    "/System/Library/Perl/",
    "/System/Library/MonitorPanels/",
    "/System/Library/Accessibility/",
    "/usr/local/",
    "/usr/lib/pam/",
    "/System/Library/Templates/Data/",
)
_DYLIB_COMMANDS = {
    "LC_LOAD_DYLIB": False,
    "LC_REEXPORT_DYLIB": False,
    "LC_LOAD_UPWARD_DYLIB": False,
    "LC_LOAD_WEAK_DYLIB": True,
}
#: llvm-objdump's cputype column per arch name (a file without the arch is not read as one)
_CPU_NAMES = {"arm64": "ARM64", "arm64e": "ARM64", "x86_64": "X86_64"}
_FAT_MAGICS = (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")


@dataclass
class Verdict:
    path: str
    #: None: placed; "": silently skipped; "no-arch": no slice of the arch; else the eviction reason
    reason: str | None


def machos(root: Path) -> list[Path]:
    """Every regular file under ``root`` that starts like a Mach-O or fat file."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            with p.open("rb") as f:
                magic = f.read(4)
            if magic in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", *_FAT_MAGICS):
                out.append(p)
    return sorted(out)


def _arch_flags(path: Path, arch: str) -> tuple[str, ...]:
    with path.open("rb") as f:
        fat = f.read(4) in _FAT_MAGICS
    return (f"--arch={arch}", "--private-headers") if fat else ("--private-headers",)


def headers(paths: list[Path], arch: str) -> dict[Path, objdump.PrivateHeaders | None]:
    """llvm-objdump's private headers of the ``arch`` slice of each file (None: it has none)."""
    jobs = [(p, _arch_flags(p, arch)) for p in paths]
    objdump.prefetch(jobs)
    out: dict[Path, objdump.PrivateHeaders | None] = {}
    for p, flags in jobs:
        raw = objdump.run_raw(p, *flags)
        ph = objdump.parse_private_headers(raw.stdout) if raw.returncode == 0 else None
        if ph is not None and (len(ph.header) < 2 or ph.header[1] != _CPU_NAMES[arch]):
            ph = None
        out[p] = ph
    return out


def id_name(ph: objdump.PrivateHeaders) -> str | None:
    ids = ph.commands_named("LC_ID_DYLIB")
    return ids[0]["name"].rsplit(" (offset ", 1)[0] if ids else None


def dependencies(ph: objdump.PrivateHeaders) -> list[tuple[str, bool]]:
    """(install name, weak) of every LC_*_DYLIB but LC_ID_DYLIB, in load-command order."""
    return [
        (c["name"].rsplit(" (offset ", 1)[0], _DYLIB_COMMANDS[c["cmd"]])
        for c in ph.commands
        if c.get("cmd") in _DYLIB_COMMANDS
    ]


def _rule_reason(ph: objdump.PrivateHeaders, path: str, install: str | None, platform: str) -> str | None:
    cmds = {c.get("cmd") for c in ph.commands}
    split = ph.commands_named("LC_SEGMENT_SPLIT_INFO")
    if ph.header[4] != "DYLIB":
        return "Not MH_DYLIB"
    if install is None or not install.startswith("/"):
        return "install name not an absolute path"
    if install != path:
        return f"install name '{install}' does not match install path '{path}'"
    if platform == "macos" and (path.startswith(MACOS_EXCLUDED) or ".app/" in path):
        return "path is excluded from the shared cache on this platform"
    if "TWOLEVEL" not in ph.header[7:]:
        return "Not built with two level namespaces"
    if not split or int(split[0]["datasize"]) == 0:
        return "Missing split seg info"
    if not cmds & {"LC_DYLD_INFO_ONLY", "LC_DYLD_EXPORTS_TRIE"}:
        return "Old binary, missing dyld info or exports trie"
    outside = [d for d, weak in dependencies(ph) if not weak and not d.startswith(SHARED_CACHE_PREFIXES)]
    if outside:
        return f"Depends on dylib '{outside[0]}' which is not in a shared cache location"
    if any(s.sectname == "__interpose" or s.type == "S_INTERPOSING" for s in ph.sections):
        return "Has interposing tuples"
    return None


def resolve_in_root(root: Path, path: str) -> str | None:
    """``path`` with its symlinks followed as a process chrooted into ``root`` sees them (an
    absolute target starts again at the root); None when it climbs out, loops or dangles."""
    todo = [c for c in path.split("/") if c not in ("", ".")][::-1]
    done: list[str] = []
    for _hop in range(64):
        while todo:
            comp = todo.pop()
            if comp == "..":
                if not done:
                    return None
                done.pop()
                continue
            here = root.joinpath(*done, comp)
            if here.is_symlink():
                target = os.readlink(here)
                if target.startswith("/"):
                    done = []
                todo.extend([c for c in target.split("/") if c not in ("", ".")][::-1])
                break
            done.append(comp)
        else:
            return "/" + "/".join(done) if root.joinpath(*done).exists() else None
    return None


def apple_verdicts(root: Path, arch: str, platform: str) -> dict[str, Verdict]:
    """Placement of every Mach-O file under ``root`` by §8.1 rules 1-10 and the self-containment
    fixed point of §8.2 (a file is cached under its install name when that is a symlink in the
    root to it, as dyld-1162 does on macOS)."""
    heads = headers(machos(root), arch)
    verdicts: dict[str, Verdict] = {}
    deps_of: dict[str, list[tuple[str, bool]]] = {}
    input_names = {n for n in (id_name(ph) for ph in heads.values() if ph is not None) if n}
    for host, ph in heads.items():
        path = "/" + host.relative_to(root).as_posix()
        if ph is None:
            verdicts[path] = Verdict(path, "no-arch")
            continue
        install = id_name(ph)
        if install and install.startswith("/") and install != path:
            link = root / install.lstrip("/")
            if link.is_symlink() and resolve_in_root(root, install) == path:
                path = install
        if path in SILENTLY_SKIPPED:
            reason: str | None = ""
        elif not path.startswith(SHARED_CACHE_PREFIXES):
            reason = "path is not in a shared cache location"
        else:
            reason = _rule_reason(ph, path, install, platform)
        verdicts[path] = Verdict(path, reason)
        deps_of[path] = dependencies(ph)
    placed = {p for p, v in verdicts.items() if v.reason is None}
    aliases = {}
    for p in root.rglob("*"):
        if p.is_symlink():
            target = resolve_in_root(root, "/" + p.relative_to(root).as_posix())
            if target is not None:
                aliases["/" + p.relative_to(root).as_posix()] = target
    changed = True
    while changed:
        changed = False
        for path in sorted(placed):
            for dep, weak in deps_of[path]:
                if dep in placed or aliases.get(dep) in placed:
                    continue
                if weak and dep not in input_names:
                    continue
                if dep in input_names:
                    why = (
                        f"Depends on weak-linked dylib which was evicted: '{dep}'"
                        if weak
                        else f"Depends on dylib '{dep}' which was evicted from the cache"
                    )
                else:
                    why = f"Could not find dependency '{dep}'"
                verdicts[path] = Verdict(path, why)
                placed.discard(path)
                changed = True
                break
    return verdicts
