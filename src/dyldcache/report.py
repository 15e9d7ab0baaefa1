"""What commands print for machines: the ``--json`` switch and the JSON document every command
writes with it (names that are not UTF-8 shown as ``\\xNN``, see :mod:`dyldcache.names`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .names import json_safe


def add_json_option(parser: argparse.ArgumentParser, help: str = "machine-readable output") -> None:
    """The ``--json`` switch every command has (``print_json`` prints the document)."""
    parser.add_argument("--json", action="store_true", help=help)


def print_json(doc: Any) -> None:
    """A command's ``--json`` document on standard output (names that are not UTF-8 as \\xNN)."""
    json.dump(json_safe(doc), sys.stdout, indent=2)
    sys.stdout.write("\n")
