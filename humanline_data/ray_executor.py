"""The ``ray`` executor: a stage's pieces mapped over a Ray Data actor pool.

The driver connects with ``ray.init()``: to ``RAY_ADDRESS`` when set, else to the Ray
instance last started on this machine, else to a new local one (all of this machine's CPUs and
GPUs). The pieces become a dataset of one row per piece, ``{key: int64, piece: Arrow IPC
stream}``, one block each, so every piece is one ``map_batches`` call (``batch_size=1``) on
whichever actor is free. Each actor builds the stage's worker once (one backend or scorer per
actor) and reserves ``num_cpus_per_actor`` CPUs and ``num_gpus_per_actor`` GPUs. Results come
back to the driver as ``{key, result: Arrow IPC stream, info: JSON}`` rows, in finishing order;
the driver writes them, so the output directory need not be visible from the workers. Pieces
travel as Arrow IPC bytes so that no column passes through Ray's pandas/numpy conversions.
A :class:`HumanlineError` raised by a worker (while it is built or on a piece) travels back
pickled in the row's ``error`` column and is raised again in the driver, so the command still
fails with its one line (Ray itself passes on only a wrapper holding the traceback text).

Every node must have humanline (with the same library versions) installed and the model
folder at the same path (or the embedded model name, converted per node).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator

import pyarrow as pa

from humanline_data.errors import HumanlineError
from humanline_data.executor_settings import Executor, Worker


def run(
    executor: Executor, make_worker: Callable[[], Worker], pieces: list[tuple[int, pa.Table]]
) -> Iterator[tuple[int, pa.Table, dict]]:
    """``(key, result, info)`` per piece, computed on the actor pool, in finishing order."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the stage draws its own
    items = [{"key": key, "piece": to_ipc(piece)} for key, piece in pieces]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    results = dataset.map_batches(
        _Actor,
        fn_constructor_args=(make_worker,),
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool_size(executor, len(items), ray.cluster_resources())),
        num_cpus=executor.num_cpus_per_actor,
        num_gpus=executor.num_gpus_per_actor,
    )
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        for key, result, info, error in zip(*(batch.column(c).to_pylist() for c in _OUTPUT_COLUMNS)):
            if error is not None:
                raise pickle.loads(error)
            yield key, from_ipc(result), json.loads(info)


def pool_size(executor: Executor, n_pieces: int, resources: dict) -> int:
    """Actors to start: ``executor.actors``, else as many as the cluster's CPUs and GPUs hold
    (``resources`` as ``ray.cluster_resources()``); never more than ``n_pieces``."""
    if executor.actors is not None:
        return min(executor.actors, n_pieces)
    fits = [resources.get("CPU", 0) / executor.num_cpus_per_actor] if executor.num_cpus_per_actor else []
    if executor.num_gpus_per_actor:
        fits.append(resources.get("GPU", 0) / executor.num_gpus_per_actor)
    size = int(min(fits)) if fits else n_pieces
    if size < 1:
        raise HumanlineError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs, "
            f"less than one actor needs ({executor.num_cpus_per_actor:g} CPUs, "
            f"{executor.num_gpus_per_actor:g} GPUs); give --actors to wait for an autoscaler"
        )
    return min(size, n_pieces)


_OUTPUT_COLUMNS = ("key", "result", "info", "error")


class _Actor:
    """One worker per actor; one call per dataset row (a piece). Output columns: ``key``,
    ``result`` (Arrow IPC), ``info`` (JSON) and ``error`` (a pickled HumanlineError, else null)."""

    def __init__(self, make_worker: Callable[[], Worker]) -> None:
        self.worker, self.info, self.error = None, "{}", None
        try:
            self.worker = make_worker()
            self.info = json.dumps(self.worker.info())
        except HumanlineError as exc:
            self.error = pickle.dumps(exc)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results, errors = [], []
        for piece in batch.column("piece").to_pylist():
            result, error = None, self.error
            if error is None:
                try:
                    result = to_ipc(self.worker(from_ipc(piece)))
                except HumanlineError as exc:
                    error = pickle.dumps(exc)
            results.append(result)
            errors.append(error)
        return pa.table(
            {
                "key": batch.column("key"),
                "result": pa.array(results, pa.large_binary()),
                "info": pa.array([self.info] * batch.num_rows, pa.string()),
                "error": pa.array(errors, pa.binary()),
            }
        )

    def __del__(self) -> None:
        if self.worker is not None:
            self.worker.close()


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()
