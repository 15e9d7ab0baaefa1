"""Which bytes of x86_64 code are instructions: a recursive descent that leaves nothing unexplained.

x86_64 instructions have no fixed length, and compilers put data between them: jump tables at
the end of a function (clang and GCC), constants in hand-written assembly. Linkers mark such
data with LC_DATA_IN_CODE only sometimes (ld64 keeps the compiler's marks; most third-party
dylibs have none). Decoding bytes in address order would read a table as instructions, make up
references in it and lose the instructions after it, so the code is decoded by following the
control flow instead, from what is known to be code:

- every LC_FUNCTION_STARTS address, every function start of the unwind information, every
  landing pad of an LSDA (``entries``);
- the targets of direct jumps, conditional branches and calls, and the instruction after an
  ordinary instruction or a conditional branch;
- the instruction after a call, *tentatively*: a call may not return (``abort``,
  ``__stack_chk_fail``, ``__assert_rtn``), and compilers put a jump table or padding straight
  after such a call. What is decoded from there, with all it reaches, is kept only if it decodes
  cleanly: no invalid bytes, no instruction overlapping another or data or running out of the
  section, no branch into the middle of an instruction or out of the code. Otherwise it is
  undone and the call is taken not to return;
- the entries of every jump table ``x86_64_tables`` recognizes (the table becomes data), and the
  labels an indirect jump reaches when every path to it loads the register with
  ``lea label(%rip)`` (GMP's assembly).

A table's address comes from the ``lea`` of its base register in the straight-line code before
the load, else from the ``lea`` instructions that reach the load on every control-flow path back
(reaching definitions over the decoded code). Its length comes from the range check before the
load; a dispatch without one (the compiler knew the index was in range) gets, last, the entries
from the table on that reach code of its function before the table, up to the next function,
table or decoded instruction. A table found over bytes already decoded (tentatively, after a
call that does not return) starts the descent over with the table known as data.

Nothing is taken on trust. At the end every byte of every code section must be an instruction,
data-in-code, a table, or padding between them (zero bytes, ``int3``, NOPs); a table entry must
land on an instruction of the table's segment, and no instruction may overlap a table. A table
too long would take in padding whose words reach no instruction, or code the descent then finds
covered by data; one too short leaves entries unexplained. Anything unexplained refuses the
image, naming its section and offset: a table load that cannot be bounded, data in hand-written
assembly, code reached only in ways the descent does not know.

Stub sections (``S_SYMBOL_STUBS``) and ``__stub_helper`` hold nothing but linker-made code and
are decoded in address order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from iced_x86 import Code, Decoder, FlowControl, Instruction, OpKind, RegisterExt

from ..errors import SplitSegSynthesisError
from ..macho import constants as C
from ..macho.file import MachOFile, Section
from .code_sections import CodeRegion, code_regions
from .image_map import ImageMap
from .x86_64_instructions import (
    copied_register,
    ends_path,
    implausible,
    jumps_through,
    left_alone,
    rip_lea,
)
from .x86_64_tables import CALLER_SAVED, is_table_load, sum_register, table_use, written_registers

#: the longest x86_64 instruction
MAX_INSTRUCTION = 15
#: how many instructions before a table load its range check and ``lea`` are looked for
CHAIN = 64
#: how many instructions a search for the definitions reaching a register may visit
REACHING_BUDGET = 4096
#: how many times the descent may start over with newly found tables
MAX_ROUNDS = 6
#: byte states (``_Code.state``): 1..15 start an instruction of that length
_INSIDE = 0x80  # a later byte of an instruction
_DATA = 0x40  # data in code or a table
_ZEROS = [bytes(n) for n in range(MAX_INSTRUCTION + 1)]
_INSIDES = [bytes([_INSIDE]) * n for n in range(MAX_INSTRUCTION + 1)]
#: instruction flags (``_Code.refs``)
RIP_RELATIVE = 1
REL32 = 2
_CALLS = frozenset({FlowControl.CALL, FlowControl.INDIRECT_CALL})
_MOVSXD = frozenset(c for name, c in vars(Code).items() if name.startswith("MOVSXD"))
# enum members as plain ints for the decoding loop
_INVALID = int(Code.INVALID)
_INT3 = int(Code.INT3)
_NEXT = int(FlowControl.NEXT)
_CALL = int(FlowControl.CALL)
_CONDITIONAL = int(FlowControl.CONDITIONAL_BRANCH)
_XBEGIN = int(FlowControl.XBEGIN_XABORT_XEND)
_INTERRUPT = int(FlowControl.INTERRUPT)
_INDIRECT = int(FlowControl.INDIRECT_BRANCH)
#: branches that may fall through
_GOES_ON = frozenset({_CONDITIONAL, _XBEGIN})
_NEAR_BRANCH = int(OpKind.NEAR_BRANCH64)
_REGISTER = int(OpKind.REGISTER)
#: what a later look at a table load or an indirect jump may use: the straight-line code before
#: it, then the definitions reaching it on every path, then (tables) their own entries
_STRAIGHT, _REACHING, _UNCHECKED = 0, 1, 2
_STAGES = (_STRAIGHT, _REACHING, _UNCHECKED)


@dataclass(slots=True)
class CodeMap:
    """What the descent found in one code section."""

    section: Section
    content: bytes
    #: per byte: 1..15 where an instruction of that length starts, 0 elsewhere
    lengths: np.ndarray
    #: per byte: RIP_RELATIVE / REL32 flags of the instruction starting there
    refs: np.ndarray
    #: jump tables and relative tables in this section: start -> entry count
    tables: dict[int, int]


@dataclass(slots=True)
class Explored:
    """The descent's result for an image."""

    maps: list[CodeMap]
    #: relative tables outside the code, (start, entry count if a range check gives it):
    #: ``relative_tables`` checks them
    relative_tables: list[tuple[int, int | None]]
    instructions: int


@dataclass(slots=True)
class _Code:
    """One code section during the descent."""

    region: CodeRegion
    base: int
    end: int
    content: bytes
    decoder: Decoder
    #: a second decoder for random access (predecessors, tables), so the first keeps its place
    reader: Decoder
    #: decoded in address order (stubs)
    linear: bool
    #: per byte: 0 unknown, 1..15 an instruction of that length starts, _INSIDE, _DATA
    state: bytearray
    #: per byte: RIP_RELATIVE / REL32 flags of the instruction starting there
    refs: bytearray
    tables: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, region: CodeRegion) -> _Code:
        sect, content = region.section, region.content
        return cls(
            region,
            sect.addr,
            sect.addr + sect.size,
            content,
            Decoder(64, content, ip=sect.addr),
            Decoder(64, content, ip=sect.addr),
            sect.type == C.S_SYMBOL_STUBS or sect.sectname == "__stub_helper",
            bytearray(len(content)),
            bytearray(len(content)),
        )

    def at(self, address: int) -> Instruction:
        """The instruction at ``address`` (decoded again)."""
        self.reader.position = address - self.base
        self.reader.ip = address
        insn = Instruction()
        self.reader.decode_out(insn)
        return insn

    def previous(self, address: int) -> int | None:
        """Address of the decoded instruction that ends at ``address``, if any."""
        off = address - self.base
        for n in range(1, MAX_INSTRUCTION + 1):
            if off - n >= 0 and self.state[off - n] == n:
                return address - n
        return None

    def after(self, address: int, limit: int) -> list[Instruction]:
        """Up to ``limit`` decoded instructions that follow the one at ``address``."""
        out: list[Instruction] = []
        off = address - self.base
        while len(out) < limit:
            n = self.state[off]
            off += n
            if not 0 < n <= MAX_INSTRUCTION or off >= len(self.state) or not 0 < self.state[off] <= 15:
                break
            out.append(self.at(self.base + off))
        return out

    def function(self, address: int) -> tuple[int, int]:
        """[start, end) of the function holding ``address`` (by LC_FUNCTION_STARTS)."""
        starts = self.region.starts
        k = int(np.searchsorted(starts, address, side="right"))
        lo = int(starts[k - 1]) if k > 0 else self.base
        hi = int(starts[k]) if k < len(starts) else self.end
        return lo, hi


class _Undo(Exception):
    """A tentative descent (after a call) went wrong."""

    def __init__(self, address: int, message: str, *, doubtful: bool = False) -> None:
        super().__init__(message)
        self.address = address
        self.message = message
        #: it only met an instruction compilers do not emit: worth another try later
        self.doubtful = doubtful


class _Restart(Exception):
    """A table was found over bytes already decoded: start over with it known."""


@dataclass(slots=True)
class _Unresolved:
    code: _Code
    #: "site" (a table load) or "jump" (an indirect jump that reads no table)
    kind: str
    why: str


class _Descent:
    def __init__(self, image: MachOFile, imap: ImageMap, regions: list[CodeRegion], known: dict[int, int]):
        self.image = image
        self.imap = imap
        self.codes = [_Code.of(r) for r in regions]
        self.known = known
        self.entries: set[int] = set()
        self.work: list[int] = []
        self.weak: list[int] = []
        #: jump target -> the jumps to it (not calls), for paths back through the code
        self.sources: dict[int, list[int]] = {}
        #: the targets of the jumps added, in order (undone with a tentative descent)
        self.jumped: list[int] = []
        #: where each address queued for decoding was first reached from (for messages)
        self.origin: dict[int, int] = {}
        self.start = 0
        self.loads: list[tuple[_Code, int]] = []
        self.jumps: list[tuple[_Code, int]] = []
        self.unresolved: dict[int, _Unresolved] = {}
        #: tables found: start -> entry count; addresses of tables not bounded yet
        self.found: dict[int, int] = {}
        self.unbounded: set[int] = set()
        #: the code each table found reaches
        self.targets: dict[int, list[int]] = {}
        #: relative tables outside the code: (start, entry count or None, the path from the
        #: range check to the load)
        self.relative: list[tuple[int, int | None, list[int]]] = []
        #: tentative descents undone: where they started -> why
        self.undone: dict[int, _Undo] = {}
        self.log: list[tuple[_Code, int]] | None = None
        #: tentative descents stop at instructions compilers do not emit (``implausible``)
        #: until nothing else is left; those put off so far
        self.strict = True
        self.doubtful: list[int] = []
        self.count = 0
        self.insn = Instruction()
        for code in self.codes:
            for start, end in code.region.data_in_code:
                code.state[start - code.base : end - code.base] = bytes([_DATA]) * (end - start)
            for start, n in known.items():
                if code.base <= start < code.end:
                    self._mark_table(code, start, n)

    def code_of(self, address: int) -> _Code | None:
        for code in self.codes:
            if code.base <= address < code.end:
                return code
        return None

    # -- the descent ------------------------------------------------------------------------------

    def run(self, entries: Iterable[int]) -> None:
        for code in self.codes:
            if code.linear:
                self._linear(code)
        for address in sorted(set(entries), reverse=True):
            where = self.code_of(address)
            if where is not None and not where.linear:
                self.work.append(address)
                self.entries.add(address)
        while True:
            self._drain()
            if self._analyze_new():
                continue
            if self.weak:
                self._tentatively(self.weak.pop())
                continue
            if any(self._retry(stage) for stage in _STAGES):
                continue
            if self.doubtful:
                # what looked unlike compiled code gets another chance, now that the tables
                # that could be found are data
                self.weak, self.doubtful, self.strict = self.doubtful, [], False
                continue
            break

    def _drain(self) -> None:
        while self.work:
            self._decode(self.work.pop(), strong=True)

    def _tentatively(self, address: int) -> None:
        """Decode from the instruction after a call, and all it reaches, or nothing."""
        self.log = []
        saved = (len(self.loads), len(self.jumps), len(self.weak), len(self.jumped))
        try:
            self._decode(address, strong=False)
            self._drain()
        except _Undo as undo:
            if undo.doubtful:
                self.doubtful.append(address)
            for code, off in self.log:
                n = code.state[off]
                code.state[off : off + n] = _ZEROS[n]
                code.refs[off] = 0
            self.count -= len(self.log)
            del self.loads[saved[0] :]
            del self.jumps[saved[1] :]
            del self.weak[saved[2] :]
            for target in reversed(self.jumped[saved[3] :]):
                self.sources[target].pop()
            del self.jumped[saved[3] :]
            self.work.clear()
            self.undone[address] = undo
        finally:
            self.log = None

    def _fail(self, address: int, message: str) -> None:
        came = self.origin.get(self.start)
        message += f" (decoding from {self.start:#x}" + (
            f", reached from {came:#x})" if came is not None else ")"
        )
        if self.log is not None:
            raise _Undo(address, message)
        raise self.imap.error(address, message)

    def _decode(self, address: int, *, strong: bool) -> None:
        """Decode from ``address`` along the fall-through path, queueing branch targets."""
        self.start = address
        code = self.code_of(address)
        if code is None:
            self._fail(address, "a branch leaves the code")
        assert code is not None
        if code.linear:
            return  # stubs are decoded whole
        state, refs, base = code.state, code.refs, code.base
        off = address - base
        decoder = code.decoder
        decoder.position = off
        decoder.ip = address
        work, weak, log, origin, loads = self.work, self.weak, self.log, self.origin, self.loads
        strict = log is not None and self.strict
        decoded = 0
        try:
            for insn in decoder:
                s = state[off]
                if s:
                    if s <= MAX_INSTRUCTION:
                        return  # joins decoded code
                    if s == _DATA and not strong:
                        return  # the call does not return: data (after padding) follows it
                    message = (
                        "control flow reaches data in code" if s == _DATA else "a branch into an instruction"
                    )
                    self._fail(base + off, message)
                n = insn.len
                kind = insn.code
                if kind == _INVALID:
                    self._fail(base + off, "bytes control flow reaches are no valid instruction")
                if n > 1 and state.count(0, off + 1, off + n) != n - 1:
                    self._fail(base + off, "an instruction overlaps another instruction or data")
                if strict and implausible(insn, kind):
                    raise _Undo(base + off, f"'{insn}' is unlike compiled code", doubtful=True)
                state[off] = n
                state[off + 1 : off + n] = _INSIDES[n - 1]
                if log is not None:
                    log.append((code, off))
                decoded += 1
                if insn.is_ip_rel_memory_operand:
                    refs[off] = RIP_RELATIVE
                at = base + off
                off += n
                flow = insn.flow_control
                if flow == _NEXT:
                    if kind in _MOVSXD and is_table_load(insn):
                        loads.append((code, at))
                    continue
                if insn.op0_kind == _NEAR_BRANCH:
                    target = insn.near_branch_target
                    if n >= 5:
                        refs[at - base] |= REL32
                    work.append(target)
                    origin.setdefault(target, at)
                    if flow != _CALL:
                        self._edge(at, target)
                if flow in _GOES_ON:
                    continue
                if flow in _CALLS:
                    weak.append(base + off)
                    origin.setdefault(base + off, at)
                    return
                if flow == _INTERRUPT and kind != _INT3:
                    continue  # int n returns
                if flow == _INDIRECT and insn.op0_kind == _REGISTER:
                    self.jumps.append((code, at))
                return  # jmp, ret, ud2, int3, an indirect jump
            self._fail(base + off - 1, "code runs past the end of its section")
        finally:
            self.count += decoded

    def _linear(self, code: _Code) -> None:
        """Decode a stub section in address order."""
        insn = self.insn
        decoder = code.decoder
        off = 0
        while off < len(code.state):
            decoder.decode_out(insn)
            n = insn.len
            if insn.code == Code.INVALID:
                raise self.imap.error(code.base + off, "bytes of a stub section are no valid instruction")
            code.state[off] = n
            code.state[off + 1 : off + n] = _INSIDES[n - 1]
            if insn.is_ip_rel_memory_operand:
                code.refs[off] = RIP_RELATIVE
            elif insn.op0_kind == OpKind.NEAR_BRANCH64 and n >= 5:
                code.refs[off] = REL32
            self.count += 1
            off += n

    # -- tables and indirect jumps ----------------------------------------------------------------

    def _analyze_new(self) -> bool:
        """Look at the table loads and indirect jumps decoded since the last call; True if that
        queued more code."""
        before = len(self.work)
        while self.loads:
            self._site(*self.loads.pop(), _STRAIGHT)
        while self.jumps:
            self._jump(*self.jumps.pop(), _STRAIGHT)
        return len(self.work) > before

    def _retry(self, stage: int) -> bool:
        """Look again at what is not understood yet, with the means of ``stage``; True if that
        queued more code."""
        before = len(self.work)
        pending = sorted(self.unresolved.items())
        self.unresolved.clear()
        for address, item in pending:
            if item.kind == "site":
                self._site(item.code, address, stage)
            else:
                self._jump(item.code, address, stage)
        return len(self.work) > before

    def _site(self, code: _Code, address: int, stage: int) -> None:
        """A table load. A table in the code is a jump table (its sum is jumped to, at once or
        later through memory); one outside it a jump table when the sum is jumped to at once,
        else a relative lookup table."""
        load = code.at(address)
        after = code.after(address, 6)
        total = sum_register(load, after)
        if total is None:
            return  # an array of 32-bit integers, not a table of offsets
        dispatch = next((int(i.ip) for i in after if jumps_through(i, total)), None)
        jump = dispatch is not None
        chain, taken = self._chain(code, address)
        use = table_use(chain, load, taken)
        table = use.table
        if table is None and stage >= _REACHING:
            base = RegisterExt.full_register(load.memory_base)
            bases = self._reaching_leas(code, address, base) or set(self._function_leas(code, address, base))
            table = bases.pop() if len(bases) == 1 else None
        if table is None:
            if jump:
                self._defer(code, address, "site", "a jump table whose address is not known")
            return  # a table at an address the code computes: not constant data of the image
        if table in self.found:
            for target in self.targets.get(table, ()):
                self._edge(address if dispatch is None else dispatch, target)
            return
        where = self.code_of(table)
        if where is None and not jump:
            # in constant data: relative_tables reads the entries (an unsigned check counts
            # them if nothing branches in between it and the load; see ``result``)
            ips = [int(i.ip) for i in chain]
            path = [*ips[ips.index(use.check) :], address] if use.check in ips else [address]
            self.relative.append((table, None if use.signed else use.count, path))
            return
        count = use.count
        if count is None and where is not None:
            self.unbounded.add(table)
            if stage >= _UNCHECKED:
                count = self._extent(where, table, use.cap)
        if count is None:
            self._defer(
                code, address, "site", f"a jump table at {table:#x} without data-in-code or range check"
            )
            return
        # an entry for the table itself (0) is an unused slot: GMP's for n = 0
        targets = [t for t in self._entries(table, count, address) if not table <= t < table + 4 * count]
        self.found[table] = count
        self.targets[table] = targets
        self.unbounded.discard(table)
        if where is not None:
            self._mark_table(where, table, count)
        for target in targets:
            self._queue(target, table, address if dispatch is None else dispatch)

    def _jump(self, code: _Code, address: int, stage: int) -> None:
        """An indirect jump through a register that reads no table: through a loaded pointer
        (a tail call), or to labels the function takes the address of."""
        reg = RegisterExt.full_register(code.at(address).op0_register)
        chain, _ = self._chain(code, address)
        for k in range(len(chain) - 1, -1, -1):
            insn = chain[k]
            if is_table_load(insn) and sum_register(insn, chain[k + 1 :]) == reg:
                return  # a table dispatch: ``_site`` resolves it
            if reg in written_registers(insn):
                if rip_lea(insn):
                    self._label(insn.memory_displacement, address)
                return
        if stage < _REACHING:
            self._defer(code, address, "jump", "an indirect jump through a register set elsewhere")
            return
        for target in self._reaching_leas(code, address, reg) or ():
            self._label(target, address)

    def _defer(self, code: _Code, address: int, kind: str, why: str) -> None:
        self.unresolved[address] = _Unresolved(code, kind, why)

    def _queue(self, target: int, table: int, jump: int) -> None:
        """A table entry's target, which ``jump`` reaches (or the load, when the sum goes
        through memory)."""
        if self.code_of(target) is None:
            raise self.imap.error(table, f"a table entry reaches {target:#x}, outside the code")
        self.work.append(target)
        self.origin.setdefault(target, table)
        self._edge(jump, target)

    def _label(self, target: int, jump: int) -> None:
        """A label an indirect jump reaches."""
        code = self.code_of(target)
        if code is None or code.linear or code.state[target - code.base] == _DATA:
            return  # not our code, or a table (its own load resolves it)
        self.work.append(target)
        self.origin.setdefault(target, jump)
        self._edge(jump, target)

    def _predecessors(self, code: _Code, address: int) -> list[int]:
        """The decoded instructions control reaches ``address`` from: jumps to it, and the
        instruction before it if that falls through."""
        before = list(self.sources.get(address, []))
        previous = code.previous(address)
        if previous is not None and not ends_path(code.at(previous)):
            before.append(previous)
        return before

    def _chain(self, code: _Code, address: int) -> tuple[list[Instruction], frozenset[int]]:
        """A path of decoded instructions that leads to ``address``, oldest first (at most
        CHAIN): back through the instruction before each as long as it falls through, and at
        the start of a block that only a conditional branch enters, through that branch
        (whose address is then in the second result: the path takes it)."""
        out: list[Instruction] = []
        taken: set[int] = set()
        at = address
        while len(out) < CHAIN:
            previous = code.previous(at)
            if previous is not None and not ends_path(insn := code.at(previous)):
                out.append(insn)
                at = previous
                continue
            sources = self.sources.get(at, [])
            if len(sources) != 1 or at in self.entries or sources[0] in taken:
                break
            insn = code.at(sources[0])
            if insn.flow_control != FlowControl.CONDITIONAL_BRANCH:
                break
            out.append(insn)
            taken.add(sources[0])
            at = sources[0]
        out.reverse()
        return out, frozenset(taken)

    def _reaching_leas(self, code: _Code, address: int, reg: int) -> set[int] | None:
        """The targets of the ``lea label(%rip)`` that define ``reg`` for the instruction at
        ``address`` on every control-flow path to it, through 64-bit register copies; None if
        some path reaches it from a function start, a landing pad or a table entry without one,
        or through another write."""
        sources = self.sources
        seen: set[tuple[int, int]] = set()
        todo = [(address, reg)]
        found: set[int] = set()
        while todo:
            at, reg = todo.pop()
            before = sources.get(at, [])
            previous = code.previous(at)
            if previous is not None and not ends_path(code.at(previous)):
                before = [*before, previous]
            if not before or at in self.entries:
                return None
            for p in before:
                if (p, reg) in seen:
                    continue
                seen.add((p, reg))
                if len(seen) > REACHING_BUDGET:
                    return None
                insn = code.at(p)
                if insn.flow_control in _CALLS and reg in CALLER_SAVED:
                    return None  # the value might come from the call
                if reg not in written_registers(insn):
                    todo.append((p, reg))
                elif rip_lea(insn):
                    found.add(int(insn.memory_displacement))
                elif (copied := copied_register(insn)) is not None:
                    todo.append((p, copied))
                else:
                    return None
        return found or None

    def _function_leas(self, code: _Code, address: int, reg: int | None) -> list[int]:
        """Targets of every decoded ``lea label(%rip), reg`` (any register with None) of the
        function holding ``address``."""
        lo, hi = code.function(address)
        state = np.frombuffer(bytes(code.state[lo - code.base : hi - code.base]), dtype=np.uint8)
        out = []
        for off in np.flatnonzero((state > 0) & (state <= MAX_INSTRUCTION)).tolist():
            insn = code.at(lo + off)
            if rip_lea(insn) and reg in (None, RegisterExt.full_register(insn.op0_register)):
                out.append(int(insn.memory_displacement))
        return out

    def _edge(self, source: int, target: int) -> None:
        self.sources.setdefault(target, []).append(source)
        self.jumped.append(target)

    def _extent(self, code: _Code, table: int, cap: int | None) -> int | None:
        """Entry count of a jump table no range check bounds: the entries from ``table`` on that
        reach its function outside the table, up to the next function, table (or any
        address a ``lea`` encoding in the function's bytes would form), decoded instruction or
        end of data-in-code, and at most ``cap`` (see the module docstring)."""
        lo, hi = code.function(table)
        hi_function = hi
        leas = _lea_targets(code, lo, hi).tolist()
        later = [t for t in (*self.found, *self.unbounded, *leas) if table < t < hi]
        later += [end for start, end in code.region.data_in_code if start <= table < end]
        hi = min([hi, *later])
        span = code.state[table - code.base : hi - code.base]
        decoded = next((i for i, b in enumerate(span) if b and b != _DATA), len(span))
        n = decoded // 4 if cap is None else min(cap, decoded // 4)
        words = np.frombuffer(code.content, dtype="<i4", count=n, offset=table - code.base).astype(np.int64)
        reach = table + words
        inside = (reach >= lo) & (reach < hi_function) & ((reach < table) | (reach >= table + 4 * n))
        n = n if inside.all() else int(np.argmin(inside))
        return n or None

    def _entries(self, table: int, count: int, load: int) -> list[int]:
        """The addresses the ``count`` entries of the table at ``table`` reach; all must lie in
        the table's segment (the entries are then deltas that moving segments never changes)."""
        sect = self.image.section_for_address(table)
        if sect is None or sect.is_zerofill or table + 4 * count > sect.addr + sect.size:
            raise self.imap.error(load, f"a table at {table:#x} of {count} entries is not inside a section")
        content = bytes(self.image.section_content(sect))
        words = np.frombuffer(content, dtype="<i4", count=count, offset=table - sect.addr).astype(np.int64)
        targets = table + words
        segs = self.imap.segment_of(np.concatenate([[table], targets]))
        if np.any(segs[1:] != segs[0]):
            bad = int(targets[np.flatnonzero(segs[1:] != segs[0])[0]])
            raise self.imap.error(table, f"a table entry reaches {bad:#x} in another segment")
        return [int(t) for t in np.unique(targets)]

    def _mark_table(self, code: _Code, start: int, count: int) -> None:
        off = start - code.base
        end = off + 4 * count
        if end > len(code.state):
            raise self.imap.error(start, "a table runs past the end of its section")
        span = code.state[off:end]
        if span.count(0) + span.count(_DATA) != len(span):
            if start in self.known:
                raise self.imap.error(start, "a table overlaps instructions")
            raise _Restart
        code.state[off:end] = bytes([_DATA]) * (end - off)
        code.tables[start] = count

    # -- the end ----------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse the image unless every byte of the code is explained."""
        for address, item in sorted(self.unresolved.items()):
            if item.kind == "site":
                raise self.imap.error(address, item.why)
        for code in self.codes:
            self._gaps(code)

    def _gaps(self, code: _Code) -> None:
        state = np.frombuffer(bytes(code.state), dtype=np.uint8)
        unknown = np.flatnonzero(state == 0)
        if not len(unknown):
            return
        breaks = np.flatnonzero(np.diff(unknown) > 1)
        starts = unknown[np.concatenate([[0], breaks + 1])]
        ends = unknown[np.concatenate([breaks, [len(unknown) - 1]])] + 1
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            if left_alone(code.content[lo:hi]):
                continue
            address = code.base + lo
            why = f"{hi - lo} bytes that no control flow reaches and no data-in-code or table explains"
            undone = self.undone.get(address)
            if undone is not None:
                why += f"; after the call before them: {undone.message} at {undone.address:#x}"
            raise self.imap.error(address, why)

    def result(self) -> Explored:
        maps = []
        for c in self.codes:
            state = np.frombuffer(bytes(c.state), dtype=np.uint8)
            lengths = np.where(state <= MAX_INSTRUCTION, state, 0).astype(np.uint8)
            maps.append(
                CodeMap(
                    c.region.section, c.content, lengths, np.frombuffer(bytes(c.refs), np.uint8), c.tables
                )
            )
        return Explored(maps, self._relative_tables(), self.count)

    def _relative_tables(self) -> list[tuple[int, int | None]]:
        """The relative tables, each with its count only if its range check dominates its
        load: control reaches each instruction of the path from the check to the load only
        from the one before it."""
        out: list[tuple[int, int | None]] = []
        for table, count, path in self.relative:
            code = self.code_of(path[-1])
            if count is not None and code is not None:
                for before, at in itertools.pairwise(path):
                    if set(self._predecessors(code, at)) != {before} or at in self.entries:
                        count = None
                        break
            out.append((table, count))
        return sorted(set(out), key=lambda t: (t[0], -1 if t[1] is None else t[1]))


def _lea_targets(code: _Code, lo: int, hi: int) -> np.ndarray:
    """What every byte sequence in [lo, hi) that reads as ``lea disp32(%rip), r64`` would
    address, decoded or not: where another table may start (a bound, never a table)."""
    raw = np.frombuffer(code.content, dtype=np.uint8)[lo - code.base : hi - code.base]
    if len(raw) < 7:
        return np.zeros(0, dtype=np.int64)
    rex, opcode, modrm = raw[:-6], raw[1:-5], raw[2:-4]
    at = np.flatnonzero(((rex & 0xFB) == 0x48) & (opcode == 0x8D) & ((modrm & 0xC7) == 0x05))
    disp = raw[at[:, None] + np.arange(3, 7)].copy().view("<i4").reshape(-1).astype(np.int64)
    targets: np.ndarray = lo + at + 7 + disp
    return targets


def explore(image: MachOFile, imap: ImageMap, entries: Iterable[int]) -> Explored:
    """Decode the x86_64 code of ``image`` from ``entries`` and LC_FUNCTION_STARTS (see the
    module docstring), or refuse it."""
    entries = list(entries) + [int(a) for a in image.function_starts]
    regions = code_regions(image, imap)
    known: dict[int, int] = {}
    for _ in range(MAX_ROUNDS):
        descent = _Descent(image, imap, regions, known)
        try:
            descent.run(entries)
        except _Restart:
            known = {**known, **descent.found}
            continue
        if any(descent.found.get(t) != n for t, n in known.items()):
            known = dict(descent.found)  # a table known from before that nothing reads now
            continue
        descent.check()
        return descent.result()
    raise SplitSegSynthesisError(image.path, None, None, "jump tables keep turning up inside decoded code")
