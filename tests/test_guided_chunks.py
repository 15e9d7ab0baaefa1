"""How the worker pool cuts its tasks (builder/workers.py ``guided_chunks``): every task once, in
order, in chunks that never grow, each a 1/(jobs * GUIDED_SHARE) share of what is left, capped
at 1/(jobs * MAX_CHUNK_SHARE) of all."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dyldcache.builder.workers import GUIDED_SHARE, MAX_CHUNK_SHARE, guided_chunks, run_tasks


@given(st.integers(0, 5000), st.integers(1, 16))
def test_chunks_cover_every_task_once_largest_first(count: int, jobs: int) -> None:
    chunks = guided_chunks(count, jobs)
    assert [i for c in chunks for i in c] == list(range(count))
    sizes = [len(c) for c in chunks]
    assert all(s >= 1 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    for c in chunks:
        left = count - c.start
        largest = max(1, count // (jobs * MAX_CHUNK_SHARE))
        assert len(c) == max(1, min(largest, left // (jobs * GUIDED_SHARE)))


def test_the_tail_is_single_tasks() -> None:
    sizes = [len(c) for c in guided_chunks(2000, 2)]
    assert sizes[0] == 2000 // 16  # capped: a worker holds at most 1/16 of the results
    assert sizes[-8:] == [1] * 8


def test_results_come_back_in_task_order_from_workers() -> None:
    assert run_tasks(lambda i: i * i, 300, 2) == [i * i for i in range(300)]
