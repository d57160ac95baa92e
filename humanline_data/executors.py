"""Where a stage's work runs: in this process (``local``) or on a Ray cluster (``ray``).

A stage cuts its input into numbered *pieces* (Arrow tables; generate: one chunk of
``batch_size`` prompts, score: one batch of ``batch_size`` rows) and names a *worker*: a
picklable zero-argument factory building an object with

- ``__call__(piece: pa.Table) -> pa.Table``: the stage's work on one piece,
- ``info() -> dict``: what the manifest records about the worker (library versions, ...),
- ``close()``: release the model or processes it holds.

:func:`run` yields ``(key, result, info)`` for every piece. ``local`` builds one worker and
calls it on the pieces in order. ``ray`` builds one worker per actor of a Ray Data actor pool
and yields results as they finish, in any order (see :mod:`humanline_data.ray_executor`). The
stage itself, the driver, writes what it gets back, so both executors write the same bytes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass

import pyarrow as pa

from humanline_data.errors import HumanlineError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Executor:
    """``name`` in :data:`EXECUTORS`; for ``ray``: ``actors`` in the pool (None = as many as
    the cluster's free CPUs/GPUs hold, at most one per piece), and the CPUs and GPUs each actor
    reserves (fractions allowed, as in Ray)."""

    name: str = "local"
    actors: int | None = None
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0

    def check(self) -> None:
        """Raise a one-line HumanlineError for an unknown executor, bad sizes, Ray flags given
        to the local executor, or ``ray`` without Ray installed."""
        if self.name not in EXECUTORS:
            raise HumanlineError(f"unknown executor {self.name!r} (expected one of {', '.join(EXECUTORS)})")
        if self.name == "local":
            given = [
                flag
                for flag, value, default in (
                    ("--actors", self.actors, None),
                    ("--num-cpus-per-actor", self.num_cpus_per_actor, 1.0),
                    ("--num-gpus-per-actor", self.num_gpus_per_actor, 0.0),
                )
                if value != default
            ]
            if given:
                raise HumanlineError(f"{', '.join(given)} applies to --executor ray only")
            return
        problems = [
            (self.actors is not None and self.actors < 1, f"--actors must be >= 1, got {self.actors}"),
            (self.num_cpus_per_actor < 0, f"--num-cpus-per-actor must be >= 0, got {self.num_cpus_per_actor:g}"),
            (self.num_gpus_per_actor < 0, f"--num-gpus-per-actor must be >= 0, got {self.num_gpus_per_actor:g}"),
        ]
        for bad, message in problems:
            if bad:
                raise HumanlineError(message)
        if importlib.util.find_spec("ray") is None:
            raise HumanlineError("--executor ray needs Ray: pip install 'humanline[ray]'")

    def describe(self) -> dict:
        """What the manifest's producer records about the executor."""
        if self.name == "local":
            return {"name": "local"}
        from importlib.metadata import version

        return {
            "name": "ray",
            "ray": version("ray"),
            "num_cpus_per_actor": self.num_cpus_per_actor,
            "num_gpus_per_actor": self.num_gpus_per_actor,
        }


Worker = Callable[[pa.Table], pa.Table]


def run(
    executor: Executor, make_worker: Callable[[], Worker], pieces: list[tuple[int, pa.Table]]
) -> Iterator[tuple[int, pa.Table, dict]]:
    """``(key, worker(piece), worker.info())`` for every ``(key, piece)``; see the module doc."""
    if not pieces:
        return iter(())
    if executor.name == "ray":
        from humanline_data import ray_executor

        return ray_executor.run(executor, make_worker, pieces)
    return _run_local(make_worker, pieces)


def _run_local(make_worker: Callable[[], Worker], pieces: list[tuple[int, pa.Table]]):
    with closing(make_worker()) as worker:
        info = worker.info()
        for key, piece in pieces:
            yield key, worker(piece), info
