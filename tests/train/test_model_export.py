"""LoRA checkpoints hold PEFT adapters; `humanline-train export` writes folders others load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import tree_digest
from real_shards import pair_rows, tiny_config, write
from humanline_train.cli import main
from humanline_train.trainer import train

TEXT = "Question: what is 12 + 30? Answer: 12 + 30 = 42, so the answer is 42."
LORA = dict(lora_r=4, lora_alpha=16.0, lora_dropout=0.1, lora_target_modules="q_proj,v_proj,down_proj")


@pytest.fixture(scope="module")
def pairs(shared_data, tmp_path_factory):
    return write(tmp_path_factory.mktemp("shards") / "pairs", "pairs", pair_rows(shared_data, 12))


@pytest.fixture(scope="module")
def lora_run(pairs, tiny_model, tmp_path_factory):
    """A 2-step LoRA run (checkpoints at steps 1 and 2) and its policy after training."""
    seen = {}
    run = train(tiny_config(pairs, tiny_model, tmp_path_factory.mktemp("lora") / "run", max_steps=2, save_every=1,
                            lr=1e-2, humanline=False, **LORA), {"before_step": lambda step, policy: seen.update(policy=policy)})
    return run, seen["policy"].model.eval()


@pytest.fixture(scope="module")
def full_run(pairs, tiny_model, tmp_path_factory):
    return train(tiny_config(pairs, tiny_model, tmp_path_factory.mktemp("full") / "run", max_steps=1, humanline=False))


def logps(model, tokenizer_dir: Path) -> torch.Tensor:
    """Per-token log-probs [T - 1] of TEXT under ``model``, in float32."""
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert float((a - b).norm() / b.norm()) < rel


def base(tiny_model: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def file_mode() -> int:
    """The mode a new file gets here (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def assert_modes(folder: Path) -> None:
    modes = {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {oct(file_mode())}, modes


def export(*args) -> CliRunner:
    return CliRunner().invoke(main, ["export", *map(str, args)])


def test_lora_checkpoint_is_the_peft_adapter_giving_the_trained_policys_logprobs(lora_run, tiny_model):
    run, policy = lora_run
    checkpoint = run / "checkpoints" / "step-2"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
            "trainer_state.pt"} <= names
    assert not {"model.safetensors", "config.json"} & names  # no merged copy of the model
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 16.0, 0.1)
    assert set(config["target_modules"]) == {"q_proj", "v_proj", "down_proj"}
    loaded = PeftModel.from_pretrained(base(tiny_model), checkpoint).eval()
    trained = logps(policy, checkpoint)
    assert_close(logps(loaded, checkpoint), trained)
    assert float((logps(base(tiny_model), tiny_model) - trained).norm() / trained.norm()) > 1e-3  # it trained
    assert_modes(run)


def test_export_merge_gives_the_adapter_models_logprobs_as_a_plain_model(lora_run, tiny_model, tmp_path):
    run, policy = lora_run
    result = export(run, "--merge", "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    out = Path(result.stdout.strip().splitlines()[-1])
    assert out == tmp_path / "merged"
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= \
        {p.name for p in out.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32  # the run's training dtype
    assert_close(logps(merged, out), logps(policy, out))
    assert AutoTokenizer.from_pretrained(out).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert_modes(out)


def test_export_of_a_lora_step_is_its_adapter_folder(lora_run, tiny_model, tmp_path):
    run, _ = lora_run
    result = export(run, "--step", "1", "--out", tmp_path / "adapter")
    assert result.exit_code == 0, result.output
    out = tmp_path / "adapter"
    saved = load_file(run / "checkpoints" / "step-1" / "adapter_model.safetensors")
    exported = load_file(out / "adapter_model.safetensors")
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    assert not torch.equal(saved[next(iter(saved))], load_file(run / "checkpoints" / "step-2" / "adapter_model.safetensors")[next(iter(saved))])
    loaded = PeftModel.from_pretrained(base(tiny_model), out).eval()
    from_checkpoint = PeftModel.from_pretrained(base(tiny_model), run / "checkpoints" / "step-1").eval()
    assert torch.equal(logps(loaded, out), logps(from_checkpoint, out))
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    assert_modes(out)


def test_export_of_a_full_fine_tuning_run_loads_in_the_dtype_asked(full_run, tmp_path):
    (tmp_path / "model").mkdir()  # an empty folder is fine
    result = export(full_run, "--dtype", "bf16", "--out", tmp_path / "model")
    assert result.exit_code == 0, result.output
    out = tmp_path / "model"
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == torch.bfloat16
    trained = AutoModelForCausalLM.from_pretrained(full_run / "checkpoints" / "step-1", dtype=torch.float32).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[name].to(torch.bfloat16)), name
    assert_modes(out)


def test_bad_exports_are_one_error_line_and_write_nothing(lora_run, pairs, tmp_path):
    run, _ = lora_run
    before = tree_digest(run)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    no_base = shutil.copytree(run, tmp_path / "no_base")  # its initial model is gone
    settings = json.loads((no_base / "settings.json").read_text())
    settings["model"]["model"] = str(tmp_path / "gone")
    (no_base / "settings.json").write_text(json.dumps(settings))
    cases = {
        "missing run": ([tmp_path / "nowhere", "--out", tmp_path / "a"], "not a run directory"),
        "no such step": ([run, "--step", "7", "--out", tmp_path / "a"], "no checkpoint at --step 7 (checkpoints at steps: 1, 2)"),
        "out not empty": ([run, "--out", taken], "already exists and is not an empty folder"),
        "out in a version": ([run, "--out", pairs / "model"], "lies inside the version"),
        "out in a dataset": ([run, "--out", pairs.parent / "model"], "lies inside the dataset folder"),
        "bad dtype": ([run, "--dtype", "fp8", "--out", tmp_path / "a"], "'--dtype': 'fp8' is not one of"),
        "merge, initial model gone": ([no_base, "--merge", "--out", tmp_path / "a"], "gone' not found"),
    }
    dataset = tree_digest(pairs.parent)
    for name, (args, message) in cases.items():
        result = export(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, (name, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, lines)
        assert not (tmp_path / "a").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["no_base", "taken"], name
        assert tree_digest(run) == before and tree_digest(pairs.parent) == dataset, name
        assert (taken / "keep.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1, name


@pytest.mark.parametrize("flags, message", [
    (["--lora-alpha", "8"], "--lora-alpha applies to LoRA runs only: pass --lora-r too"),
    (["--lora-r", "4", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    (["--lora-r", "4", "--lora-target-modules", "no_such_proj"], "--lora-target-modules no_such_proj: "),
])
def test_bad_lora_settings_are_one_error_line_and_write_nothing(pairs, tiny_model, tmp_path, flags, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--shards", str(pairs), "--loss", "dpo", "--model", str(tiny_model), "--out", str(out),
                                       "--max-steps", "1", *flags])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not out.exists()


LENGTH_SCORER = f"python:{Path(__file__).resolve().parents[1] / 'fixtures' / 'user_scorer.py'}:length_reward"


@pytest.mark.parametrize("engine", ["reload", "live"])
def test_online_lora_rounds_sample_from_the_policy_at_the_refresh(shared_data, tiny_model, tmp_path, engine):
    """A round loads the LoRA checkpoint merged on demand (reload), or names the live engine's own
    folder and the merged weights pushed into it (live)."""
    from humanline_data.importers import import_sources
    from humanline_data.store import open_version

    prompts = import_sources([shared_data / "gsm8k" / "train.jsonl"], tmp_path / "prompts", limit=4)
    run = train(tiny_config(None, tiny_model, tmp_path / "run", loss="grpo", batch_size=3, max_steps=3, refresh_every=2,
                            prompts=str(prompts), scorer=LENGTH_SCORER, refresh_prompts=2, samples=3, max_new_tokens=8,
                            refresh_engine=engine, save_every=2, lora_r=4, lr=1e-2))
    shard = open_version(json.loads((run / "refreshes.json").read_text())["1"])
    scored = open_version(shard.manifest["parents"][0]["path"])
    producer = open_version(scored.manifest["parents"][0]["path"]).manifest["producer"]
    assert (producer["engine"], producer["step"]) == (engine, 2)
    checkpoint = run / "checkpoints" / "step-2"
    if engine == "live":
        assert Path(producer["model"]) == tiny_model.resolve() and producer["weights_sha256"]
        assert not (checkpoint / "merged").exists()
        return
    assert Path(producer["model"]) == (checkpoint / "merged").resolve()
    adapter = PeftModel.from_pretrained(base(tiny_model), checkpoint).eval()
    assert_close(logps(AutoModelForCausalLM.from_pretrained(checkpoint / "merged"), checkpoint), logps(adapter, checkpoint))
