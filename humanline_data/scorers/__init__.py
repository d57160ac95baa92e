"""The score stage: completions (or scored rows, to re-score) -> scored rows.

A scorer spec names what gives the reward:

=================================  ==============================================================
``math``                           final answer checked by math-verify against the row's answer
``rm:<model>``                     a sequence-classification reward model (ArmoRM included)
``python:<module>:<function>``     a user function ``fn(batch: list[dict]) -> list[float]``
=================================  ==============================================================

The output carries every completion column plus ``reward`` (float64), ``scorer`` (the scorer's
identity string) and ``reward_components`` (JSON object ``{name: float}``). A reward that is NaN
or infinite stops the stage with a one-line error naming the row; nothing is written.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

from humanline_data.errors import HumanlineError
from humanline_data.scorers.base import Scorer
from humanline_data.store import open_version, write_version

OUTPUT_COLUMNS = ("reward", "scorer", "reward_components")
ROW_KEYS = ("prompt_id", "messages", "completion", "answer", "metadata")


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
          format_weight: float = 0.0, workers: int = 1) -> Path:
    """Score every row of the completions/scored version ``inp`` with ``scorer``; write the
    next version of ``out`` (kind scored) and return its path.

    ``batch_size`` rows go to the scorer per call; ``format_weight`` and ``workers`` are the
    math scorer's (see :func:`parse_spec`)."""
    if batch_size < 1:
        raise HumanlineError(f"--batch-size must be at least 1, got {batch_size}")
    source = open_version(inp, kinds=("completions", "scored"))
    table = source.read()
    table = table.drop_columns([c for c in OUTPUT_COLUMNS if c in table.column_names])
    scoring = parse_spec(scorer, format_weight, workers)
    try:
        scoring.check(table)
        started = time.perf_counter()
        rewards, components = _score_rows(table, scoring, batch_size)
        seconds = time.perf_counter() - started
    finally:
        scoring.close()
    scored = (
        table.append_column("reward", pa.array(rewards, pa.float64()))
        .append_column("scorer", pa.array([scoring.identity] * table.num_rows, pa.string()))
        .append_column("reward_components", pa.array([json.dumps(c) for c in components], pa.string()))
    )
    with write_version(
        out,
        "scored",
        params={"scorer": scorer, "identity": scoring.identity, "batch_size": batch_size, **scoring.params},
        parents=[source.parent_ref()],
        producer=scoring.producer,
        stats=_stats(scored, components, seconds),
    ) as writer:
        writer.write(scored)
    return writer.path


def _score_rows(table: pa.Table, scoring: Scorer, batch_size: int) -> tuple[list[float], list[dict]]:
    """Rewards and components of every row, scored ``batch_size`` rows at a time."""
    rewards: list[float] = []
    components: list[dict] = []
    keys = table.select(["prompt_id", "sample_idx"])
    with _progress() as progress:
        task = progress.add_task(f"scoring ({scoring.identity})", total=table.num_rows)
        for start in range(0, table.num_rows, batch_size):
            rows = table.slice(start, batch_size).select(list(ROW_KEYS)).to_pylist()
            for row in rows:
                row["metadata"] = json.loads(row["metadata"]) if row["metadata"] is not None else None
            results = scoring(rows)
            if len(results) != len(rows):
                raise HumanlineError(f"scorer {scoring.identity} gave {len(results)} rewards for {len(rows)} rows")
            for offset, (reward, parts) in enumerate(results):
                if not math.isfinite(reward):
                    row = start + offset
                    raise HumanlineError(
                        f"row {row} (prompt_id {keys['prompt_id'][row].as_py()}, sample_idx "
                        f"{keys['sample_idx'][row].as_py()}): scorer {scoring.identity} gave reward {reward}; "
                        "rewards must be finite"
                    )
                rewards.append(float(reward))
                components.append(parts)
            progress.advance(task, len(rows))
    return rewards, components


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

