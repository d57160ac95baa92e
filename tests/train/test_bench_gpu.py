"""benchmarks/bench_gpu.py in its CPU tiny mode: every contender runs and they train on the same batches."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_gpu_tiny_on_cpu(tmp_path, shared_data):
    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed (the benchmark's TRL contenders need it)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "run", "--tiny", "--device", "cpu",
         "--precision", "fp32", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    rows = {r["contender"]: r for r in report["contenders"]}
    assert set(rows) == {"ours-dpo-humanline", "trl-dpo", "ours-dpo-offline", "ours-kto", "trl-kto", "ours-grpo"}
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["status"], (tmp_path / "log.txt").read_text()[-3000:])
        assert len(row["seconds"]) == 3 and row["tokens_per_s"] > 0 and row["peak_rss_gib"] > 0
        assert 0 < row["mfu"] < 1
    # DPO: the same rows in every step for ours and TRL, and the loss at the initial policy is ln 2 for all
    assert rows["trl-dpo"]["tokens"] == rows["ours-dpo-humanline"]["tokens"] == rows["ours-dpo-offline"]["tokens"]
    for name in ("trl-dpo", "ours-dpo-humanline", "ours-dpo-offline"):
        assert rows[name]["losses"][0] == pytest.approx(math.log(2), abs=1e-4)
    assert rows["trl-kto"]["losses"][0] == pytest.approx(rows["ours-kto"]["losses"][0], abs=1e-4)
    assert "| ours-dpo-humanline |" in done.stdout
