"""Names and paths as bytes: symbol names, install names and file names need not be UTF-8.

Inside the program a name is a ``str`` that holds every byte that is not UTF-8 as a lone
surrogate (Python's ``surrogateescape``), so it encodes back to exactly the bytes it came
from: those are what the cache stores. What people read shows such a byte as ``\\xNN``, in text
and in JSON alike.
"""

from __future__ import annotations

import codecs
from typing import Any

ESCAPE_HANDLER = "dyldcache-escape"


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def printable(name: str) -> str:
    """``name`` for people: a byte that is not UTF-8 becomes the four characters ``\\xNN``."""
    return encode_name(name).decode("utf-8", "backslashreplace")


def json_safe(value: Any) -> Any:
    """``value`` with every string (keys too) made printable, for json.dump."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _escape(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: an escaped byte (lone surrogate) prints as ``\\xNN``, anything else a
    stream cannot encode as ``\\uNNNN``."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start : exc.end]:
        code = ord(ch)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
    return "".join(out), exc.end


codecs.register_error(ESCAPE_HANDLER, _escape)
