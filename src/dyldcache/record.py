"""A tiny base for fixed-size little-endian on-disk records.

Each record is a frozen, slotted dataclass whose fields are, in order, the
fields of one precompiled :class:`struct.Struct`. Reader and writer share the
declaration (see ``docs/style.md``: "each on-disk record is declared once").
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Self

from .errors import FormatError


class Record:
    """Mixin for ``@dataclass(frozen=True, slots=True)`` records.

    Subclasses set ``STRUCT``; the dataclass fields must be in the same order
    as the struct's items.
    """

    __slots__ = ()
    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]
    __match_args__: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "STRUCT" in cls.__dict__:
            cls.SIZE = cls.STRUCT.size

    @classmethod
    def unpack_from(cls, buf: Any, offset: int = 0) -> Self:
        """Read one record at ``offset``; raises :class:`struct.error` if ``buf`` is short."""
        return cls(*cls.STRUCT.unpack_from(buf, offset))

    @classmethod
    def read(
        cls, buf: Any, offset: int, path: str, what: str, error: type[FormatError] = FormatError
    ) -> Self:
        """Read one record, turning a short buffer into ``error`` (a :class:`FormatError`)."""
        if offset < 0 or offset + cls.SIZE > len(buf):
            raise error(path, offset, f"{what} ({cls.SIZE} bytes) extends past the end of the data")
        return cls(*cls.STRUCT.unpack_from(buf, offset))

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def pack(self) -> bytes:
        return self.STRUCT.pack(*self.values())

    def pack_into(self, buf: Any, offset: int) -> None:
        self.STRUCT.pack_into(buf, offset, *self.values())


def cstr(raw: bytes) -> str:
    """Decode a NUL-padded fixed-size name field (segment and section names)."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    return raw.decode("utf-8", "replace")


def name16(name: str) -> bytes:
    """Encode a segment or section name into its 16-byte field."""
    raw = name.encode()
    if len(raw) > 16:
        raise ValueError(f"name {name!r} is longer than 16 bytes")
    return raw.ljust(16, b"\0")
