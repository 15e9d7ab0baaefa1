"""Apple's names for the (cputype, cpusubtype) pairs of mach headers and fat slices."""

from __future__ import annotations

from . import constants as C


def arch_name(cputype: int, cpusubtype: int) -> str:
    """Apple's name for a (cputype, cpusubtype) pair, e.g. 'arm64e'; unknown pairs get a hex name."""
    sub = cpusubtype & ~C.CPU_SUBTYPE_MASK
    if cputype == C.CPU_TYPE_ARM64:
        return {
            C.CPU_SUBTYPE_ARM64_ALL: "arm64",
            C.CPU_SUBTYPE_ARM64_V8: "arm64v8",
            C.CPU_SUBTYPE_ARM64E: "arm64e",
        }.get(sub, f"arm64-{sub:#x}")
    if cputype == C.CPU_TYPE_X86_64:
        return "x86_64h" if sub == C.CPU_SUBTYPE_X86_64_H else "x86_64"
    if cputype == C.CPU_TYPE_ARM64_32:
        return "arm64_32"
    if cputype == C.CPU_TYPE_X86:
        return "i386"
    if cputype == C.CPU_TYPE_ARM:
        return "arm"
    return f"cpu{cputype:#x}-{sub:#x}"
