"""Issue 11's limit on module size: no module of the package over 800 lines, so that each stays
one concept a reader can hold (split a module that grows past it, by concept)."""

from __future__ import annotations

from conftest import REPO

LIMIT = 800


def test_no_module_over_800_lines() -> None:
    modules = sorted((REPO / "src" / "dyldcache").rglob("*.py"))
    assert len(modules) > 50  # the package is there
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in modules}
    over = {name: n for name, n in sizes.items() if n > LIMIT}
    assert not over, f"modules over {LIMIT} lines: {over}"
