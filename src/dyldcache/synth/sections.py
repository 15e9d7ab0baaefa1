"""Which sections may hold references the builder must adjust, and who finds them.

Split seg info must name every reference whose bytes change when segments move apart. Without
relocations, that is only possible for sections whose content we understand. Each section with
content is one of:

- **code** (``S_ATTR_*_INSTRUCTIONS``): decoded (``arm64_code``, ``x86_64_code``);
- **parsed**: ``__eh_frame``, ``__unwind_info``, ``__gcc_except_tab`` (its LSDAs),
  ``__objc_methlist``, ``S_INIT_FUNC_OFFSETS``: their relative and image-offset fields are read;
- **pointers and plain data**: whatever absolute pointers they hold are fixups (rebases and
  binds, which give POINTER_64 entries); C, C++ and Objective-C compilers put no relative
  references there. Known by type (strings, literals, zero fill, pointer sections, initializer
  pointers, thread-local sections) or by name (``__data``, ``__const``, ``__cfstring``, every
  ``__objc_*`` data section, ``__got``...);
- **refused**: Swift metadata (``__swift*``: relative pointers everywhere, in formats this
  builder does not read), DTrace DOF (offsets the kernel reads), and any section this list does
  not know.

``__TEXT,__const`` holds constant data and tables that are relative to a label in __TEXT (arm64
jump tables; LLVM's relative lookup tables on x86_64, which may also reach __DATA_CONST).
Those tables are checked by ``relative_tables``.

An image with a single segment that can move (besides __LINKEDIT) needs none of this: nothing in
it moves relative to anything else.
"""

from __future__ import annotations

from ..errors import SplitSegSynthesisError
from ..macho import constants as C
from ..macho.file import MachOFile, Section
from .code_sections import is_code

#: read by a parser of this package
PARSED = frozenset({"__eh_frame", "__unwind_info", "__gcc_except_tab", "__objc_methlist"})

#: section types whose content holds no relative reference
_PLAIN_TYPES = frozenset(
    {
        C.S_ZEROFILL,
        C.S_GB_ZEROFILL,
        C.S_THREAD_LOCAL_ZEROFILL,
        C.S_CSTRING_LITERALS,
        C.S_4BYTE_LITERALS,
        C.S_8BYTE_LITERALS,
        C.S_16BYTE_LITERALS,
        C.S_LITERAL_POINTERS,
        C.S_NON_LAZY_SYMBOL_POINTERS,
        C.S_LAZY_SYMBOL_POINTERS,
        C.S_LAZY_DYLIB_SYMBOL_POINTERS,
        C.S_MOD_INIT_FUNC_POINTERS,
        C.S_MOD_TERM_FUNC_POINTERS,
        C.S_THREAD_LOCAL_REGULAR,
        C.S_THREAD_LOCAL_VARIABLES,
        C.S_THREAD_LOCAL_VARIABLE_POINTERS,
        C.S_THREAD_LOCAL_INIT_FUNCTION_POINTERS,
        C.S_INTERPOSING,
    }
)

#: regular sections known to hold only data and fixed-up pointers, by name
_PLAIN_NAMES = frozenset(
    {
        # __TEXT: strings and constants (``__const`` tables are checked separately)
        "__const",
        "__cstring",
        "__ustring",
        "__oslogstring",
        "__objc_methname",
        "__objc_classname",
        "__objc_methtype",
        "__info_plist",
        "__fips_hmacs",
        "__literal4",
        "__literal8",
        "__literal16",
        "__literals",
        # data segments
        "__data",
        "__bss",
        "__common",
        "__got",
        "__auth_got",
        "__auth_ptr",
        "__nl_symbol_ptr",
        "__la_symbol_ptr",
        "__la_weak_ptr",
        "__mod_init_func",
        "__mod_term_func",
        "__thread_vars",
        "__thread_data",
        "__thread_bss",
        "__thread_ptrs",
        "__cfstring",
        "__crash_info",
        "__constrw",
        "__program_vars",
        "__interpose",
        "__dyld",
    }
)


def is_plain(section: Section) -> bool:
    """Holds only data and fixed-up pointers (see the module docstring)."""
    name = section.sectname
    if name.startswith("__swift") or section.segname.startswith("__swift"):
        return False
    if section.type in _PLAIN_TYPES:
        return True
    if section.type not in (C.S_REGULAR, C.S_COALESCED):
        return False
    return name in _PLAIN_NAMES or (name.startswith("__objc_") and name not in PARSED)


def check_sections(image: MachOFile, moving_segments: int) -> None:
    """Refuse the image if a section may hold relative references nothing here parses."""
    if moving_segments <= 1:
        return
    for sect in image.sections:
        if sect.size == 0 or is_code(sect) or sect.sectname in PARSED:
            continue
        if sect.type == C.S_INIT_FUNC_OFFSETS:
            continue
        if sect.type == C.S_DTRACE_DOF:
            reason = "DTrace DOF holds offsets this builder does not read"
        elif sect.sectname.startswith("__swift") or sect.segname.startswith("__swift"):
            reason = "Swift metadata holds relative references this builder does not parse"
        elif is_plain(sect):
            continue
        else:
            reason = "may hold relative references this builder does not parse"
        raise SplitSegSynthesisError(image.path, sect.full_name, None, reason)
