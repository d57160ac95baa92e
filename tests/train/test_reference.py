"""Reference placement (method.md §2) and the equality of the copy, look-ahead and cached references."""

from __future__ import annotations

import copy

import pytest
import torch

from real_shards import losses_of, pair_rows, tiny_config, unpaired_rows, write
from humanline_train.reference import CachedReference, reference_logps
from humanline_train.trainer import train


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    rows = pair_rows(shared_data, 40)
    pairs = write(root / "pairs", "pairs", rows)
    return {"dpo": pairs, "ipo": pairs, "grpo": pairs, "kto": write(root / "unpaired", "unpaired", unpaired_rows(rows[:12]))}


@pytest.fixture(scope="module")
def pairs(shards):
    return shards["dpo"]


def _recording_run(cfg):
    """Train ``cfg``; return per-step weights before each update and what each micro-batch saw."""
    before_update, seen = {}, {}
    hooks = {
        "before_step": lambda step, policy: before_update.__setitem__(step, copy.deepcopy(policy)),
        "reference": lambda step, i, batch, ref, pol: seen.__setitem__((step, i), (batch, ref[0], pol[0])),
    }
    train(cfg, hooks)
    return before_update, seen


@pytest.mark.parametrize("mode", ["lookahead", "copy"])
def test_k1_reference_is_the_weights_before_the_previous_update(pairs, tiny_model, tmp_path, mode):
    before_update, seen = _recording_run(tiny_config(pairs, tiny_model, tmp_path / "run", reference=mode, max_steps=4))
    batch0, ref0, pol0 = seen[(0, 0)]
    assert torch.equal(ref0, pol0)  # first step: the reference is the initial policy
    for t in range(3):
        batch, ref, pol = seen[(t + 1, 0)]
        expected = reference_logps(before_update[t], batch)[0]
        assert torch.allclose(ref, expected, atol=1e-6, rtol=0)
        # a post-step ("trust region") sync would hold the weights after step t's update,
        # i.e. the policy that starts step t+1: every log-ratio would be exactly 0
        post_step = reference_logps(before_update[t + 1], batch)[0]
        assert torch.allclose(post_step, pol, atol=1e-6, rtol=0)
        assert (ref - pol).abs().max() > 1e-3  # ours lags by one update


def test_k2_reference_is_the_weights_at_the_last_sync_point_shared_by_micro_batches(pairs, tiny_model, tmp_path):
    k = 2
    cfg = tiny_config(pairs, tiny_model, tmp_path / "run", sync_k=k, grad_accum=2, batch_size=1, max_steps=6)
    before_update, seen = _recording_run(cfg)
    for s in range(6):
        expected = max(0, k * (s // k) - 1)  # the weights before the update of the last sync step (0: initial)
        for i in range(2):
            batch, ref, _ = seen[(s, i)]
            matches = [t for t, weights in before_update.items()
                       if torch.allclose(ref, reference_logps(weights, batch)[0], atol=1e-6, rtol=0)]
            assert matches == [expected], (s, i, matches)  # those weights and no other step's


@pytest.mark.parametrize("loss,k,accum", [("dpo", 1, 1), ("dpo", 2, 2), ("kto", 1, 2), ("grpo", 2, 1), ("ipo", 1, 1)])
def test_lookahead_matches_copy(shards, tiny_model, tmp_path, loss, k, accum):
    runs = {}
    for mode in ("lookahead", "copy"):
        cfg = tiny_config(shards[loss], tiny_model, tmp_path / mode, loss=loss, reference=mode, sync_k=k, grad_accum=accum,
                          batch_size=2, max_steps=4, max_length=128)
        runs[mode] = losses_of(train(cfg))
    assert len(runs["copy"]) == 4
    assert runs["lookahead"] == pytest.approx(runs["copy"], abs=1e-6)
    assert len(set(runs["copy"])) > 1


def test_cached_offline_reference_equals_live_initial_model(pairs, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANLINE_CACHE", str(tmp_path / "cache"))
    live = losses_of(train(tiny_config(pairs, tiny_model, tmp_path / "copy", reference="copy", humanline=False)))
    cached = losses_of(train(tiny_config(pairs, tiny_model, tmp_path / "cached", humanline=False)))
    assert cached == pytest.approx(live, abs=1e-6)
    files = list((tmp_path / "cache" / "reference-logps").glob("*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = losses_of(train(tiny_config(pairs, tiny_model, tmp_path / "again", humanline=False)))
    assert again == pytest.approx(live, abs=1e-6)
    assert files[0].stat().st_mtime_ns == mtime  # reused, nothing recomputed
    # every entry holds the initial model's log-probs of one row's completion tokens
    entries = CachedReference(files[0]).entries
    assert entries and all(v.dtype == torch.float32 and (v < 0).all() for v in entries.values())


def test_lookahead_matches_copy_under_lora_and_gradient_checkpointing(pairs, tiny_model, tmp_path):
    common = dict(max_steps=3, lora_r=4)
    copied = losses_of(train(tiny_config(pairs, tiny_model, tmp_path / "copy", reference="copy", **common)))
    looked = losses_of(train(tiny_config(pairs, tiny_model, tmp_path / "look", gradient_checkpointing=True, **common)))
    assert looked == pytest.approx(copied, abs=1e-6)
    assert copied[0] == pytest.approx(0.6931, abs=1e-4) and copied[1] != copied[0]
