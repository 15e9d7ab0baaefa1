"""Unaligned integer views of byte buffers: element i is the little-endian integer that starts at
byte i, so gathers and scatters at any byte offsets are one numpy index (no copy, no alignment)."""

from __future__ import annotations

from typing import Any

import numpy as np


def words_at(buf: Any, dtype: str = "<u8") -> np.ndarray:
    """``buf`` (anything exposing a buffer: a uint8 array, bytes, a memoryview, an mmap) viewed as
    ``dtype`` integers starting at every byte; writable when ``buf`` is."""
    size = np.dtype(dtype).itemsize
    n = memoryview(buf).nbytes
    return np.ndarray(shape=(max(n - size + 1, 0),), dtype=dtype, buffer=buf, strides=(1,))
