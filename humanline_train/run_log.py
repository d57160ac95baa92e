"""What a run reports while it trains: metrics.jsonl (one JSON object per optimizer step, main
process only) and a rich progress bar on stderr."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from humanline_data.errors import os_errors
from humanline_train import checkpoint


def step_row(step: int, loss: float | None, metrics: dict, grad_norm, lr: float, tokens: int, times: dict,
             seconds: float, truncation, round_index: int) -> dict:
    """The metrics.jsonl line of completed step ``step`` (non-finite values become null)."""
    row = {
        "step": step,
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
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


class RunLog:
    """Context manager: appends step rows to ``RUN_DIR/metrics.jsonl`` and moves the progress bar."""

    def __init__(self, run_dir: Path, accel, total: int, done: int) -> None:
        self.main = accel.is_main_process
        self.file = open(Path(run_dir) / checkpoint.METRICS, "a") if self.main else None
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not self.main,
        )
        self.task = self.progress.add_task("training", total=total, completed=done)

    def __enter__(self) -> "RunLog":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        if self.file:
            self.file.close()

    def write(self, row: dict) -> None:
        if self.file:
            with os_errors(self.file.name):
                self.file.write(json.dumps(row) + "\n")
                self.file.flush()
        loss = "n/a" if row["loss"] is None else f"{row['loss']:.4f}"
        self.progress.update(self.task, completed=row["step"], description=f"loss {loss}")

    def report_truncation(self, truncation, max_length: int) -> None:
        if self.main:
            print(f"truncation (last shard): {truncation.truncated_completions} completions cut to --max-length "
                  f"{max_length}, {truncation.skipped_prompts} examples skipped (prompt too long), "
                  f"{truncation.dropped} left out of every step (an epoch's last, partial step), "
                  f"{truncation.trained} trained", file=sys.stderr)
