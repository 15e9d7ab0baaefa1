"""arm64 code references that cross segments: ADRP pages, their page-offset users, branches.

Every code section (``S_ATTR_PURE_INSTRUCTIONS`` or ``S_ATTR_SOME_INSTRUCTIONS``) is read as
32-bit words, minus the LC_DATA_IN_CODE ranges, and classified with numpy:

- ADRP whose 4 KiB page lies in another segment: one ARM64_ADRP entry each;
- B/BL into another segment: ARM64_BR26 (with stubs a call never leaves __TEXT, so this is rare);
- ADR, LDR (literal), B.cond, CBZ/CBNZ, TBZ/TBNZ into another segment: no split-seg kind can
  move them (they are +-1 MiB pc-relative; lld's optimization hints make them out of ADRP pairs),
  so the image is refused.

The users of a cross-segment ADRP, the ADD (immediate) and LDR/STR (unsigned offset, any size,
integer or SIMD&FP, PRFM included) that add the low 12 bits of the target to its register, get
ARM64_OFF12 entries. They are found by walking the control flow from the ADRP: straight-line code,
both ways of conditional branches, jump tables (decoded from LLVM's dispatch sequence), until the
register is overwritten. Calls follow the AAPCS64: x0-x18 do not survive a call and x19-x29 do; a
call to a function of this image is walked too (an outlined fragment may read any register), and
any read of the register there refuses the image. Every other read of the page register (a copy,
a store, arithmetic, an indirect branch target) refuses the image, and so does a path that leaves
its function other than by return, call or tail call.

Whether an unpaired ADRP refuses the image depends on the builder (``keep_page_offsets``): when
it keeps each segment's offset within a 4 KiB page, low-12 fields never change and only the
ADRP itself needs an entry, so pairing becomes best effort (docs/split-seg-synthesis.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DyldCacheError
from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.fixups import FixupKind
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .arm64_registers import gpr_effect
from .code_sections import CodeRegion, code_regions
from .image_map import ImageMap

_I64 = np.int64
#: how deep calls are followed from a page register's ADRP before giving up
_MAX_CALL_DEPTH = 64
#: the most jump-table entries read for one indirect branch
_MAX_TABLE_ENTRIES = 4096
#: how many instructions before an indirect branch its dispatch sequence may start
_DISPATCH_WINDOW = 16

#: walk modes: collect users / the page must not be read at all
_FIND, _NO_USE = 0, 1
#: AAPCS64: registers a call preserves (x19-x29); the others are dead at a return (a bare page
#: is never a return value: compilers always add the low 12 bits to an ADRP)
_CALLEE_SAVED = sum(1 << r for r in range(19, 30))
_DEAD_AT_RETURN = sum(1 << r for r in range(19))


class _Unpaired(Exception):
    """The users of an ADRP cannot all be found: where (address) and why."""

    def __init__(self, address: int, reason: str) -> None:
        super().__init__(reason)
        self.address = address
        self.reason = reason


def _sext(value: Any, bits: int) -> Any:
    """Sign-extend a ``bits``-wide field (an int or an int64 array)."""
    half = 1 << (bits - 1)
    return (value ^ half) - half


@dataclass(slots=True)
class ArmCodeScan:
    """What the arm64 code contributes: split seg entries and the addresses code takes."""

    entries: np.ndarray
    #: addresses the code forms in non-code sections of its own segment (ADRP + ADD pairs)
    taken: np.ndarray
    #: cross-segment ADRPs whose users could not all be found (keep_page_offsets mode only)
    unpaired: list[tuple[int, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Code:
    """The words of one code region and where functions start in it."""

    region: CodeRegion
    words: np.ndarray  # uint32
    skip: np.ndarray  # bool: data in code
    #: index of the first word of the function holding each word, and one past its last
    func_lo: np.ndarray
    func_hi: np.ndarray
    starts: set[int]

    @property
    def addr(self) -> int:
        return self.region.section.addr


class _Walker:
    """Finds the users of page registers in the code of one image (see the module docstring).

    A walk state is a position and the set of registers (a bit mask) that hold the page: a
    64-bit register copy (``mov xd, xn``) adds one, a write removes one, and the path ends when
    none is left.
    """

    def __init__(self, image: MachOFile, imap: ImageMap, codes: list[_Code]) -> None:
        self.image = image
        self.imap = imap
        self.codes = codes
        #: (callee address, register mask) already proven not to read those registers; a key
        #: being proven is in the set too, so recursion assumes it (a read would be found on the
        #: first visit anyway)
        self._callee_ok: set[tuple[int, int]] = set()
        self._tables: dict[tuple[int, int], tuple[list[int], bool] | None] = {}
        #: every address the image takes in its code (pointers, ADR, ADRP + ADD), sorted
        self.taken = np.zeros(0, dtype=_I64)

    def code_at(self, addr: int) -> tuple[_Code, int] | None:
        for c in self.codes:
            k = (addr - c.addr) >> 2
            if c.addr <= addr and k < len(c.words) and not (addr - c.addr) & 3:
                return c, k
        return None

    # -- the walk ------------------------------------------------------------------------------

    def users(self, code: _Code, k: int, reg: int, page: int) -> list[tuple[int, int]]:
        """(address, target) of every user of the ADRP at word ``k``; raises _Unpaired."""
        out: list[tuple[int, int]] = []
        lo, hi = int(code.func_lo[k]), int(code.func_hi[k])
        self._walk(code, [(k + 1, _FIND, 1 << reg)], page, out, 0, lo, hi, callee=False)
        return out

    def _walk(
        self,
        code: _Code,
        starts: list[tuple[int, int, int]],
        page: int,
        out: list[tuple[int, int]],
        depth: int,
        lo: int,
        hi: int,
        *,
        callee: bool,
    ) -> None:
        """Follow the page from each (word, mode, register mask) of ``starts`` through [lo, hi).

        ``_FIND`` collects page-offset users into ``out``; ``_NO_USE`` refuses any read. In a
        callee (``callee``), callee-saved registers may be saved to the stack, and a return ends
        the path whatever the registers.
        """
        words = code.words
        seen: set[tuple[int, int, int]] = set()
        work = list(starts)
        base = code.addr

        def refuse(j: int, why: str) -> _Unpaired:
            return _Unpaired(base + 4 * j, why)

        while work:
            j, mode, live = work.pop()
            while live:
                if (j, mode, live) in seen:
                    break
                seen.add((j, mode, live))
                if not lo <= j < hi:
                    if j == hi and j > 0 and (int(words[j - 1]) & 0xFC000000) == 0x94000000:
                        break  # after a call that does not return
                    raise refuse(j - 1 if j == hi else j, f"{_names(live)} flows out of its function")
                if code.skip[j]:
                    raise refuse(j, f"{_names(live)} flows into data in code")
                x = int(words[j])
                top = x & 0xFC000000
                if top == 0x14000000:  # B
                    t = j + int(_sext(x & 0x3FFFFFF, 26))
                    if lo <= t < hi:
                        j = t
                        continue
                    if live & _CALLEE_SAVED and not callee:
                        raise refuse(
                            j, f"callee-saved {_names(live & _CALLEE_SAVED)} holds the page at a tail call"
                        )
                    self._call(code, j, t, live, page, depth)
                    break
                if top == 0x94000000:  # BL
                    t = j + int(_sext(x & 0x3FFFFFF, 26))
                    self._call(code, j, t, live & ~(1 << 30), page, depth)
                    live &= _CALLEE_SAVED
                    j += 1
                    continue
                if (x & 0xFF000010) == 0x54000000 or (x & 0x7E000000) in (0x34000000, 0x36000000):
                    if (x & 0xFF000010) != 0x54000000 and live >> (x & 31) & 1:
                        raise refuse(j, f"{_names(live)} is tested by a branch")
                    if (x & 0x7E000000) == 0x36000000:
                        t = j + int(_sext((x >> 5) & 0x3FFF, 14))
                    else:
                        t = j + int(_sext((x >> 5) & 0x7FFFF, 19))
                    if not lo <= t < hi:
                        raise refuse(j, f"{_names(live)} is live at a conditional branch out of its function")
                    work.append((t, mode, live))
                    j += 1
                    continue
                if (x & 0xFE000000) == 0xD6000000:  # branch to register
                    opc = (x >> 21) & 0xF
                    reads, _ = gpr_effect(x)
                    if reads & live:
                        raise refuse(j, f"{_names(reads & live)} is a branch target")
                    if opc in (1, 9):  # BLR: an indirect call reaches a real function
                        live &= _CALLEE_SAVED
                        j += 1
                        continue
                    if opc == 2:  # RET
                        if callee or not live & ~_DEAD_AT_RETURN:
                            break
                        raise refuse(j, f"{_names(live & ~_DEAD_AT_RETURN)} is live at a return")
                    if opc in (0, 8):  # BR: a jump table, or nothing we can follow
                        table = self._jump_table(code, j, lo, hi)
                        if table is None:
                            # an indirect tail call, or a computed goto: a real function gets
                            # the registers as a call would; the labels of the function whose
                            # address is taken must not read them
                            if live & _CALLEE_SAVED and not callee:
                                raise refuse(j, f"{_names(live)} is live at an indirect branch")
                            table = (self._labels(code, lo, hi), False)
                        targets, exact = table
                        # an unbounded table is read while its entries look valid, so some of
                        # those paths may be false: there, any read refuses
                        work.extend((t, mode if exact else _NO_USE, live) for t in targets)
                        break
                    raise refuse(j, "unexpected branch instruction")
                if ((x & 0xFF000000) == 0xD4000000 and (x & 0x1F) == 0) or x >> 16 == 0:
                    break  # BRK, HLT, UDF: a trap ends the path
                rn = (x >> 5) & 31
                if live >> rn & 1 and rn != 31:
                    if mode == _FIND and (x & 0xFFC00000) == 0x91000000:  # ADD Xd, Xn, #imm12
                        out.append((base + 4 * j, page + ((x >> 10) & 0xFFF)))
                        live &= ~(1 << (x & 31))
                        j += 1
                        continue
                    if mode == _FIND and (x & 0x3B000000) == 0x39000000:  # LDR/STR (unsigned offset)
                        size = x >> 30
                        simd = (x >> 26) & 1
                        opc = (x >> 22) & 3
                        scale = 4 if simd and opc >= 2 and size == 0 else size
                        offset = ((x >> 10) & 0xFFF) << scale
                        if offset >= 0x1000:
                            raise refuse(j, f"offset {offset:#x} from x{rn} leaves its page")
                        if not simd and opc == 0 and live >> (x & 31) & 1:
                            raise refuse(j, f"x{x & 31} is stored to memory")
                        out.append((base + 4 * j, page + offset))
                        if not simd and opc != 0 and not (size == 3 and opc == 2):
                            live &= ~(1 << (x & 31))
                        j += 1
                        continue
                if (x & 0xFFE0FFE0) == 0xAA0003E0:  # MOV Xd, Xm (ORR Xd, XZR, Xm)
                    rm, rd = (x >> 16) & 31, x & 31
                    if rd != 31:
                        live = (live | (1 << rd)) if live >> rm & 1 else live & ~(1 << rd)
                    j += 1
                    continue
                reads, writes = gpr_effect(x)
                if reads & live:
                    if callee and not reads & live & ~_CALLEE_SAVED and self._is_save(x, reads & live):
                        # a callee saving a callee-saved register follows the AAPCS64 for it:
                        # it uses the register for its own values from there on
                        live &= ~reads
                        j += 1
                        continue
                    raise refuse(j, f"{_names(reads & live)} is read by instruction {x:#010x}")
                live &= ~writes
                j += 1

    @staticmethod
    def _is_save(x: int, regs: int) -> bool:
        """A store of the registers ``regs`` to the stack (STR/STP/STUR, base SP)."""
        if (x >> 5) & 31 != 31 or (x >> 26) & 1:
            return False
        if (x & 0x3A000000) == 0x28000000 and not (x >> 22) & 1:  # STP
            return not regs & ~((1 << (x & 31)) | (1 << ((x >> 10) & 31)))
        if (x & 0x3B000000) in (0x38000000, 0x39000000) and (x >> 22) & 3 == 0:  # STR, STUR
            return regs == 1 << (x & 31) and bool((x >> 24) & 1 or not (x >> 21) & 1)
        return False

    def _call(self, code: _Code, j: int, target_k: int, live: int, page: int, depth: int) -> None:
        """A call (or tail call) to word ``target_k`` of ``code`` while ``live`` hold the page.

        A function of this image may be an outlined fragment of its caller, which can read any
        register, so it is walked: it must not read them (callee-saved ones may be saved).
        """
        addr = code.addr + 4 * target_k
        found = self.code_at(addr) if live else None
        if found is None:
            return  # a stub or another image: a real function, which follows the AAPCS64
        callee, k = found
        if callee.region.section.sectname in ("__stubs", "__auth_stubs"):
            return
        key = (addr, live)
        if key in self._callee_ok:
            return
        if depth >= _MAX_CALL_DEPTH:
            raise _Unpaired(code.addr + 4 * j, f"{_names(live)} is live across calls nested too deep")
        if k not in callee.starts:
            raise _Unpaired(code.addr + 4 * j, f"{_names(live)} is live at a branch into a function's middle")
        self._callee_ok.add(key)
        try:
            lo, hi = int(callee.func_lo[k]), int(callee.func_hi[k])
            self._walk(callee, [(k, _NO_USE, live)], page, [], depth + 1, lo, hi, callee=True)
        except _Unpaired as exc:
            self._callee_ok.discard(key)
            raise _Unpaired(
                code.addr + 4 * j, f"{_names(live)} flows into the call to {addr:#x}: {exc.reason}"
            ) from None

    def _labels(self, code: _Code, lo: int, hi: int) -> list[int]:
        """Words of [lo, hi) other than its start whose address the image takes."""
        first, last = code.addr + 4 * lo, code.addr + 4 * hi
        taken = self.taken
        sel = taken[(taken > first) & (taken < last) & ((taken - code.addr) % 4 == 0)]
        return sorted({int(t - code.addr) >> 2 for t in sel})

    # -- jump tables ---------------------------------------------------------------------------

    def _jump_table(self, code: _Code, j: int, lo: int, hi: int) -> tuple[list[int], bool] | None:
        key = (code.addr, j)
        if key not in self._tables:
            self._tables[key] = self._decode_jump_table(code, j, lo, hi)
        return self._tables[key]

    def _decode_jump_table(self, code: _Code, j: int, lo: int, hi: int) -> tuple[list[int], bool] | None:
        """Word indexes an LLVM jump-table dispatch ending with the BR at ``j`` reaches.

        Recognizes ``adrp/add`` or ``adr`` of the table, a register-offset load of its entry
        (LDRB/LDRH/LDRSW...), ``adr`` of the anchor, ``add anchor, entry, lsl #k`` and the BR.
        The entry count comes from the range check before it (``cmp idx, #n`` and ``b.hi`` or
        ``b.hs``): then the targets are exact. Without one, entries are read while they land
        on an instruction of the function (the true table is covered, maybe more) and the
        second value is False.
        """
        words = code.words
        first = max(lo, j - _DISPATCH_WINDOW)
        for i in range(j - 1, first - 1, -1):
            x = int(words[i])
            if (x & 0xFC000000) in (0x14000000, 0x94000000) or (x & 0xFE000000) == 0xD6000000:
                first = i + 1
                break
        addr: dict[int, int] = {}
        entry: dict[int, tuple[int, int, bool, int]] = {}
        target: dict[int, tuple[int, int, int, bool, int, int]] = {}
        #: anchor + entry additions whose entry load has a table address from before the window
        pending: dict[int, tuple[int, int, int]] = {}
        for i in range(first, j):
            x = int(words[i])
            pc = code.addr + 4 * i
            rd = x & 31
            rn = (x >> 5) & 31
            rm = (x >> 16) & 31
            _, writes = gpr_effect(x)
            value_a: int | None = None
            value_e: tuple[int, int, bool, int] | None = None
            value_t: tuple[int, int, int, bool, int, int] | None = None
            value_p: tuple[int, int, int] | None = None
            if (x & 0x9F000000) == 0x90000000:  # ADRP
                imm = int(_sext(((x >> 29) & 3) | (((x >> 5) & 0x7FFFF) << 2), 21))
                value_a = (pc & ~0xFFF) + (imm << 12)
            elif (x & 0x9F000000) == 0x10000000:  # ADR
                value_a = pc + int(_sext(((x >> 29) & 3) | (((x >> 5) & 0x7FFFF) << 2), 21))
            elif (x & 0xFF800000) == 0x91000000 and rn in addr:  # ADD Xd, Xn, #imm
                value_a = addr[rn] + (((x >> 10) & 0xFFF) << (12 if (x >> 22) & 1 else 0))
            elif (x & 0x3B200C00) == 0x38200800 and not (x >> 26) & 1 and rn in addr:  # LDR* [Xn, Xm]
                size = x >> 30
                opc = (x >> 22) & 3
                if opc in (1, 2, 3) and not (size == 3 and opc == 2):
                    value_e = (addr[rn], 1 << size, opc >= 2, i)
            elif (x & 0xFF200000) in (0x8B000000, 0x8B200000):  # ADD Xd, Xn, Xm (shifted/extended)
                extended = (x >> 21) & 1
                shift = (x >> 10) & 7 if extended else (x >> 10) & 0x3F
                if (extended or (x >> 22) & 3 == 0) and rn in addr:
                    if rm in entry:
                        value_t = (addr[rn], *entry[rm], shift)
                    else:
                        value_p = (addr[rn], rm, shift)
            for d in range(31):
                if writes >> d & 1:
                    addr.pop(d, None)
                    entry.pop(d, None)
                    target.pop(d, None)
                    pending.pop(d, None)
            if value_a is not None:
                addr[rd] = value_a
            if value_e is not None:
                entry[rd] = value_e
            if value_t is not None:
                target[rd] = value_t
            if value_p is not None:
                pending[rd] = value_p
        found = target.get((int(words[j]) >> 5) & 31)
        if found is None and (int(words[j]) >> 5) & 31 in pending:
            found = self._hoisted_dispatch(code, first, j, lo, pending[(int(words[j]) >> 5) & 31])
        if found is None:
            return None
        anchor, table, size, signed, load_at, shift = found
        count = self._range_check(code, load_at, lo)
        limit = count if count is not None else _MAX_TABLE_ENTRIES
        out: list[int] = []
        for n in range(limit):
            try:
                raw = bytes(self.image.read_at_address(table + n * size, size))
            except DyldCacheError:
                break
            dest = anchor + (int.from_bytes(raw, "little", signed=signed) << shift)
            k = (dest - code.addr) >> 2
            if dest & 3 or not lo <= k < hi:
                if count is not None:
                    return None  # the range check promised a valid entry
                break
            out.append(k)
        if not out:
            return None
        return out, count is not None

    def _hoisted_dispatch(
        self, code: _Code, first: int, j: int, lo: int, pending: tuple[int, int, int]
    ) -> tuple[int, int, int, bool, int, int] | None:
        """A dispatch whose table address was computed before the window (hoisted out of a
        loop): the table is the last ADRP + ADD of its register in linear order before it."""
        words = code.words
        anchor, index_reg, shift = pending
        load_at = next((i for i in range(j - 1, first - 1, -1) if int(words[i]) & 31 == index_reg), None)
        if load_at is None:
            return None
        y = int(words[load_at])
        if (y & 0x3B200C00) != 0x38200800 or (y >> 26) & 1:
            return None
        size, opc, table_reg = y >> 30, (y >> 22) & 3, (y >> 5) & 31
        if opc not in (1, 2, 3) or (size == 3 and opc == 2):
            return None
        if any(gpr_effect(int(words[i]))[1] >> table_reg & 1 for i in range(first, load_at)):
            return None
        for i in range(first - 1, max(lo, first - 256), -1):
            z = int(words[i])
            if (z & 0xFF800000) == 0x91000000 and z & 31 == table_reg and (z >> 5) & 31 == table_reg:
                prev = int(words[i - 1])
                if (prev & 0x9F000000) != 0x90000000 or prev & 31 != table_reg:
                    return None
                pc = code.addr + 4 * (i - 1)
                imm = int(_sext(((prev >> 29) & 3) | (((prev >> 5) & 0x7FFFF) << 2), 21))
                table = (pc & ~0xFFF) + (imm << 12) + ((z >> 10) & 0xFFF)
                return anchor, table, 1 << size, opc >= 2, load_at, shift
            if gpr_effect(z)[1] >> table_reg & 1:
                return None
        return None

    @staticmethod
    def _range_check(code: _Code, load_at: int, lo: int) -> int | None:
        """Entry count of a jump table from ``cmp idx, #n`` + ``b.hi``/``b.hs`` before its load.

        Walks back from the entry load through register copies of the index; any other write
        of the index, or a branch other than the range check's, gives up.
        """
        words = code.words
        x = int(words[load_at])
        index = (x >> 16) & 31
        cond: int | None = None
        for i in range(load_at - 1, max(lo, load_at - _DISPATCH_WINDOW * 2) - 1, -1):
            y = int(words[i])
            if (y & 0xFF000010) == 0x54000000:  # B.cond: only the range check's
                if cond is not None or y & 0xF not in (2, 8):
                    return None
                cond = y & 0xF
                continue
            if (y & 0x7F80001F) == 0x7100001F:  # CMP Wn|Xn, #imm (SUBS ZR, Rn, #imm)
                if (y >> 5) & 31 == index:
                    if cond is None:
                        return None
                    n = ((y >> 10) & 0xFFF) << (12 if (y >> 22) & 1 else 0)
                    return n + 1 if cond == 8 else n
                continue
            if (y & 0xFC000000) in (0x14000000, 0x94000000) or (y & 0xFE000000) == 0xD6000000:
                return None
            if (y & 0x7FE0FFE0) == 0x2A0003E0 and y & 31 == index:  # MOV Wd|Xd, Wm|Xm
                index = (y >> 16) & 31
                continue
            _, writes = gpr_effect(y)
            if writes >> index & 1:
                return None
        return None


def _names(mask: int) -> str:
    return "/".join(f"x{r}" for r in range(31) if mask >> r & 1) or "nothing"


def _arm_codes(image: MachOFile, imap: ImageMap) -> list[_Code]:
    out = []
    for region in code_regions(image, imap):
        sect = region.section
        n = sect.size // 4
        words = np.frombuffer(region.content[: 4 * n], dtype="<u4")
        skip = region.data_in_code_mask(4)[:n]
        bounds = region.starts
        k = (bounds - sect.addr) // 4
        idx = np.searchsorted(k, np.arange(n), side="right") - 1
        lo = k[idx]
        hi = np.append(k[1:], n)[idx]
        out.append(_Code(region, words, skip, lo, hi, set(k.tolist())))
    return out


def scan_arm64(image: MachOFile, imap: ImageMap, *, keep_page_offsets: bool) -> ArmCodeScan:
    """Split seg entries for every cross-segment reference in the arm64 code of ``image``."""
    codes = _arm_codes(image, imap)
    parts: list[np.ndarray] = []
    taken: list[np.ndarray] = []
    #: per code region: the word indexes and pages of its cross-segment ADRPs
    cross: list[tuple[_Code, np.ndarray, np.ndarray]] = []
    for code in codes:
        sect = code.region.section
        w = code.words.astype(_I64)
        n = len(w)
        pcs = sect.addr + 4 * np.arange(n, dtype=_I64)
        live = ~code.skip
        own = sect.segment_index
        immlo_hi = ((w >> 29) & 3) | (((w >> 5) & 0x7FFFF) << 2)

        # pc-relative forms no split seg kind can move: refuse if one reaches another segment
        adr = (w & 0x9F000000) == 0x10000000
        adr_dest = pcs + _sext(immlo_hi, 21)
        for mask, dest, what in (
            (adr, adr_dest, "ADR"),
            ((w & 0x3B000000) == 0x18000000, pcs + 4 * _sext((w >> 5) & 0x7FFFF, 19), "LDR (literal)"),
            ((w & 0xFF000010) == 0x54000000, pcs + 4 * _sext((w >> 5) & 0x7FFFF, 19), "B.cond"),
            ((w & 0x7E000000) == 0x34000000, pcs + 4 * _sext((w >> 5) & 0x7FFFF, 19), "CBZ/CBNZ"),
            ((w & 0x7E000000) == 0x36000000, pcs + 4 * _sext((w >> 5) & 0x3FFF, 14), "TBZ/TBNZ"),
        ):
            sel = np.flatnonzero(mask & live)
            if not len(sel):
                continue
            seg = imap.segment_of(dest[sel])
            bad = sel[(seg >= 0) & (seg != own)]
            if len(bad):
                b = int(bad[0])
                raise imap.error(
                    int(pcs[b]),
                    f"{what} reaches {int(dest[b]):#x} in another segment (no split seg kind can move it)",
                )
        taken.append(adr_dest[adr & live])

        # B/BL across segments
        sel = np.flatnonzero(((w & 0x7C000000) == 0x14000000) & live)
        if len(sel):
            dest = pcs[sel] + 4 * _sext(w[sel] & 0x3FFFFFF, 26)
            parts.append(imap.entries(C.DYLD_CACHE_ADJ_V2_ARM64_BR26, pcs[sel], dest, what="branch"))

        # ADRP
        is_adrp = ((w & 0x9F000000) == 0x90000000) & live & ((w & 31) != 31)
        sel = np.flatnonzero(is_adrp)
        pages = (pcs[sel] & ~0xFFF) + (_sext(immlo_hi[sel], 21) << 12)
        seg = imap.segment_of(pages)
        # ADRP + ADD of the same register: an address the code takes (labels, tables)
        pair = sel[sel + 1 < n]
        follow = w[pair + 1]
        is_pair = (
            ((follow & 0xFFC00000) == 0x91000000) & (((follow >> 5) & 31) == (w[pair] & 31)) & live[pair + 1]
        )
        taken.append(pages[: len(pair)][is_pair] + ((follow[is_pair] >> 10) & 0xFFF))
        other = (seg >= 0) & (seg != own)
        cross.append((code, sel[other], pages[other]))

    pointer_targets = image.fixups.records["target"][
        np.isin(image.fixups.records["kind"], (FixupKind.REBASE, FixupKind.AUTH_REBASE))
    ].astype(_I64)
    all_taken = np.unique(np.concatenate([*taken, pointer_targets]))
    walker = _Walker(image, imap, codes)
    walker.taken = all_taken

    unpaired: list[tuple[int, str]] = []
    adrp_from: list[int] = []
    adrp_to: list[int] = []
    off12: dict[int, int] = {}
    for code, indexes, pages in cross:
        for i, page in zip(indexes.tolist(), pages.tolist(), strict=True):
            reg = int(code.words[i]) & 31
            pc = code.addr + 4 * i
            try:
                users = walker.users(code, i, reg, page)
                if not users:
                    raise _Unpaired(pc, f"no instruction uses the page x{reg} holds")
                targets = sorted({t for _, t in users})
                if not keep_page_offsets:
                    _check_one_block(image, imap, pc, targets)
            except _Unpaired as exc:
                if not keep_page_offsets:
                    raise imap.error(exc.address, f"cannot pair the ADRP at {pc:#x}: {exc.reason}") from None
                unpaired.append((pc, exc.reason))
                adrp_from.append(pc)
                adrp_to.append(_page_target(imap, pc, page))
                continue
            adrp_from.append(pc)
            adrp_to.append(targets[0])
            for at, t in users:
                prior = off12.setdefault(at, t)
                if prior != t and not keep_page_offsets:
                    raise imap.error(at, f"page offset serves two targets, {prior:#x} and {t:#x}")
    if adrp_from:
        parts.append(
            imap.entries(C.DYLD_CACHE_ADJ_V2_ARM64_ADRP, np.array(adrp_from), np.array(adrp_to), what="ADRP")
        )
    if off12:
        parts.append(
            imap.entries(
                C.DYLD_CACHE_ADJ_V2_ARM64_OFF12,
                np.fromiter(off12.keys(), dtype=_I64),
                np.fromiter(off12.values(), dtype=_I64),
                what="page offset",
            )
        )
    entries = np.concatenate(parts) if parts else np.zeros(0, dtype=SPLIT_SEG_DTYPE)
    return ArmCodeScan(entries, all_taken, unpaired)


def _segment_block(image: MachOFile, segment: int) -> int:
    """The alignment every address of ``segment`` keeps in the cache, capped at a 4 KiB page.

    The builder aligns a segment to its largest section alignment (at least 8), so two targets
    in the same block of that size stay on one page wherever the segment lands.
    """
    seg = image.segments[segment]
    align = max((1 << s.align for s in seg.sections), default=8)
    return min(max(align, 8), 0x1000)


def _check_one_block(image: MachOFile, imap: ImageMap, pc: int, targets: list[int]) -> None:
    if len(targets) < 2:
        return
    seg = int(imap.segment_of(np.array(targets[:1]))[0])
    block = _segment_block(image, seg)
    if len({t // block for t in targets}) > 1:
        raise _Unpaired(
            pc, f"its users reach {targets[0]:#x} and {targets[-1]:#x}, which may land on different pages"
        )


def _page_target(imap: ImageMap, pc: int, page: int) -> int:
    """A target naming the page of an unpaired ADRP: the page start, or the first section in it."""
    seg = int(imap.segment_of(np.array([page]))[0])
    inside = (imap.sect_seg == seg) & (imap.sect_end > page) & (imap.sect_addr < page + 0x1000)
    inside[0] = False
    cand = imap.sect_addr[inside]
    if not len(cand):
        raise imap.error(pc, f"ADRP reaches page {page:#x}, which holds no section")
    return max(page, int(cand.min()))
