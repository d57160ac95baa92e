"""--report-to: trackers get every metric of metrics.jsonl, under the same (TRL's) names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from real_shards import pair_rows, tiny_config, write
from humanline_train.cli import main
from humanline_train.run_log import metric_name
from humanline_train.schedule import SyncSchedule, syncs_through
from humanline_train.trainer import train


@pytest.fixture(scope="module")
def pairs(shared_data, tmp_path_factory):
    return write(tmp_path_factory.mktemp("shards") / "pairs", "pairs", pair_rows(shared_data, 12))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class _Crash(Exception):
    pass


def test_tensorboard_holds_each_step_of_metrics_jsonl_once_after_a_resume(pairs, tiny_model, tmp_path):
    """A run crashes after logging step 3 (checkpoint at 2) and resumes: TensorBoard then holds, for
    every scalar, exactly the values of metrics.jsonl at each step (step 3's first logging purged:
    its timings differ)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = dict(max_steps=4, save_every=2, report_to="tensorboard", humanline=False)

    def crash(step, policy):
        if step == 3:
            raise _Crash

    run = tmp_path / "run"
    with pytest.raises(_Crash):
        train(tiny_config(pairs, tiny_model, run, **common), {"before_step": crash})
    first_step_3 = _rows(run)[2]
    train(tiny_config(pairs, tiny_model, run, resume=True, **common))

    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["train/perf/seconds_step"] != first_step_3["train/perf/seconds_step"]
    events = EventAccumulator(str(run / "tracking" / "humanline"))
    events.Reload()
    logged = {k for r in rows for k, v in r.items() if k != "step" and v is not None}
    assert set(events.Tags()["scalars"]) == logged
    for tag in logged:
        values = {e.step: e.value for e in events.Scalars(tag)}
        assert len(events.Scalars(tag)) == len(values), tag  # one value per step
        assert values == {r["step"]: np.float32(r[tag]) for r in rows}, tag
    assert {"train/loss", "train/rewards/margins", "train/learning_rate", "train/humanline/syncs"} <= logged


@pytest.mark.parametrize("report_to, message", [
    ("wandb", "--report-to wandb needs wandb: pip install wandb"),
    ("mlflow", "--report-to mlflow needs mlflow: pip install mlflow"),
    ("tensorboard,comet", "--report-to tensorboard,comet: expected none or a comma list of tensorboard, wandb, mlflow"),
    ("none,tensorboard", "--report-to none,tensorboard: expected none or a comma list of"),
])
def test_report_to_a_tracker_that_cannot_run_is_one_error_line_before_anything_is_written(
        pairs, tiny_model, tmp_path, report_to, message):
    package = report_to.split(",")[0]
    if package in ("wandb", "mlflow"):
        try:
            __import__(package)
            pytest.skip(f"{package} is installed here")
        except ImportError:
            pass
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--shards", str(pairs), "--loss", "dpo", "--model", str(tiny_model), "--out", str(out),
                                       "--max-steps", "1", "--report-to", report_to])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not out.exists()


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_wandb_offline_and_mlflow_write_in_the_run_without_network(pairs, tiny_model, tmp_path, monkeypatch, tracker):
    pytest.importorskip(tracker)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    run = train(tiny_config(pairs, tiny_model, tmp_path / "run", max_steps=2, report_to=tracker, humanline=False))
    found = list((run / "tracking" / "wandb").glob("offline-run-*")) if tracker == "wandb" else \
        list((tmp_path / "mlruns").rglob("metrics/train/loss"))
    assert found, os.listdir(run / "tracking")


def test_metric_names_are_trls_where_the_meaning_is_the_same():
    assert metric_name("margin", "dpo") == "train/rewards/margins"
    assert metric_name("accuracy", "simpo") == "train/rewards/accuracies"
    assert metric_name("margin", "ipo") == "train/ipo/margin"  # mean token log-ratios without beta: not TRL's
    assert metric_name("clip_frac", "grpo") == "train/clip_ratio/region_mean"
    assert metric_name("reference_point", "kto") == "train/kto/reference_point"
    assert metric_name("step", "dpo") == "step"


@pytest.mark.parametrize("sync, k, refresh_every, total", [
    (True, 1, None, 7), (True, 3, None, 10), (False, 1, None, 5), (True, 2, 4, 13), (True, 3, 4, 13),
    (False, 1, 3, 10), (True, 5, 2, 9),
])
def test_syncs_so_far_count_what_the_schedule_does(sync, k, refresh_every, total):
    """The trainer's loop over the schedule (segment starts after the first, syncs after steps)
    re-sets the reference as often as syncs_through says, at every step."""
    schedule, count = SyncSchedule(total, sync, k, refresh_every), 0
    for step in range(total):
        if schedule.refresh_due(step):
            schedule.segment_start = step
        count += schedule.at_segment_start(step) and step > 0
        count += schedule.sync_after(step)
        assert syncs_through(step + 1, sync, k, refresh_every) == count, step


@pytest.mark.parametrize("update_in_backward", [False, True])
def test_each_sync_runs_before_the_backward_or_before_the_update(update_in_backward):
    """An engine that updates inside backward (DeepSpeed) syncs before the step's backward; any
    other after it, before optimizer.step() (method.md §2). Never both, never neither."""
    schedule = SyncSchedule(9, True, 2, None, update_in_backward=update_in_backward)
    before_backward = [step for step in range(9) if schedule.sync_before_backward(step)]
    before_update = [step for step in range(9) if schedule.sync_before_update(step)]
    due = [1, 3, 5, 7]  # the steps whose sync sets the reference for the window after them
    assert (before_backward, before_update) == ((due, []) if update_in_backward else ([], due))
