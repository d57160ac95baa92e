"""Data parallel: ``torchrun`` with 2 CPU processes (gloo). The trainer hands the policy to
``accelerator.prepare`` (DDP here), so 2 processes x 1 micro-batch per step must train exactly
like 1 process accumulating the same 2 micro-batches: same per-step losses, same weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from real_shards import losses_of, pair_rows, write

pytestmark = pytest.mark.slow


def _train(processes: int, shards, model, out, *extra) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    argv = ["-m", "humanline_train", "--shards", str(shards), "--loss", "dpo", "--model", str(model), "--out", str(out),
            "--batch-size", "2", "--max-length", "96", "--lr", "1e-3", "--warmup", "0", "--max-steps", "3", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(launcher + argv, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_equal_one_process_accumulating(shared_data, tiny_model, tmp_path):
    shards = write(tmp_path / "pairs", "pairs", pair_rows(shared_data, 40))
    one = _train(1, shards, tiny_model, tmp_path / "one", "--grad-accum", "2")
    two = _train(2, shards, tiny_model, tmp_path / "two", "--grad-accum", "1")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]

    assert losses_of(tmp_path / "two") == pytest.approx(losses_of(tmp_path / "one"), abs=1e-5)
    weights = [load_file(tmp_path / run / "checkpoints" / "step-3" / "model.safetensors") for run in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=1e-5, rtol=0), name
    initial = load_file(tiny_model / "model.safetensors")
    assert any(not torch.equal(initial[n], weights[1][n]) for n in initial)  # it did train

    state = torch.load(tmp_path / "two" / "checkpoints" / "step-3" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2
    resumed = _train(1, shards, tiny_model, tmp_path / "two", "--grad-accum", "1", "--resume", str(tmp_path / "two"))
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1].endswith("was written by 2 processes, now 1; launch 2")
