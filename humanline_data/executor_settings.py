"""Which executor runs a stage's work, with its sizes (the ``--executor`` flags), and what a
worker is: the types that :mod:`humanline_data.executors` and
:mod:`humanline_data.ray_executor` share.

A *worker* is built by a picklable zero-argument factory and has

- ``__call__(piece: pa.Table) -> pa.Table``: the stage's work on one piece,
- ``info() -> dict``: what the manifest records about the worker (library versions, ...),
- ``close()``: release the model or processes it holds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, fields

import pyarrow as pa

from humanline_data.errors import HumanlineError

EXECUTORS = ("local", "ray")

Worker = Callable[[pa.Table], pa.Table]


@dataclass(frozen=True)
class Executor:
    """``name`` in :data:`EXECUTORS`; for ``ray``: ``actors`` in the pool (None = as many as
    the cluster's free CPUs/GPUs hold, at most one per piece), and the CPUs and GPUs each actor
    reserves (fractions allowed, as in Ray). The defaults are the flags' defaults."""

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
            given = [f"--{f.name.replace('_', '-')}" for f in fields(self)
                     if f.name != "name" and getattr(self, f.name) != f.default]
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
