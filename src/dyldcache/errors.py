"""The project's exception types.

Every error that a user can cause (a malformed file, a bad option, an
unresolvable symbol) is a :class:`DyldCacheError`. The CLI turns those into one
line on stderr and an exit status; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class DyldCacheError(Exception):
    """Base class for every error a user can cause."""

    #: exit status the CLI uses for this kind of error
    exit_status = 1


class UsageError(DyldCacheError):
    """Bad command-line usage or an unusable required input (exit status 2)."""

    exit_status = 2


class FormatError(DyldCacheError):
    """A malformed binary input: names the file, the offset and the problem."""

    exit_status = 2

    def __init__(self, path: str, offset: int | None, message: str) -> None:
        self.path = path
        self.offset = offset
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"offset {self.offset:#x}: " if self.offset is not None else ""
        return f"{self.path}: {where}{self.message}"

    def __reduce__(self) -> tuple[type[FormatError], tuple[str, int | None, str]]:
        # keep the three fields when the error crosses a process boundary
        return (type(self), (self.path, self.offset, self.message))


class MachOFormatError(FormatError):
    """A malformed Mach-O file (or a Mach-O record inside a cache)."""


class CacheFormatError(FormatError):
    """A malformed dyld shared cache file."""


class TbdFormatError(FormatError):
    """A malformed text-based dylib stub (.tbd)."""


class LinkError(DyldCacheError):
    """The linker could not produce its output (undefined symbol, bad relocation...)."""


class InputError(DyldCacheError):
    """An input file that is missing, unreadable or of the wrong kind (exit status 2)."""

    exit_status = 2


class BuildError(DyldCacheError):
    """The cache builder could not produce a cache."""


class NothingPlacedError(BuildError):
    """No input dylib could be placed: ``evictions`` says why for each of them."""

    def __init__(self, message: str, evictions: list[object]) -> None:
        super().__init__(message)
        self.evictions = evictions


class SplitSegSynthesisError(DyldCacheError):
    """Split seg info cannot be derived for a dylib that has none (see ``dyldcache.synth``).

    Names the file, the section (``"__TEXT,__text"``), the offset in that section and why; the
    builder turns it into an eviction reason. Never a guess: a dylib that raises this is not
    placed.
    """

    def __init__(self, path: str, section: str | None, offset: int | None, message: str) -> None:
        self.path = path
        self.section = section
        self.offset = offset
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.section is not None:
            where = f"{self.section}" + (f"+{self.offset:#x}" if self.offset is not None else "") + ": "
        return f"{self.path}: {where}{self.message}"

    def __reduce__(
        self,
    ) -> tuple[type[SplitSegSynthesisError], tuple[str, str | None, int | None, str]]:
        # keep the four fields when the error crosses a process boundary
        return (type(self), (self.path, self.section, self.offset, self.message))
