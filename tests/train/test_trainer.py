"""The loop end to end: each loss learns a repeated batch, metrics.jsonl, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import tree_digest
from real_shards import group_rows, losses_of, pair_rows, tiny_config, unpaired_rows, write, write_unchecked
from humanline_data.schema import prompt_id
from humanline_train.cli import main
from humanline_train.trainer import train

REQUIRED = {"step", "train/loss", "train/kl", "train/humanline/unclamped_frac", "train/humanline/syncs", "train/grad_norm",
            "train/learning_rate", "train/perf/tokens_per_s", "train/perf/seconds_forward", "train/perf/seconds_backward",
            "train/perf/seconds_reference", "train/perf/seconds_sync", "train/data/skipped_prompts",
            "train/data/truncated_completions"}
PER_LOSS = {"dpo": {"train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins", "train/rewards/accuracies"},
            "kto": {"train/rewards/chosen", "train/rewards/rejected", "train/kto/reference_point"},
            "grpo": {"train/clip_ratio/region_mean", "train/grpo/advantage"}}


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    pairs = pair_rows(shared_data, 40)
    return {
        "dpo": write(root / "two_pairs", "pairs", pairs[:2]),
        "kto": write(root / "one_pair_split", "unpaired", unpaired_rows(pairs[:1])),
        "grpo": write(root / "one_group", "groups", group_rows(shared_data, 1)),
        "pairs": write(root / "pairs", "pairs", pairs),
        "rows": pairs,
    }


@pytest.mark.parametrize("loss,batch_size", [("dpo", 2), ("kto", 2), ("grpo", 3)])
@pytest.mark.parametrize("humanline", [False, True])
def test_each_loss_learns_a_repeated_batch(shards, tiny_model, tmp_path, monkeypatch, loss, batch_size, humanline):
    monkeypatch.setenv("HUMANLINE_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(shards[loss], tiny_model, tmp_path / "run", loss=loss, batch_size=batch_size, epochs=5,
                      max_steps=None, humanline=humanline, lr=3e-3)
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # one step per pass over the 1-step shard
    for row in rows:
        assert REQUIRED | PER_LOSS[loss] <= set(row)
    first = rows[0]["train/loss"]
    assert rows[-1]["train/loss"] < first - 0.01
    if not humanline:  # a fixed reference: the loss keeps falling (synced, it measures the last update)
        assert rows[-1]["train/loss"] < rows[1]["train/loss"] < first
    assert (run / "checkpoints" / "step-5" / "config.json").is_file()


# --- bad input through the CLI: one line, exit != 0, the earlier run untouched ---------------


@pytest.fixture(scope="module")
def earlier_run(shards, tiny_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("earlier") / "run"
    args = ["--shards", str(shards["pairs"]), "--loss", "dpo", "--model", str(tiny_model), "--out", str(run),
            "--batch-size", "2", "--max-length", "96", "--max-steps", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(run)
    return run, args


def _bad_models(tiny_model: Path, root: Path) -> dict:
    no_tokenizer = root / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, no_tokenizer / name)
    no_template = root / "no_template"
    shutil.copytree(tiny_model, no_template)
    (no_template / "chat_template.jinja").unlink()
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    return {"no_tokenizer": no_tokenizer, "no_template": no_template}


def test_bad_inputs_fail_with_one_line_and_leave_earlier_run(shards, tiny_model, tmp_path, shared_data, earlier_run):
    run, good = earlier_run
    before = tree_digest(run)
    models = _bad_models(tiny_model, tmp_path)
    prompts = [{"prompt_id": prompt_id(r["messages"]), "messages": r["messages"], "source": "x", "split": "train"}
               for r in shards["rows"][:3]]
    nan_pair = dict(shards["rows"][0], chosen_reward=float("nan"), rejected_reward=0.0)
    nan_group = dict(group_rows(shared_data, 1)[0], advantages=[1.0, float("nan"), 0.0])
    fresh = tmp_path / "new-run"

    def with_(**changes):
        args = list(good)
        for flag, value in changes.items():
            flag = "--" + flag.replace("_", "-")
            if flag in args:
                args[args.index(flag) + 1] = str(value)
            else:
                args += [flag, str(value)]
        return args

    cases = {
        "prompts shard for dpo": (with_(shards=write(tmp_path / "prompts", "prompts", prompts), out=fresh), "kind 'prompts'"),
        "unpaired shard for dpo": (with_(shards=shards["kto"], out=fresh), "kind 'unpaired'"),
        "groups shard for kto": (with_(shards=shards["grpo"], loss="kto", out=fresh), "kind 'groups'"),
        "empty shard": (with_(shards=write(tmp_path / "empty", "pairs", []), out=fresh), "empty shard"),
        "NaN reward": (with_(shards=write_unchecked(tmp_path / "nan", "pairs", [nan_pair]), out=fresh), "NaN"),
        "NaN advantage": (with_(shards=write_unchecked(tmp_path / "nan_adv", "groups", [nan_group]), loss="grpo",
                                out=fresh), "advantages holds NaN"),
        "nothing fits": (with_(max_length=8, out=fresh), "no example fits --max-length 8"),
        "no tokenizer": (with_(model=models["no_tokenizer"], out=fresh), "tokenizer"),
        "no chat template": (with_(model=models["no_template"], out=fresh), "no chat template"),
        "missing model": (with_(model=tmp_path / "nowhere", out=fresh), "not found"),
        "unknown refresh engine": (with_(refresh_engine="warm", out=fresh), "'--refresh-engine': 'warm' is not one of"),
        "out exists": (good, "already exists"),
        "resume, other settings": (with_(lr=0.5) + ["--resume", str(run)], "settings differ"),
        "resume, not a run": (with_(out=tmp_path) + ["--resume", str(tmp_path)], "not a run directory"),
    }
    for name, (args, message) in cases.items():
        result = CliRunner().invoke(main, [str(a) for a in args])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, (name, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, lines)
        assert not fresh.exists(), name
        assert tree_digest(run) == before, name


# --- online: a new shard sampled from the policy every R steps ---------------------------------

LENGTH_SCORER = f"python:{Path(__file__).resolve().parents[1] / 'fixtures' / 'user_scorer.py'}:length_reward"


@pytest.mark.parametrize("refresh_async, engine", [(False, "live"), (True, "live"), (True, "reload")],
                         ids=["sync", "async", "async-reload"])
def test_online_refresh_samples_from_the_checkpoint_and_resets_the_reference(shared_data, tiny_model, tmp_path,
                                                                             refresh_async, engine):
    from humanline_data.importers import import_sources
    from humanline_data.store import open_version

    prompts = import_sources([shared_data / "gsm8k" / "train.jsonl"], tmp_path / "prompts", limit=8)
    cfg = tiny_config(None, tiny_model, tmp_path / "run", loss="grpo", batch_size=3, max_steps=4, refresh_every=2,
                      prompts=str(prompts), scorer=LENGTH_SCORER, refresh_prompts=2, samples=3, max_new_tokens=8,
                      refresh_async=refresh_async, refresh_engine=engine, save_every=2)  # sync live saves no round checkpoint itself
    seen = {}
    run = train(cfg, {"reference": lambda step, i, batch, ref, pol: seen.__setitem__(step, (ref[0], pol[0]))})
    rounds = json.loads((run / "refreshes.json").read_text())
    assert list(rounds) == ["0", "1"]  # round 0: no --shards, so sampled from the initial model

    def sampler(shard):  # shard -> scored -> completions, whose producer is the sampling policy
        scored = open_version(Path(open_version(shard).manifest["parents"][0]["path"]))
        producer = open_version(Path(scored.manifest["parents"][0]["path"])).manifest["producer"]
        assert producer["engine"] == engine
        return Path(producer["model"]).resolve()

    assert sampler(rounds["0"]) == tiny_model.resolve()
    # sync: the policy at the refresh (step 2); async: the one a refresh earlier (the initial model)
    assert sampler(rounds["1"]) == (tiny_model.resolve() if refresh_async else (run / "checkpoints" / "step-2").resolve())
    assert [json.loads(line)["train/online/round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 0, 1, 1]
    for step in (0, 2):  # segment starts: the reference is the policy itself
        ref, pol = seen[step]
        assert torch.allclose(ref, pol, atol=1e-6, rtol=0)
    ref, pol = seen[3]
    assert (ref - pol).abs().max() > 1e-4


@pytest.mark.slow
def test_embedded_model_dpo_on_real_pairs_lowers_the_loss(shared_data, embedded_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANLINE_CACHE", str(Path(embedded_model).parents[1]))  # reuse the converted model
    shard = write(tmp_path / "pairs", "pairs", pair_rows(shared_data, 2))
    cfg = tiny_config(shard, "smollm2-135m-instruct", tmp_path / "run", batch_size=2, max_length=128, epochs=4,
                      max_steps=None, lr=2e-5, humanline=False)
    losses = losses_of(train(cfg))
    assert len(losses) == 4
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # the reference is the initial model
    assert losses[-1] < losses[1] < losses[0]


@pytest.mark.parametrize("loss", ["kto", "grpo"])
def test_kto_and_grpo_on_real_data_lower_the_loss_with_clipping_on(shared_data, tiny_model, tmp_path, loss):
    """Humanline clipping on (sync_k = 4: the reference stays the initial model for the 4 steps),
    the same micro-batch every step: the loss must fall. (The embedded model's learning is shown
    by the DPO test above and by the main job's GRPO run; here the objective's path is what counts.)"""
    if loss == "kto":
        shard, batch = write(tmp_path / "unpaired", "unpaired", unpaired_rows(pair_rows(shared_data, 2))), 4
    else:
        shard, batch = write(tmp_path / "groups", "groups", group_rows(shared_data, 1)), 3
    cfg = tiny_config(shard, tiny_model, tmp_path / "run", loss=loss, batch_size=batch, max_length=256,
                      epochs=4, max_steps=None, lr=1e-3, sync_k=4)
    rows = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert rows[-1]["train/humanline/unclamped_frac"] > 0.5  # clipping is on; most tokens still inside [-1.5, 1.5]


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_settings_that_need_whole_weights_are_refused_under_sharding(shards, tiny_model, tmp_path, kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from humanline_data.errors import HumanlineError
    from humanline_train.trainer import check_distributed

    sharded = SimpleNamespace(distributed_type=DistributedType[kind])
    with pytest.raises(HumanlineError, match=f"^--reference copy keeps whole weights on every process; under {kind} use"):
        check_distributed(tiny_config(shards["pairs"], tiny_model, tmp_path / "run", reference="copy"), sharded)
    with pytest.raises(HumanlineError, match=f"^--lora-r saves merged weights from whole adapters; under {kind}"):
        check_distributed(tiny_config(shards["pairs"], tiny_model, tmp_path / "run", lora_r=4), sharded)
    check_distributed(tiny_config(shards["pairs"], tiny_model, tmp_path / "run"), sharded)  # lookahead, no LoRA: fine
    assert not (tmp_path / "run").exists()
