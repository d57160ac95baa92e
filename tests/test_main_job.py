"""The README's main job (scripts/main.sh) end to end at a small size: arithmetic task -> import
-> generate -> score -> GRPO groups -> inspect -> eval -> humanline GRPO -> eval -> plot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"PROMPTS": "16", "SAMPLES": "8", "EVAL": "4", "EPOCHS": "1", "BATCH": "8"}


@pytest.mark.slow
def test_main_job_runs_every_stage_and_reports_the_gain(tmp_path):
    run = tmp_path / "main"
    env = {**os.environ, **SIZES, "RUN": str(run), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "main.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.strip().splitlines()
    assert out[-1] == str(run)
    assert out[-2].startswith("held-out pass@1 on 4 problems: before ") and "2 SE)" in out[-2]

    manifests = {name: json.loads((run / "data" / name / "v1" / "manifest.json").read_text())
                 for name in ("prompts", "heldout", "completions", "scored", "groups")}
    assert manifests["prompts"]["rows"] == 16 and manifests["heldout"]["rows"] == 4
    assert manifests["completions"]["rows"] + manifests["completions"]["stats"].get("empty_completions", 0) == 128
    assert manifests["groups"]["kind"] == "groups" and 1 <= manifests["groups"]["rows"] <= 16
    assert [Path(p["path"]) for p in manifests["groups"]["parents"]] == [(run / "data" / "scored" / "v1").resolve()]
    for when in ("before", "after"):
        result = json.loads((run / f"eval_{when}.json").read_text())
        assert result["count"] == 4 and 0 <= result["value"] <= 1
    settings = json.loads((run / "train" / "settings.json").read_text())
    assert settings["loss"] == "grpo" and settings["model"]["lora_r"] == 16
    assert settings["humanline"]["sync"] and settings["humanline"]["clip"] and settings["humanline"]["sync_k"] == 1
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1)) and metrics
    assert (run / "train_curves.png").stat().st_size > 0
    assert "rows" in (run / "inspect_groups.txt").read_text()

    # results.json: the gain and its paired SE, recomputed here from the two evaluations' scored rows
    [result] = json.loads((run / "results.json").read_text())["runs"]
    before, after = (json.loads((run / f"eval_{when}.json").read_text()) for when in ("before", "after"))
    assert (result["arm"], result["seed"], result["groups"]) == ("humanline", 0, manifests["groups"]["rows"])
    assert result["gain"] == after["value"] - before["value"]
    rewards = [{row["prompt_id"]: row["reward"] for part in sorted((run / f"eval_{when}" / "scored" / "v1").glob("*.parquet"))
                for row in pq.read_table(part, columns=["prompt_id", "reward"]).to_pylist()}
               for when in ("before", "after")]
    diffs = np.array([rewards[1][p] - rewards[0][p] for p in rewards[0]])
    assert np.isclose(result["gain"], diffs.mean(), rtol=0, atol=1e-12)
    assert np.isclose(result["gain_se_paired"], diffs.std(ddof=1) / np.sqrt(len(diffs)), rtol=0, atol=1e-12)
    assert "| humanline | 0 |" in (run / "results.md").read_text()
