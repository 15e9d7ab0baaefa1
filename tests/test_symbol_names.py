"""The symbol planner's view of names (builder/optimizers/symbol_strings.py ``_Names``): each
name runs from its n_strx to the next NUL, and the prefix test agrees with bytes.startswith."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.builder.optimizers.symbol_strings import _SKIPPED_GLOBAL_PREFIXES, _Names

_PREFIXES = tuple(p.encode() for p in _SKIPPED_GLOBAL_PREFIXES)
_name = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"_")),
    st.sampled_from([b".objc_", b".objc_x", b".obj", b"$ld$", b"$ld$add$os10.0$_x", b"$ld", b"_.objc_"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_name, max_size=30), st.data())
def test_names_and_prefixes(names: list[bytes], data: st.DataObject) -> None:
    table = b"\0" + b"".join(n + b"\0" for n in names)
    offsets = [1]
    for n in names[:-1]:
        offsets.append(offsets[-1] + len(n) + 1)
    # any offset into the table names what runs from there to the next NUL (a suffix, too)
    extra = data.draw(st.lists(st.integers(0, len(table)), max_size=10))
    strx = np.array(offsets[: len(names)] + extra, dtype=np.int64)
    d = SimpleNamespace(image=SimpleNamespace(symbol_table=SimpleNamespace(strings=table)))
    got = _Names(d, strx)  # type: ignore[arg-type]
    want = [table[o:].split(b"\0", 1)[0] for o in strx.tolist()]
    assert [table[a:b] for a, b in zip(got.starts.tolist(), got.ends.tolist(), strict=True)] == want
    assert got.starting_with(_PREFIXES).tolist() == [w.startswith(_PREFIXES) for w in want]
