"""One optimizer step is one update however it is split (method.md §5.2, §5.3: GRPO's token mean and KTO's
reference point are over the whole step), and the step-wide statistics the objectives need."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import VOCAB
from real_shards import group_rows, pair_rows, tiny_config, unpaired_rows, write
from tolerances import LOSS_SCALE, assert_close_fp32
from humanline_train import losses
from humanline_train.trainer import train


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pairs = pair_rows(shared_data, 12)
    return {
        "dpo": write(root / "pairs", "pairs", pairs),
        "kto": write(root / "unpaired", "unpaired", unpaired_rows(pairs)),
        "grpo": write(root / "groups", "groups", group_rows(shared_data, 6, size=2)),  # answers of very different lengths
    }


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run, step):
    return load_file(run / "checkpoints" / f"step-{step}" / "model.safetensors")


@pytest.mark.parametrize("loss", ["dpo", "kto", "grpo"])
def test_one_step_split_into_micro_batches_gives_the_same_update(shards, tiny_model, tmp_path, monkeypatch, loss):
    monkeypatch.setenv("HUMANLINE_CACHE", str(tmp_path / "cache"))
    common = dict(loss=loss, max_steps=3, max_length=160, lr=3e-3)
    whole = train(tiny_config(shards[loss], tiny_model, tmp_path / "whole", batch_size=2, grad_accum=1, **common))
    split = train(tiny_config(shards[loss], tiny_model, tmp_path / "split", batch_size=1, grad_accum=2, **common))
    a, b = _metrics(whole), _metrics(split)
    assert len(a) == len(b) == 3
    assert_close_fp32([row["train/loss"] for row in b], [row["train/loss"] for row in a], VOCAB, "losses",
                      scale=LOSS_SCALE)
    assert_close_fp32([row["train/grad_norm"] for row in b], [row["train/grad_norm"] for row in a], VOCAB,
                      "gradient norms")
    for name, tensor in _weights(whole, 3).items():
        assert_close_fp32(_weights(split, 3)[name], tensor, VOCAB, f"weights {name}")


def test_kto_step_zero_has_zero_log_ratios_and_a_step_wide_reference_point(shards, tiny_model, tmp_path):
    seen = {}
    cfg = tiny_config(shards["kto"], tiny_model, tmp_path / "run", loss="kto", batch_size=2, grad_accum=2, max_steps=3,
                      max_length=160, lr=3e-3, sync_k=3, log_eps_p=-0.05, log_eps_r=0.05)
    run = train(cfg, {"reference": lambda step, i, batch, ref, pol: seen.__setitem__((step, i), (batch, ref, pol))})
    for i in range(2):  # step 0: the reference is the policy, examples and KL rows alike, bit for bit
        _, ref, pol = seen[(0, i)]
        assert len(ref) == len(pol) == 2
        assert all(torch.equal(r, p) for r, p in zip(ref, pol))
    rows = _metrics(run)
    for step in (1, 2):  # z = max(0, mean over BOTH micro-batches of the clipped KL-row rewards)
        rewards = torch.cat([losses.kto_kl_rewards(pol[1], ref[1], batch.kl.completion_mask, clip=(-0.05, 0.05))
                             for batch, ref, pol in (seen[(step, i)] for i in range(2))])
        unclipped = torch.cat([losses.kto_kl_rewards(pol[1], ref[1], batch.kl.completion_mask)
                               for batch, ref, pol in (seen[(step, i)] for i in range(2))])
        assert not torch.allclose(rewards, unclipped)  # the clip acts on these rows
        assert rows[step]["train/kto/reference_point"] == pytest.approx(max(0.0, float(rewards.mean())), abs=1e-6)
    assert any(r["train/kto/reference_point"] == 0.0 for r in rows[1:]) or all(r["train/kto/reference_point"] > 0 for r in rows[1:])


def test_kto_reference_point_is_clamped_at_zero(shards, tiny_model, tmp_path):
    """A step whose mean KL reward is negative has z = 0 exactly (not the negative mean)."""
    seen = {}
    cfg = tiny_config(shards["kto"], tiny_model, tmp_path / "run", loss="kto", batch_size=4, max_steps=4,
                      max_length=160, lr=3e-2, sync_k=4, humanline=False)
    run = train(cfg, {"reference": lambda step, i, batch, ref, pol: seen.__setitem__(step, (batch, ref, pol))})
    means = {}
    for step, (batch, ref, pol) in seen.items():
        means[step] = float(losses.kto_kl_rewards(pol[1], ref[1], batch.kl.completion_mask).mean())
    rows = _metrics(run)
    assert any(m < 0 for m in means.values())  # the case the clamp exists for
    for step, mean in means.items():
        assert rows[step]["train/kto/reference_point"] == pytest.approx(max(0.0, mean), abs=1e-6)


def test_ablation_flags(shards, tiny_model, tmp_path, monkeypatch):
    """--no-sync --no-clip is the plain objective; --no-clip equals a clip range nothing reaches."""
    monkeypatch.setenv("HUMANLINE_CACHE", str(tmp_path / "cache"))
    common = dict(loss="grpo", batch_size=2, max_steps=3, max_length=160, lr=3e-3)

    def run(name, **kw):
        return [r["train/loss"] for r in _metrics(train(tiny_config(shards["grpo"], tiny_model, tmp_path / name, **common, **kw)))]

    plain = run("plain", humanline=False)
    assert run("both-off", sync=False, clip=False) == pytest.approx(plain, abs=1e-7)
    wide = run("wide", log_eps_p=-100.0, log_eps_r=100.0)
    assert run("no-clip", clip=False) == pytest.approx(wide, abs=1e-7)
    assert wide != pytest.approx(plain, abs=1e-6)  # sync changes the run
