"""What a run reports while it trains: one row of metrics per optimizer step, written to
``metrics.jsonl`` (main process) and to the run's experiment trackers (``tracking``), and a rich
progress bar on stderr.

Metric names (one scheme for ``metrics.jsonl`` and every tracker) are TRL's where the meaning is
the same: what transformers' ``Trainer`` and TRL's DPO/KTO/GRPO trainers log, with the ``train/``
prefix their TensorBoard and W&B callbacks add (``train/loss``, ``train/rewards/margins``, ...).
Humanline's own are under ``train/humanline/``, timing and throughput under ``train/perf/``,
data counters under ``train/data/``, and a metric only one objective has (or whose meaning differs
from TRL's metric of that name) under ``train/<objective>/``. :data:`NAMES` and :func:`metric_name`
are the whole mapping; ``step`` (completed optimizer steps) is the step of every row.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from humanline_data.errors import os_errors
from humanline_train import checkpoint, tracking
from humanline_train.schedule import syncs_through

STEP = "step"
LOSS = "train/loss"

# our key -> the row's name; the first block has TRL's meaning (objective metrics: humanline_train.losses)
NAMES = {
    "loss": LOSS,  # the step's mean loss over every process
    "grad_norm": "train/grad_norm",  # before clipping
    "lr": "train/learning_rate",  # the step's learning rate
    "rewards/chosen": "train/rewards/chosen",  # mean beta * (summed, humanline-clipped) log-ratio of chosen rows
    "rewards/rejected": "train/rewards/rejected",
    "margin": "train/rewards/margins",  # mean of rewards/chosen - rewards/rejected per pair
    "accuracy": "train/rewards/accuracies",  # fraction of pairs with chosen reward > rejected
    "kl": "train/kl",  # k3 estimate exp(-d) + d - 1 of KL(policy || reference), mean over completion tokens (TRL GRPO's)
    "clip_frac": "train/clip_ratio/region_mean",  # GRPO: tokens whose PPO ratio clip is active
    "unclamped_frac": "train/humanline/unclamped_frac",  # tokens with d != 0 whose log-ratio lies inside the clip range
    "syncs": "train/humanline/syncs",  # times the reference was set to the policy so far (syncs, round starts)
    "tokens": "train/perf/tokens",  # tokens (prompt + completion, padding excluded) run by this process this step
    "tokens_per_s": "train/perf/tokens_per_s",
    "seconds_forward": "train/perf/seconds_forward",
    "seconds_backward": "train/perf/seconds_backward",
    "seconds_reference": "train/perf/seconds_reference",
    "seconds_sync": "train/perf/seconds_sync",
    "seconds_step": "train/perf/seconds_step",
    "skipped_prompts": "train/data/skipped_prompts",  # of the current shard so far: prompts longer than --max-length
    "truncated_completions": "train/data/truncated_completions",  # cut to --max-length
    "round": "train/online/round",  # the online round the step trained on (0 offline)
}
# keys of an objective whose meaning differs from TRL's of that name: named train/<objective>/<key>
OWN_MEANING = {"ipo": {"margin", "accuracy"}}  # IPO's are of mean token log-ratios, without beta


def metric_name(key: str, objective: str) -> str:
    """The row's name of our metric ``key`` of a run of ``objective`` (keys not in :data:`NAMES`,
    e.g. KTO's ``reference_point`` and GRPO's ``advantage``: ``train/<objective>/<key>``)."""
    if key == STEP:
        return STEP
    if key in NAMES and key not in OWN_MEANING.get(objective, ()):
        return NAMES[key]
    return f"train/{objective}/{key}"


def step_row(step: int, loss: float | None, metrics: dict, grad_norm, lr: float, tokens: int, times: dict,
             seconds: float, truncation, round_index: int) -> dict:
    """Completed step ``step``'s values under our keys (:class:`RunLog` names them)."""
    return {
        STEP: step,
        **metrics,
        "loss": loss,
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "lr": lr,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        **{f"seconds_{k}": v for k, v in times.items()},
        "seconds_step": seconds,
        "skipped_prompts": truncation.skipped_prompts,
        "truncated_completions": truncation.truncated_completions,
        "round": round_index,
    }


def means(rows: list[dict]) -> dict:
    """Each metric's mean over the ``rows`` that hold it (numbers or one-element tensors)."""
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: sum(float(row[k]) for row in rows if k in row) / sum(k in row for row in rows) for k in keys}


class RunLog:
    """Context manager: appends named step rows to ``RUN_DIR/metrics.jsonl``, logs their numbers
    to the run's trackers (started here, finished on exit) and moves the progress bar."""

    def __init__(self, config, accel, total: int, done: int) -> None:
        self.config, self.accel = config, accel
        self.main = accel.is_main_process
        self.file = open(Path(config.out) / checkpoint.METRICS, "a") if self.main else None
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not self.main,
        )
        self.task = self.progress.add_task("training", total=total, completed=done)
        self.done, self.total = done, total
        self.window: list[dict] = []  # the numbers of the steps since the trackers' last log

    def __enter__(self) -> "RunLog":
        tracking.start(self.accel, self.config, self.done)
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        tracking.finish(self.accel)
        if self.file:
            self.file.close()

    def named(self, values: dict) -> dict:
        """``values`` (:func:`step_row`) plus the syncs so far, under the row's names; non-finite values become null."""
        hl = self.config.humanline
        values = {**values, "syncs": syncs_through(values[STEP], hl.sync, hl.sync_k, self.config.online.refresh_every)}
        return {metric_name(k, self.config.loss): None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in values.items()}

    def write(self, values: dict) -> None:
        row = self.named(values)
        if self.file:
            with os_errors(self.file.name):
                self.file.write(json.dumps(row) + "\n")
                self.file.flush()
        self.window.append({k: v for k, v in row.items() if k != STEP and isinstance(v, (int, float))
                            and not isinstance(v, bool)})
        if row[STEP] % self.config.run.logging_steps == 0 or row[STEP] == self.total:
            self.accel.log(means(self.window), step=row[STEP])  # main process only; a no-op without trackers
            self.window = []
        loss = "n/a" if row[LOSS] is None else f"{row[LOSS]:.4f}"
        self.progress.update(self.task, completed=row[STEP], description=f"loss {loss}")

    def report_truncation(self, truncation, max_length: int) -> None:
        if self.main:
            print(f"truncation (last shard): {truncation.truncated_completions} completions cut to --max-length "
                  f"{max_length}, {truncation.skipped_prompts} examples skipped (prompt too long), "
                  f"{truncation.dropped} left out of every step (an epoch's last, partial step), "
                  f"{truncation.trained} trained", file=sys.stderr)
