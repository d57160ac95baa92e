"""Data parallel: ``torchrun`` with 2 CPU processes (gloo). The trainer hands the policy to
``accelerator.prepare`` (DDP here), so 2 processes x 1 micro-batch per step must train exactly
like 1 process accumulating the same 2 micro-batches: same per-step losses and gradient norms,
same weights, for every objective's step-wide arithmetic (GRPO's token mean, KTO's reference
point gathered across processes). FSDP and DeepSpeed cannot run here: accelerate 1.15 turns
``ACCELERATE_USE_FSDP`` into an FSDP plugin only for GPU-class process groups (a CPU run under
torchrun stays MULTI_CPU), and DeepSpeed is not installed for CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import VOCAB
from real_shards import group_rows, losses_of, pair_rows, unpaired_rows, write
from tolerances import LOSS_SCALE, assert_close_fp32

pytestmark = pytest.mark.slow


def _train(processes: int, shards, model, out, *extra, loss: str = "dpo", cache=None) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    argv = ["-m", "humanline_train", "--shards", str(shards), "--loss", loss, "--model", str(model), "--out", str(out),
            "--batch-size", "2", "--max-length", "96", "--lr", "1e-3", "--warmup", "0", "--max-steps", "3", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["HUMANLINE_CACHE"] = str(cache)
    return subprocess.run(launcher + argv, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pairs = pair_rows(shared_data, 40)
    return {"dpo": write(root / "pairs", "pairs", pairs), "kto": write(root / "unpaired", "unpaired", unpaired_rows(pairs)),
            "grpo": write(root / "groups", "groups", group_rows(shared_data, 12))}


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["dpo", "kto", "grpo"])
def test_two_processes_equal_one_process_accumulating(shards, tiny_model, tmp_path, loss):
    one = _train(1, shards[loss], tiny_model, tmp_path / "one", "--grad-accum", "2", loss=loss)
    two = _train(2, shards[loss], tiny_model, tmp_path / "two", "--grad-accum", "1", loss=loss)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]

    one_rows, two_rows = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one_rows) == len(two_rows)
    assert_close_fp32([row["train/loss"] for row in two_rows], [row["train/loss"] for row in one_rows], VOCAB,
                      "losses", scale=LOSS_SCALE)
    assert_close_fp32([row["train/grad_norm"] for row in two_rows], [row["train/grad_norm"] for row in one_rows],
                      VOCAB, "gradient norms")
    weights = [load_file(tmp_path / run / "checkpoints" / "step-3" / "model.safetensors") for run in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert_close_fp32(weights[1][name], tensor, VOCAB, f"weights {name}")
    initial = load_file(tiny_model / "model.safetensors")
    assert any(not torch.equal(initial[n], weights[1][n]) for n in initial)  # it did train
    if loss != "dpo":
        return
    state = torch.load(tmp_path / "two" / "checkpoints" / "step-3" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2
    resumed = _train(1, shards[loss], tiny_model, tmp_path / "two", "--grad-accum", "1", "--resume", str(tmp_path / "two"))
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1].endswith("was written by 2 processes, now 1; launch 2")


def test_offline_reference_cache_of_two_processes_holds_both_processes_rows(shards, tiny_model, tmp_path):
    env_cache = tmp_path / "cache"
    two = _train(2, shards["dpo"], tiny_model, tmp_path / "two", "--no-humanline", "--max-steps", "4",
                 cache=env_cache)
    assert two.returncode == 0, two.stderr[-2000:]
    (cache,) = (env_cache / "reference-logps").glob("*.pt")
    assert len(torch.load(cache)) == 4 * 2 * 2 * 2  # 4 steps x 2 processes x 2 pairs x (chosen, rejected)
    one = _train(1, shards["dpo"], tiny_model, tmp_path / "one", "--no-humanline", "--max-steps", "4", "--grad-accum", "2",
                 cache=env_cache)
    assert one.returncode == 0, one.stderr[-2000:]
    assert_close_fp32(losses_of(tmp_path / "two"), losses_of(tmp_path / "one"), VOCAB, "losses", scale=LOSS_SCALE)
