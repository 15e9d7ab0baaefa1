"""How far a build has got: hooks the builder calls as it goes, and the terminal display that
``dyldcache build`` shows on a TTY (one line, phase by phase, drawn with tqdm).

The Python API's default, :class:`BuildProgress`, ignores every hook. The display draws on
standard error only; the command line uses it only when standard error is a terminal and
neither ``-q`` nor ``--json`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

#: the seven phases of builder/pipeline.py, in order, with what a person is told
PHASES: dict[str, str] = {
    "calculate_inputs": "reading the inputs",
    "estimate_global_optimizations": "estimating the global tables",
    "create_subcaches": "laying out the cache and creating the files",
    "pre_dylib_emit": "preparing the dylib passes",
    "run_dylib_passes": "copying, adjusting and binding the dylibs",
    "post_dylib_emit": "slide info, patch table and symbols",
    "finalize": "signing, checking and committing",
}
#: steps outside the seven phases (``build --example`` links its dylibs first)
EXTRA_STEPS: dict[str, str] = {"link_examples": "linking the example dylibs"}


class BuildProgress:
    """Progress hooks of :func:`dyldcache.build_cache`; this base class does nothing with them.

    ``on_committed`` is called once the new cache is in place: from then on the build cannot
    be undone (the command line stops honouring Ctrl-C at that point).
    """

    def __init__(self, on_committed: Callable[[], None] | None = None) -> None:
        self._on_committed = on_committed

    def phase(self, name: str) -> None:
        """A phase starts: a key of :data:`PHASES` or :data:`EXTRA_STEPS`."""

    def expect(self, total: int, unit: str) -> None:
        """The current phase has ``total`` steps, counted in ``unit`` ("files", "dylibs")."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps of the current phase are done."""

    def retry(self, evicted: int) -> None:
        """The build starts over: ``evicted`` more dylibs failed a later phase (see build_cache)."""

    def committed(self) -> None:
        """The output files are in place."""
        if self._on_committed is not None:
            self._on_committed()

    def close(self) -> None:
        """The build is over (done, failed or interrupted): remove any display."""


class TerminalProgress(BuildProgress):
    """One tqdm line on ``stream``, for instance
    ``[5/7] copying, adjusting and binding the dylibs |####    | 312/600 dylibs [00:03]``."""

    WITH_TOTAL = "{desc} |{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}]"
    WITHOUT_TOTAL = "{desc} [{elapsed}]"

    def __init__(self, stream: TextIO, on_committed: Callable[[], None] | None = None) -> None:
        super().__init__(on_committed)
        self._stream = stream
        self._bar: Any = None  # drawn from the first phase on
        self._attempt = 1

    def _new_bar(self) -> Any:
        from tqdm import tqdm  # only when a terminal shows it

        tqdm.monitor_interval = 0  # no monitor thread: signals stay with the main thread
        return tqdm(
            total=None,
            file=self._stream,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.1,
            bar_format=self.WITHOUT_TOTAL,
            delay=1e-9,  # nothing is drawn before the first phase sets the text
        )

    def phase(self, name: str) -> None:
        if self._bar is None:
            self._bar = self._new_bar()
        elif self._bar.total:
            self._bar.refresh()  # the last count of the phase that ends
        if name in PHASES:
            desc = f"[{list(PHASES).index(name) + 1}/{len(PHASES)}] {PHASES[name]}"
        else:
            desc = EXTRA_STEPS.get(name, name)
        if self._attempt > 1:
            desc += f" (attempt {self._attempt})"
        self._bar.bar_format = self.WITHOUT_TOTAL
        self._bar.set_description_str(desc, refresh=False)
        self._bar.reset(total=float("inf"))  # no count until expect(); redraws

    def expect(self, total: int, unit: str) -> None:
        self._bar.bar_format = self.WITH_TOTAL
        self._bar.unit = unit
        self._bar.reset(total=total)

    def advance(self, steps: int = 1) -> None:
        self._bar.update(steps)
        if self._bar.n == self._bar.total:
            self._bar.refresh()

    def retry(self, evicted: int) -> None:
        self._attempt += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
