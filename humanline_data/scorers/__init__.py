"""The score stage: completions (or scored rows, to re-score) -> scored rows.

A scorer spec names what gives the reward:

=================================  ==============================================================
``math``                           final answer checked by math-verify against the row's answer
``rm:<model>``                     a sequence-classification reward model (ArmoRM included)
``python:<module>:<function>``     a user function ``fn(batch: list[dict]) -> list[float]``
=================================  ==============================================================

The output carries every completion column plus ``reward`` (float64), ``scorer`` (the scorer's
identity string) and ``reward_components`` (JSON object ``{name: float}``). A reward that is NaN,
infinite or beyond :data:`humanline_data.schema.MAX_ABS_REWARD` in magnitude stops the stage
with a one-line error naming the row; nothing is written.

Rows are scored in batches of ``batch_size`` by the :class:`BatchScorer` worker, in this
process (``local`` executor) or on a Ray actor pool (``ray``, see
:mod:`humanline_data.executors`); the driver checks and writes the rewards, so both executors
write the same version. The executor is recorded in ``producer["executor"]``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

from humanline_data import executors
from humanline_data.errors import HumanlineError
from humanline_data.executor_settings import Executor
from humanline_data.outputs import check_output
from humanline_data.schema import reward_problem
from humanline_data.scorers.base import Scorer
from humanline_data.store import open_version, write_version

OUTPUT_COLUMNS = ("reward", "scorer", "reward_components")
ROW_KEYS = ("prompt_id", "sample_idx", "messages", "completion", "answer", "metadata")


def parse_spec(spec: str, format_weight: float = 0.0, workers: int = 1) -> Scorer:
    """The scorer a spec names (loads the reward model or the user's module).

    ``format_weight`` and ``workers`` (processes) apply to the math scorer only."""
    kind, _, rest = spec.partition(":")
    if format_weight and kind != "math":
        raise HumanlineError(f"--format-weight applies to the math scorer only, not {spec!r}")
    if workers != 1 and kind != "math":
        raise HumanlineError(f"--workers applies to the math scorer only, not {spec!r}")
    if workers < 1:
        raise HumanlineError(f"--workers must be at least 1, got {workers}")
    if kind == "math" and not rest:
        from humanline_data.scorers.math_verifier import MathVerifier

        return MathVerifier(format_weight, workers)
    if kind == "rm" and rest:
        from humanline_data.scorers.reward_model import RewardModel

        return RewardModel(rest)
    if kind == "python" and ":" in rest:
        from humanline_data.scorers.python_function import PythonFunction

        module, _, function = rest.rpartition(":")
        if module and function:
            return PythonFunction(module, function)
    raise HumanlineError(
        f"unknown scorer {spec!r}: expected math, rm:<model> or python:<module>:<function>"
    )


def score(inp: str | os.PathLike, out: str | os.PathLike, scorer: str, batch_size: int = 16,
          format_weight: float = 0.0, workers: int = 1, executor: Executor = Executor()) -> Path:
    """Score every row of the completions/scored version ``inp`` with ``scorer``; write the
    next version of ``out`` (kind scored) and return its path.

    ``batch_size`` rows go to the scorer per call; ``format_weight`` and ``workers`` are the
    math scorer's (see :func:`parse_spec`); ``executor`` says where the batches are scored."""
    if batch_size < 1:
        raise HumanlineError(f"--batch-size must be at least 1, got {batch_size}")
    executor.check()
    check_output(out, "dataset")
    source = open_version(inp, kinds=("completions", "scored"))
    table = source.read()
    table = table.drop_columns([c for c in OUTPUT_COLUMNS if c in table.column_names])
    scoring = parse_spec(scorer, format_weight, workers)  # here: identity and checks; workers score
    scoring.check(table)
    started = time.perf_counter()
    worker = functools.partial(BatchScorer, scorer, format_weight, workers)
    results = _score_rows(table, scoring.identity, worker, batch_size, executor)
    seconds = time.perf_counter() - started
    scored = (
        table.append_column("reward", results.column("reward"))
        .append_column("scorer", pa.array([scoring.identity] * table.num_rows, pa.string()))
        .append_column("reward_components", results.column("reward_components"))
    )
    components = [json.loads(c) for c in results.column("reward_components").to_pylist()]
    with write_version(
        out,
        "scored",
        params={"scorer": scorer, "identity": scoring.identity, "batch_size": batch_size, **scoring.params},
        parents=[source.parent_ref()],
        producer={**scoring.producer, "executor": executor.describe()},
        stats=_stats(scored, components, seconds),
    ) as writer:
        writer.write(scored)
    return writer.path


class BatchScorer:
    """The score stage's worker (see :mod:`humanline_data.executor_settings`): the scorer ``spec``
    names, built once; turns a batch of rows (:data:`ROW_KEYS` columns) into a table of
    ``reward`` (float64) and ``reward_components`` (JSON object), one row per input row."""

    def __init__(self, spec: str, format_weight: float = 0.0, workers: int = 1) -> None:
        self.scoring = parse_spec(spec, format_weight, workers)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            row["metadata"] = json.loads(row["metadata"]) if row["metadata"] is not None else None
        results = self.scoring(rows)
        if len(results) != len(rows):
            raise HumanlineError(f"scorer {self.scoring.identity} gave {len(results)} rewards for {len(rows)} rows")
        return pa.table(
            {
                "reward": pa.array([float(reward) for reward, _ in results], pa.float64()),
                "reward_components": pa.array([json.dumps(parts) for _, parts in results], pa.string()),
            }
        )

    def info(self) -> dict:
        return {}

    def close(self) -> None:
        self.scoring.close()


def _score_rows(table: pa.Table, identity: str, worker, batch_size: int, executor: Executor) -> pa.Table:
    """``reward`` and ``reward_components`` of every row (in row order), scored ``batch_size``
    rows at a time by ``worker()`` instances under ``executor``; raises on a reward that breaks
    the contract (:func:`humanline_data.schema.reward_problem`)."""
    pieces = [(start, table.slice(start, batch_size).select(list(ROW_KEYS)))
              for start in range(0, table.num_rows, batch_size)]
    done: dict[int, pa.Table] = {}
    with _progress() as progress:
        task = progress.add_task(f"scoring ({identity})", total=table.num_rows)
        for start, result, _ in executors.run(executor, worker, pieces):
            _check_rewards(result.column("reward"), start, table, identity)
            done[start] = result
            progress.advance(task, result.num_rows)
    if not pieces:
        return pa.table({"reward": pa.array([], pa.float64()), "reward_components": pa.array([], pa.string())})
    return pa.concat_tables([done[start] for start, _ in pieces])


def _check_rewards(rewards: pa.Array, start: int, table: pa.Table, identity: str) -> None:
    """Raise naming the first row (``start`` + offset into ``table``) whose reward is NaN,
    infinite or too large."""
    for offset, reward in enumerate(rewards.to_pylist()):
        problem = reward_problem(reward)
        if problem:
            key = table.slice(start + offset, 1).select(["prompt_id", "sample_idx"]).to_pylist()[0]
            raise HumanlineError(
                f"row {start + offset} (prompt_id {key['prompt_id']}, sample_idx {key['sample_idx']}): "
                f"scorer {identity} gave reward {reward}; rewards {problem}"
            )


def _progress() -> Progress:
    return Progress(
        *Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _stats(scored: pa.Table, components: list[dict], seconds: float) -> dict:
    """Manifest stats: counts, reward mean/min/max, mean of each component, rows per second."""
    reward = scored.column("reward")
    names = sorted({name for parts in components for name in parts})
    n = scored.num_rows
    return {
        "rows": n,
        "prompts": pc.count_distinct(scored.column("prompt_id")).as_py(),
        "reward_mean": pc.mean(reward).as_py(),
        "reward_min": pc.min(reward).as_py(),
        "reward_max": pc.max(reward).as_py(),
        "nonzero_rewards": pc.sum(pc.not_equal(reward, 0.0)).as_py() or 0,
        "component_means": {k: sum(p.get(k, 0.0) for p in components) / n for k in names} if n else {},
        "seconds": round(seconds, 3),
        "rows_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }

