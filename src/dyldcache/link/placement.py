"""Where ld64 puts things in a shared-region dylib: section -> segment moves, and the order of
segments and sections (``docs/linker-notes.md`` §3.6 and §3.7).
"""

from __future__ import annotations

from ..macho import constants as C

#: __DATA sections that move to __DATA_CONST in a dylib with split seg v2 (ld64 -data_const),
#: including the shared-region and macOS 13 / iOS 16 additions
DATA_CONST_SECTIONS = frozenset(
    {
        "__got",
        "__auth_got",
        "__auth_ptr",
        "__nl_symbol_ptr",
        "__const",
        "__cfstring",
        "__objc_intobj",
        "__objc_floatobj",
        "__objc_doubleobj",
        "__objc_dataobj",
        "__objc_dateobj",
        "__objc_dictobj",
        "__objc_arrayobj",
        "__objc_arraydata",
        "__mod_init_func",
        "__mod_term_func",
        "__objc_classlist",
        "__objc_nlclslist",
        "__objc_catlist",
        "__objc_catlist2",
        "__objc_nlcatlist",
        "__objc_protolist",
        "__objc_imageinfo",
        "__const_cfobj2",
        "__la_symbol_ptr",
        "__objc_const",
        "__objc_selrefs",
    }
)

SEGMENT_ORDER = {
    "__TEXT": 1,
    "__DATA_CONST": 3,
    "__AUTH_CONST": 4,
    "__AUTH": 6,
    "__DATA": 7,
    "__LINKEDIT": 100,
}

_TEXT_ORDER = {
    "__text": 10,
    "__stubs": 12,
    "__auth_stubs": 12,
    "__stub_helper": 13,
    "__init_offsets": 15,
    "__objc_methlist": 16,
    "__gcc_except_tab": 60,
    "__unwind_info": 61,
    "__eh_frame": 62,
    "__objc_classname": 70,
    "__objc_methname": 71,
    "__objc_methtype": 72,
    "__objc_stubs": 73,
}
_DATA_ORDER = {
    "__got": 10,
    "__nl_symbol_ptr": 10,
    "__auth_got": 10,
    "__la_symbol_ptr": 11,
    "__auth_ptr": 11,
    "__mod_init_func": 12,
    "__mod_term_func": 13,
    "__const": 14,
    "__cfstring": 15,
    "__objc_classlist": 20,
    "__objc_nlclslist": 21,
    "__objc_catlist": 22,
    "__objc_nlcatlist": 23,
    "__objc_protolist": 24,
    "__objc_imageinfo": 25,
    "__objc_const": 26,
    "__objc_selrefs": 27,
    "__objc_msgrefs": 28,
    "__objc_protorefs": 29,
    "__objc_classrefs": 30,
    "__objc_superrefs": 31,
    "__objc_ivar": 32,
    "__objc_data": 33,
    "__thread_data": 80,
    "__thread_bss": 81,
}

SEGMENT_PROT = {
    "__TEXT": C.VM_PROT_READ | C.VM_PROT_EXECUTE,
    "__DATA_CONST": C.VM_PROT_READ | C.VM_PROT_WRITE,
    "__AUTH_CONST": C.VM_PROT_READ | C.VM_PROT_WRITE,
    "__AUTH": C.VM_PROT_READ | C.VM_PROT_WRITE,
    "__DATA": C.VM_PROT_READ | C.VM_PROT_WRITE,
    "__LINKEDIT": C.VM_PROT_READ,
}


def output_segment(
    segname: str, sectname: str, has_auth_pointers: bool, uses_auth_segments: bool, data_const: bool = True
) -> str:
    """The output segment of an input section (sections are never renamed, only moved).

    Without ``data_const`` (ld64's default for x86_64 dylibs with split seg v1) nothing moves
    to __DATA_CONST.
    """
    seg = segname
    if data_const and seg == "__DATA" and sectname in DATA_CONST_SECTIONS:
        seg = "__DATA_CONST"
    if uses_auth_segments and has_auth_pointers:
        # arm64e: anything holding signed pointers lives in the AUTH segments
        seg = {"__DATA_CONST": "__AUTH_CONST", "__DATA": "__AUTH"}.get(seg, seg)
    return seg


def section_rank(segname: str, sectname: str, flags: int, first_seen: int) -> tuple[int, int]:
    """Sort key of an output section inside its segment (first_seen breaks ties)."""
    if (flags & C.SECTION_TYPE) in C.ZEROFILL_SECTION_TYPES:
        return (1000, first_seen)  # zerofill is always last in its segment
    if segname == "__TEXT":
        if sectname in _TEXT_ORDER:
            return (_TEXT_ORDER[sectname], first_seen)
        if flags & C.S_ATTR_PURE_INSTRUCTIONS:
            return (11, first_seen)
        return (40, first_seen)
    if segname.startswith("__DATA"):
        return (_DATA_ORDER.get(sectname, 40), first_seen)
    return (40, first_seen)


def segment_rank(name: str, first_seen: int) -> tuple[int, int]:
    return (SEGMENT_ORDER.get(name, 50), first_seen)
