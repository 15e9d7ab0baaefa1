"""Worker processes for the builder's parallel steps (phase 1's examination of the inputs and
the per-dylib passes): ``task(0) ... task(count - 1)`` in forked processes, results in order.

Workers are forked, so ``task`` (a bound method, a closure) and the state it reads are
inherited, not pickled; only indexes go to a worker and only results come back. Each worker
ignores SIGINT. The parent hands out chunks of indexes one at a time over a pipe per worker and
waits on the pipes itself (no helper threads): when anything stops it, a Ctrl-C or an error,
it kills its workers and reaps them before the exception goes on, so an interrupted build
ends at once and leaves no process behind.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from ..errors import BuildError
from ..interrupts import ignore_interrupts, interrupts_deferred

T = TypeVar("T")

#: each chunk handed out is this share of what is left per worker: big chunks while much is
#: left (few messages), single tasks at the end, so that no worker idles long while another
#: finishes a big chunk
GUIDED_SHARE = 4
#: and no chunk is more than 1/(jobs * this) of all tasks (what a worker holds before replying)
MAX_CHUNK_SHARE = 8


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def run_tasks(
    task: Callable[[int], T],
    count: int,
    jobs: int,
    *,
    on_result: Callable[[], None] | None = None,
) -> list[T]:
    """``[task(i) for i in range(count)]``, in ``jobs`` forked workers when ``jobs > 1`` and this
    OS can fork. ``on_result`` is called in this process once per finished task (progress)."""
    if jobs <= 1 or count <= 1 or not can_fork():
        out = []
        for i in range(count):
            out.append(task(i))
            if on_result is not None:
                on_result()
        return out
    return _Workers(task, count, min(jobs, count)).run(on_result)


def guided_chunks(count: int, jobs: int) -> list[range]:
    """``range(count)`` cut into chunks for ``jobs`` workers, largest first (guided scheduling):
    each takes 1/GUIDED_SHARE of what is left per worker, at least one task, at most
    1/MAX_CHUNK_SHARE of all tasks per worker."""
    out = []
    lo = 0
    largest = max(1, count // (jobs * MAX_CHUNK_SHARE))
    while lo < count:
        size = max(1, min(largest, (count - lo) // (jobs * GUIDED_SHARE)))
        out.append(range(lo, lo + size))
        lo += size
    return out


class _Workers:
    def __init__(self, task: Callable[[int], Any], count: int, jobs: int) -> None:
        self.task = task
        self.count = count
        self.jobs = jobs
        self.chunks = guided_chunks(count, jobs)
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []

    def run(self, on_result: Callable[[], None] | None) -> list[Any]:
        results: list[Any] = [None] * self.count
        try:
            # a SIGINT while forking waits until every worker is started (and ignores SIGINT)
            with interrupts_deferred():
                self._start()
            busy: dict[Connection, range] = {}
            next_chunk = 0
            for pipe in self.pipes:
                if next_chunk < len(self.chunks):
                    pipe.send((self.chunks[next_chunk].start, self.chunks[next_chunk].stop))
                    busy[pipe] = self.chunks[next_chunk]
                    next_chunk += 1
            while busy:
                for ready in wait(list(busy)):
                    assert isinstance(ready, Connection)
                    chunk = busy.pop(ready)
                    try:
                        reply = ready.recv()
                    except EOFError:
                        raise BuildError(
                            f"a worker process died while building dylibs {chunk.start}-{chunk.stop - 1} "
                            "(out of memory?); try fewer workers (-j)"
                        ) from None
                    if isinstance(reply, _WorkerFailure):
                        raise BuildError(f"internal: a worker failed: {reply.text}")
                    for i, value in zip(chunk, reply, strict=True):
                        results[i] = value
                        if on_result is not None:
                            on_result()
                    if next_chunk < len(self.chunks):
                        c = self.chunks[next_chunk]
                        ready.send((c.start, c.stop))
                        busy[ready] = c
                        next_chunk += 1
            self._stop()
        except BaseException:
            self._kill()
            raise
        return results

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        for _ in range(self.jobs):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=self._serve, args=(child_end, parent_end), daemon=True)
            self.pipes.append(parent_end)
            self.processes.append(process)
            process.start()
            child_end.close()

    def _serve(self, pipe: Connection, parent_end: Connection) -> None:
        """A worker's loop: chunks of indexes in, lists of results out, until None or EOF."""
        ignore_interrupts()
        parent_end.close()
        for other in self.pipes[:-1]:  # the pipes of earlier workers, inherited through fork
            other.close()
        while True:
            try:
                job = pipe.recv()
            except EOFError:
                return
            if job is None:
                return
            try:
                reply: Any = [self.task(i) for i in range(*job)]
            except BaseException:  # a bug in a task: the parent reports it
                reply = _WorkerFailure(traceback.format_exc(limit=-3))
            pipe.send(reply)

    def _stop(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
            pipe.close()
        for process in self.processes:
            process.join()

    def _kill(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                process.kill()
        for process in self.processes:
            if process.pid is not None:
                process.join()
        for pipe in self.pipes:
            pipe.close()


class _WorkerFailure:
    def __init__(self, text: str) -> None:
        self.text = text
