"""Resume: a run killed (SIGKILL) or crashed after a checkpoint continues to the same losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from real_shards import losses_of, pair_rows, tiny_config, unpaired_rows, write
from humanline_train.cli import main
from humanline_train.trainer import train


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pairs = pair_rows(shared_data, 40)
    return {"pairs": write(root / "pairs", "pairs", pairs), "unpaired": write(root / "unpaired", "unpaired", unpaired_rows(pairs))}


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_9_then_resume_matches_an_uninterrupted_run(shards, tiny_model, tmp_path):
    args = ["--shards", str(shards["pairs"]), "--loss", "dpo", "--model", str(tiny_model), "--batch-size", "2",
            "--max-length", "96", "--max-steps", "8", "--save-every", "2", "--lr", "1e-3", "--sync-k", "2"]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "humanline_train", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-2" / "trainer_state.pt").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-8").exists()

    result = CliRunner().invoke(main, [*args, "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(killed)
    whole = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert _steps(killed) == list(range(1, 9))  # each step logged once
    assert losses_of(killed) == pytest.approx(losses_of(tmp_path / "whole"), abs=1e-6)


class _Crash(Exception):
    pass


def _crash_at(step_to_crash: int):
    def before_step(step, policy):
        if step == step_to_crash:
            raise _Crash
    return {"before_step": before_step}


@pytest.mark.parametrize(
    "case",
    [
        dict(reference="lookahead", sync_k=3, grad_accum=2),  # resumes mid-window: cached look-ahead log-probs
        dict(reference="copy", sync_k=3),  # the synced weights
        dict(humanline=False),  # the cached initial-model reference
        dict(loss="kto", batch_size=2, lora_r=4),  # LoRA adapters; KTO reference point
    ],
    ids=["lookahead", "copy", "offline-cached", "kto-lora"],
)
def test_crash_then_resume_matches(shards, tiny_model, tmp_path, monkeypatch, case):
    monkeypatch.setenv("HUMANLINE_CACHE", str(tmp_path / "cache"))
    shard = shards["unpaired"] if case.get("loss") == "kto" else shards["pairs"]
    common = dict(max_steps=6, save_every=2, **case)
    whole = train(tiny_config(shard, tiny_model, tmp_path / "whole", **common))
    crashed = tmp_path / "crashed"
    with pytest.raises(_Crash):
        train(tiny_config(shard, tiny_model, crashed, **common), _crash_at(4))  # after step-4's checkpoint
    assert _steps(crashed) == [1, 2, 3, 4]
    train(tiny_config(shard, tiny_model, crashed, resume=True, **common))
    assert _steps(crashed) == list(range(1, 7))
    assert losses_of(crashed) == pytest.approx(losses_of(whole), abs=1e-6)
