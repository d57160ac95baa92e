"""The generate stage: prompts -> ``n`` sampled completions each (kind completions), resumable,
shardable; and ``merge``, which joins completions versions (e.g. the shards of one job).

Seeding: sample ``j`` of prompt ``p`` is drawn with its own seed
``backends.sample_seed(seed, prompt_id, j)``, so it does not depend on batch composition, on
the shard it falls in, or on where an interrupted run resumed.

Resuming: prompts are processed in chunks of ``batch_size`` prompts (one backend call each).
Each finished chunk is written atomically to ``<out>/.partial-<key>/chunk-NNNNNN.parquet``,
where ``key`` hashes the input version's manifest, the model's content hash and every parameter
that changes the output. Re-running the same command after an interruption skips the chunks on
disk; once the version is committed the work directory is removed. A run with other parameters
uses another work directory (stale ones from abandoned runs can be deleted by hand). The work
directory is a marked work folder (:mod:`humanline_data.workdirs`) that the run holds locked:
a second run of the same job while the first lives is refused, and a ``.partial-<key>`` folder
without the marker (not made by this stage) is refused rather than used or deleted. An OSError
while writing a chunk (a full disk) stops the run with one line; the chunks written so far stay
for the resume.

Executors (:mod:`humanline_data.executors`): each chunk is one piece of work for the
:class:`ChunkSampler` worker, run in this process (``local``) or on a Ray actor pool (``ray``).
The driver writes every chunk it gets back, so chunks, resume and the committed version are the
same for both; the executor is not part of the run key (a run killed under one executor can be
resumed under the other) and is recorded in ``producer["executor"]``.

Empty completions (the model emits eos at once, or only whitespace) are not valid rows of the
data contract: they are left out of the version and counted in ``stats["empty_completions"]``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from humanline_data import executors, workdirs
from humanline_data.backends import (
    Backend,
    GenerationError,
    SamplingParams,
    load_backend,
    load_tokenizer,
    resolve_backend_name,
    sample_seed,
)
from humanline_data.errors import HumanlineError, SchemaError, WrongKindError, os_errors
from humanline_data.executor_settings import Executor
from humanline_data.models import EMBEDDED_MODEL, model_fingerprint, model_identity, resolve_model
from humanline_data.outputs import check_output
from humanline_data.ranges import check_fields
from humanline_data.schema import SCHEMAS
from humanline_data.store import Version, iter_batches, open_version, write_version

PROMPT_COLUMNS = ["prompt_id", "messages", "answer", "source", "split", "metadata"]
SAMPLED_KINDS = ("completions", "scored")  # kinds whose rows are keyed by (prompt_id, sample_idx)


def generate(
    prompts,
    out,
    model,
    n: int = SamplingParams.n,
    temperature: float = SamplingParams.temperature,
    top_p: float = SamplingParams.top_p,
    max_new_tokens: int = SamplingParams.max_new_tokens,
    seed: int = SamplingParams.seed,
    backend: str | Backend = "auto",
    batch_size: int = 16,
    shard_index: int = 0,
    num_shards: int = 1,
    limit: int | None = None,
    executor: Executor = Executor(),
    lineage: dict | None = None,
) -> Path:
    """Sample ``n`` completions of each prompt of ``prompts`` (a prompts, completions or scored
    version; the latter two give their distinct prompts) with ``model`` and write them as the
    next completions version of ``out``; return its path.

    ``limit`` keeps the first ``limit`` distinct prompts; then only the prompts whose id hashes
    to ``shard_index`` modulo ``num_shards`` are kept, so ``num_shards`` runs split one job.
    ``executor`` says where the chunks are sampled (see the module doc).

    ``backend``: a name in ``BACKENDS`` (loaded from ``model`` by each worker), or an already
    loaded backend holding the weights of ``model`` (an online run's live engine; local
    executor only, left open). ``lineage``: more producer keys naming those weights (e.g. the
    training step).
    """
    params = SamplingParams(n, temperature, top_p, max_new_tokens, seed)
    _check_args(params, batch_size, shard_index, num_shards, limit)
    executor.check()
    out = check_output(out, "dataset")
    source = open_version(prompts, kinds=("prompts", *SAMPLED_KINDS))
    table = shard(distinct_prompts(source, limit), shard_index, num_shards)
    model_path = resolve_model(model)
    identity = model_identity(model_path)
    backend_name = resolve_backend_name(backend) if isinstance(backend, str) else backend.name
    run_params = {
        "model": str(model),
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "backend": backend_name,
        "batch_size": batch_size,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "limit": limit,
        "seeding": "per (seed, prompt_id, sample_idx)",
    }
    constants = {
        "generator": identity["model"],
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    work = out / f".partial-{_run_key(source, identity, run_params)}"
    chunks = [table.slice(start, batch_size) for start in range(0, table.num_rows, batch_size)]
    todo = [k for k in range(len(chunks)) if not _chunk_path(work, k).is_file()]
    if todo:
        load_tokenizer(model_path)  # a model without a chat template is refused before workers start
    if isinstance(backend, str):
        # the embedded model travels by name (each node converts its own copy), a folder by path
        model_arg = EMBEDDED_MODEL if str(model) == EMBEDDED_MODEL else str(model_path.resolve())
        sampler = functools.partial(ChunkSampler.load, model_arg, identity["model_sha256"], backend_name, params, constants)
    elif executor.name != "local":
        raise GenerationError("a live backend samples in this process: use the local executor")
    else:
        sampler = functools.partial(ChunkSampler, backend, params, constants, owned=False)
    folder = workdirs.claim(work, "generate") if os.path.lexists(work) or todo else None
    try:
        results = executors.run(executor, sampler, [(k, chunks[k]) for k in todo])
        versions = _write_chunks(results, chunks, todo, folder, params)
        producer = {**identity, **(lineage or {}), "backend": backend_name, "versions": versions,
                    "executor": executor.describe()}
        stats = {"prompts": table.num_rows, "chunks": len(chunks), "resumed_chunks": len(chunks) - len(todo)}
        path = _commit(work, len(chunks), out, source, run_params, producer, stats)
    except BaseException:
        if folder is not None:
            folder.release()  # the chunks written so far stay for a resume
        raise
    if folder is not None:
        folder.remove()
    return path


def merge(inputs: list, out) -> Path:
    """Join completions (or scored) versions into the next version of ``out``; parents = all
    inputs. Raises on mixed kinds and on a (prompt_id, sample_idx) present twice."""
    if not inputs:
        raise GenerationError("merge: no input versions given")
    check_output(out, "dataset")
    versions = [open_version(p, kinds=SAMPLED_KINDS) for p in inputs]
    kinds = {v.kind for v in versions}
    if len(kinds) > 1:
        listing = ", ".join(f"{v.path} ({v.kind})" for v in versions)
        raise WrongKindError(f"merge: inputs have different kinds: {listing}")
    _check_no_duplicates(versions)
    stats = {"rows_per_input": [v.manifest["rows"] for v in versions]}
    with write_version(
        out,
        versions[0].kind,
        params={"inputs": [str(v.path) for v in versions]},
        parents=[v.parent_ref() for v in versions],
        producer={"stage": "merge"},
        stats=stats,
    ) as writer:
        for v in versions:
            for batch in iter_batches(v):
                writer.write(pa.Table.from_batches([batch]))
    return writer.path


def distinct_prompts(version: Version, limit: int | None = None) -> pa.Table:
    """The version's prompts (prompt columns only), each prompt_id once at its first row, in
    row order; the first ``limit`` of them when given."""
    table = version.read(columns=PROMPT_COLUMNS)
    if version.kind != "prompts":
        first = (
            table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
            .group_by("prompt_id")
            .aggregate([("_row", "min")])
            .column("_row_min")
        )
        table = table.take(pc.take(first, pc.sort_indices(first)))
    return table if limit is None else table.slice(0, limit)


def shard(table: pa.Table, shard_index: int, num_shards: int) -> pa.Table:
    """Rows whose prompt_id hashes to ``shard_index`` modulo ``num_shards`` (order kept)."""
    if num_shards == 1:
        return table
    keep = [_shard_of(pid, num_shards) == shard_index for pid in table.column("prompt_id").to_pylist()]
    return table.filter(pa.array(keep, pa.bool_()))


def _shard_of(prompt_id: str, num_shards: int) -> int:
    return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "little") % num_shards


def _check_args(params: SamplingParams, batch_size: int, shard_index: int, num_shards: int, limit) -> None:
    try:
        check_fields(params)
    except HumanlineError as err:
        raise GenerationError(str(err)) from None
    problems = [
        (batch_size < 1, f"batch_size must be >= 1, got {batch_size}"),
        (num_shards < 1, f"num_shards must be >= 1, got {num_shards}"),
        (not 0 <= shard_index < num_shards, f"shard_index must be in [0, {num_shards}), got {shard_index}"),
        (limit is not None and limit < 0, f"limit must be >= 0, got {limit}"),
    ]
    for bad, message in problems:
        if bad:
            raise GenerationError(message)


def _run_key(source: Version, identity: dict, run_params: dict) -> str:
    """16 hex digits naming one job: input manifest, model content and output-changing params."""
    manifest_sha = source.parent_ref()["manifest_sha256"]
    blob = json.dumps([manifest_sha, identity["model_sha256"], run_params], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _chunk_path(work: Path, k: int) -> Path:
    return work / f"chunk-{k:06d}.parquet"


class ChunkSampler:
    """The generate stage's worker (see :mod:`humanline_data.executor_settings`): turns a chunk
    of prompts (prompt columns) into its completions rows (all ``n`` samples of every prompt,
    empties included; schema ``SCHEMAS["completions"]``) with ``backend``, which it closes at
    the end when it ``owned`` it."""

    def __init__(self, backend: Backend, params: SamplingParams, constants: dict, owned: bool = True):
        self.backend, self.params, self.constants, self.owned = backend, params, constants, owned

    @classmethod
    def load(cls, model: str, model_sha256: str, backend: str, params: SamplingParams, constants: dict) -> "ChunkSampler":
        """A worker with its own ``backend`` loaded from ``model`` (the embedded model's name or a
        folder path), whose content hash must equal ``model_sha256`` (the driver's), so that
        every worker samples the driver's model."""
        path = resolve_model(model)
        found = model_fingerprint(path)
        if found != model_sha256:
            raise GenerationError(
                f"model {path} here has content hash {found}, the driver's has {model_sha256}; "
                "every worker needs the same model"
            )
        return cls(load_backend(backend, path, seed=params.seed), params, constants)

    def __call__(self, chunk: pa.Table) -> pa.Table:
        rows = sample_chunk(self.backend, chunk, self.params, self.constants)
        return pa.Table.from_pylist(rows, schema=SCHEMAS["completions"])

    def info(self) -> dict:
        return {"versions": self.backend.versions()}

    def close(self) -> None:
        if self.owned:
            self.backend.close()


def _write_chunks(
    results: Iterator[tuple[int, pa.Table, dict]], chunks: list[pa.Table], todo: list[int],
    work: workdirs.WorkFolder | None, params: SamplingParams,
) -> dict:
    """Write each ``(k, rows, info)`` of ``results`` (the chunks numbered ``todo``, in any
    order) atomically into the work folder ``work``, showing progress; return the workers'
    library versions (empty when nothing was left to do)."""
    console = Console(stderr=True)
    pending = set(todo)
    done_before = sum(c.num_rows for k, c in enumerate(chunks) if k not in pending)
    total = sum(c.num_rows for c in chunks) * params.n
    columns = [
        TextColumn("[bold]generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("completions  {task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    tokens, started, versions = 0, time.perf_counter(), {}
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("generate", total=total, completed=done_before * params.n, rate="")
        for k, rows, info in results:
            _write_atomic(rows, _chunk_path(work.path, k))
            versions = info["versions"]
            tokens += pc.sum(rows.column("completion_tokens")).as_py() or 0
            rate = f"{tokens / (time.perf_counter() - started):.1f} tokens/s"
            progress.update(task, advance=rows.num_rows, rate=rate)
    return versions


def sample_chunk(backend: Backend, chunk: pa.Table, params: SamplingParams, constants: dict) -> list[dict]:
    """All ``n`` samples of every prompt of ``chunk`` as completions rows (empties included)."""
    prompts = chunk.to_pylist()
    seeds = [[sample_seed(params.seed, p["prompt_id"], j) for j in range(params.n)] for p in prompts]
    samples = backend.generate([p["messages"] for p in prompts], seeds, params)
    rows = []
    for prompt, drawn in zip(prompts, samples):
        for j, s in enumerate(drawn):
            rows.append(
                {
                    **prompt,
                    "sample_idx": j,
                    "completion": s.text,
                    "completion_tokens": s.tokens,
                    "finish_reason": s.finish_reason,
                    "logprob_sum": s.logprob_sum,
                    **constants,
                }
            )
    return rows


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` by rename; an OSError (full disk) is one line and leaves no
    partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os_errors(path):
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _commit(work: Path, n_chunks: int, out, source: Version, params: dict, producer: dict, stats: dict) -> Path:
    """Write the chunks (minus empty completions) as the next completions version of ``out``."""
    empty, finish, tokens = 0, {"stop": 0, "length": 0}, 0
    with write_version(
        out, "completions", params=params, parents=[source.parent_ref()], producer=producer, stats=stats
    ) as writer:
        for k in range(n_chunks):
            with os_errors(_chunk_path(work, k), "cannot read the checkpoint"):
                table = pq.read_table(_chunk_path(work, k))
            blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column("completion"))), 0)
            kept = table.filter(pc.invert(blank))
            empty += table.num_rows - kept.num_rows
            for reason, count in zip(*_value_counts(kept.column("finish_reason"))):
                finish[reason] = finish.get(reason, 0) + count
            tokens += pc.sum(kept.column("completion_tokens")).as_py() or 0
            writer.write(kept)
        writer.stats.update(
            completions=sum(finish.values()), empty_completions=empty, finish_reasons=finish, completion_tokens=tokens
        )
    return writer.path


def _value_counts(column: pa.ChunkedArray) -> tuple[list, list]:
    counts = pc.value_counts(column)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def _check_no_duplicates(versions: list[Version]) -> None:
    keys = pa.concat_tables(
        [
            v.read(columns=["prompt_id", "sample_idx"]).append_column(
                "_input", pa.array([i] * v.manifest["rows"], pa.int32())
            )
            for i, v in enumerate(versions)
        ]
    )
    counts = keys.group_by(["prompt_id", "sample_idx"]).aggregate([("_input", "list")])
    lists = counts.column("_input_list")
    dup = pc.greater(pc.list_value_length(lists), 1)
    if pc.any(dup).as_py():
        i = pc.index(dup, True).as_py()
        where = " and ".join(str(versions[k].path) for k in sorted(set(lists[i].as_py())))
        raise SchemaError(
            f"merge: duplicate prompt_id/sample_idx ({counts.column('prompt_id')[i].as_py()}, "
            f"{counts.column('sample_idx')[i].as_py()}) in {where}"
        )
