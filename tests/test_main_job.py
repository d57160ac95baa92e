"""The README's main job (scripts/main.sh) end to end at a small size: bundled GSM8K -> generate
-> score -> pair -> inspect -> eval -> humanline DPO -> eval -> plot, on the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"PROMPTS": "8", "SAMPLES": "4", "EVAL": "4", "STEPS": "2", "MAXTOK": "128", "BATCH": "1"}


@pytest.mark.slow
def test_main_job_runs_every_stage_and_reports_accuracy(tmp_path):
    run = tmp_path / "main"
    env = {**os.environ, **SIZES, "RUN": str(run), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "main.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.strip().splitlines()
    assert out[-1] == str(run)
    assert out[-2].startswith("held-out pass@1 on 4 problems: before ")

    manifests = {name: json.loads((run / "data" / name / "v1" / "manifest.json").read_text())
                 for name in ("prompts", "completions", "scored", "pairs")}
    assert manifests["prompts"]["rows"] == 8
    assert manifests["completions"]["rows"] + manifests["completions"]["stats"].get("empty_completions", 0) == 32
    assert manifests["pairs"]["rows"] >= 2
    assert [Path(p["path"]) for p in manifests["pairs"]["parents"]] == [(run / "data" / "scored" / "v1").resolve()]
    for when in ("before", "after"):
        result = json.loads((run / f"eval_{when}.json").read_text())
        assert result["count"] == 4 and 0 <= result["value"] <= 1
    metrics = (run / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2]
    assert (run / "train_curves.png").stat().st_size > 0
    assert "rows" in (run / "inspect_pairs.txt").read_text()
