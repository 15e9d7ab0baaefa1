#!/usr/bin/env python3
"""How much memory the builder's decoded inputs take, per kind: for every dylib of a corpus,
the three decodes that phase 1's workers send back to the builder process and that it keeps
for the whole build (``builder/inputs.py``: ``fixups``, ``split_seg``, ``exports``), each
pickled as the worker pipe does and unpickled under tracemalloc (the bytes it really occupies
once received, Python objects and numpy arrays alike).

    python benchmarks/decoded_sizes.py ROOT.json [--limit N]

Prints, per kind: the pickled MiB, the MiB held after unpickling, and the bytes held per byte
of input.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import dyldcache  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))

from dyldcache.macho.file import open_macho  # noqa: E402

MIB = 1 << 20
KINDS = ("fixups", "split_seg", "exports")


def held_bytes(blob: bytes) -> tuple[int, object]:
    """Bytes that unpickling ``blob`` leaves allocated (tracemalloc), and the object."""
    before = tracemalloc.get_traced_memory()[0]
    obj = pickle.loads(blob)
    return tracemalloc.get_traced_memory()[0] - before, obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("manifest")
    ap.add_argument("--limit", type=int, default=0, help="only the first N dylibs (0: all)")
    args = ap.parse_args(argv)
    with open(args.manifest, encoding="utf-8") as f:
        corpus = json.load(f)
    dylibs = corpus["dylibs"][: args.limit or None]
    totals = {k: [0, 0] for k in KINDS}  # pickled, held
    input_bytes = 0
    tracemalloc.start(1)
    for d in dylibs:
        path = os.path.join(corpus["root"], d["install_name"].lstrip("/"))
        image = open_macho(path)
        input_bytes += os.path.getsize(path)
        for kind in KINDS:
            blob = pickle.dumps(getattr(image, kind), protocol=pickle.HIGHEST_PROTOCOL)
            held, obj = held_bytes(blob)
            totals[kind][0] += len(blob)
            totals[kind][1] += held
            del obj
        del image
    tracemalloc.stop()
    print(f"{len(dylibs)} dylibs, {input_bytes / MIB:.1f} MiB of input")
    print(f"{'kind':<10} {'pickled MiB':>12} {'held MiB':>10} {'held / input':>13}")
    for kind, (pickled, held) in totals.items():
        print(f"{kind:<10} {pickled / MIB:12.1f} {held / MIB:10.1f} {held / input_bytes:13.2f}")
    pickled, held = (sum(v[i] for v in totals.values()) for i in range(2))
    print(f"{'all':<10} {pickled / MIB:12.1f} {held / MIB:10.1f} {held / input_bytes:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
