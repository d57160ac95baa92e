"""The ``--executor`` flags shared by ``generate`` and ``score`` (see humanline_data.executors);
their defaults are :class:`~humanline_data.executor_settings.Executor`'s."""

from __future__ import annotations

import functools

import click

from humanline_data.executor_settings import EXECUTORS, Executor

_OPTIONS = [
    click.option("--executor", "executor_name", type=click.Choice(EXECUTORS), default=Executor.name, show_default=True,
                 help="local = this process; ray = a Ray Data actor pool on RAY_ADDRESS (else a local Ray)."),
    click.option("--actors", type=int, default=Executor.actors,
                 help="ray: actors in the pool, one model or scorer each [default: as many as the cluster fits]."),
    click.option("--num-cpus-per-actor", type=float, default=Executor.num_cpus_per_actor, show_default=True,
                 help="ray: CPUs each actor reserves."),
    click.option("--num-gpus-per-actor", type=float, default=Executor.num_gpus_per_actor, show_default=True,
                 help="ray: GPUs each actor reserves (1 for a vLLM engine on its own GPU)."),
]


def executor_options(command):
    """Add the executor flags to ``command``; it receives them as one ``executor`` argument."""
    @functools.wraps(command)
    def wrapped(executor_name, actors, num_cpus_per_actor, num_gpus_per_actor, **kwargs):
        return command(executor=Executor(executor_name, actors, num_cpus_per_actor, num_gpus_per_actor), **kwargs)

    for option in reversed(_OPTIONS):
        wrapped = option(wrapped)
    return wrapped
