"""Where a stage's work runs: in this process (``local``) or on a Ray cluster (``ray``).

A stage cuts its input into numbered *pieces* (Arrow tables; generate: one chunk of
``batch_size`` prompts, score: one batch of ``batch_size`` rows) and names a *worker*
(:mod:`humanline_data.executor_settings`, with the :class:`Executor` settings).

:func:`run` yields ``(key, result, info)`` for every piece. ``local`` builds one worker and
calls it on the pieces in order. ``ray`` builds one worker per actor of a Ray Data actor pool
and yields results as they finish, in any order (see :mod:`humanline_data.ray_executor`). The
stage itself, the driver, writes what it gets back, so both executors write the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing

import pyarrow as pa

from humanline_data import ray_executor
from humanline_data.executor_settings import Executor, Worker


def run(
    executor: Executor, make_worker: Callable[[], Worker], pieces: list[tuple[int, pa.Table]]
) -> Iterator[tuple[int, pa.Table, dict]]:
    """``(key, worker(piece), worker.info())`` for every ``(key, piece)``; see the module doc."""
    if not pieces:
        return iter(())
    if executor.name == "ray":
        return ray_executor.run(executor, make_worker, pieces)
    return _run_local(make_worker, pieces)


def _run_local(make_worker: Callable[[], Worker], pieces: list[tuple[int, pa.Table]]):
    with closing(make_worker()) as worker:
        info = worker.info()
        for key, piece in pieces:
            yield key, worker(piece), info
