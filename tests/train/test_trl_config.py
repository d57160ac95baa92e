"""What a TRL user brings: TRL config YAMLs, learning-rate schedules, logging every N steps, and
data smaller than one default step."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from click.testing import CliRunner

from real_shards import losses_of, pair_rows, tiny_config, write
from humanline_train.cli import main
from humanline_train.trainer import train
from humanline_train.trl_config import RENAMED


@pytest.fixture(scope="module")
def rows(shared_data):
    return pair_rows(shared_data, 12)


@pytest.fixture(scope="module")
def pairs(rows, tmp_path_factory):
    return write(tmp_path_factory.mktemp("shards") / "pairs", "pairs", rows)


def _settings(run) -> dict:
    return json.loads((run / "settings.json").read_text())


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_trl_key_read_is_a_field_of_trls_own_config_classes():
    trl = pytest.importorskip("trl")
    fields = set()
    for cls in (trl.DPOConfig, trl.KTOConfig, trl.GRPOConfig, trl.ModelConfig):
        fields |= set(cls.__dataclass_fields__)
    assert set(RENAMED) - {"warmup_ratio"} <= fields  # warmup_ratio: TRL before transformers 5
    assert {"beta", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "max_length", "max_steps", "seed",
            "temperature", "top_p", "desirable_weight", "undesirable_weight", "max_grad_norm", "logging_steps",
            "report_to", "gradient_checkpointing"} <= fields  # keys that share our names


def test_a_trl_dpo_config_yaml_runs_with_its_values_read_as_ours(pairs, tiny_model, tmp_path):
    config = tmp_path / "dpo.yaml"
    run = tmp_path / "run"
    config.write_text(yaml.safe_dump({  # a DPOConfig + ModelConfig as TRL's scripts write them
        "model_name_or_path": str(tiny_model), "output_dir": str(run), "learning_rate": "1e-3",
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "num_train_epochs": 1, "max_steps": 3,
        "max_length": 96, "beta": 0.2, "bf16": False, "lr_scheduler_type": "cosine", "warmup_steps": 0.34,
        "logging_steps": 1, "save_steps": 2, "save_total_limit": 1, "report_to": "none", "seed": 3, "use_peft": True,
        "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": ["q_proj", "v_proj"],
        "max_grad_norm": 0.5, "gradient_checkpointing": False}))
    result = CliRunner().invoke(main, ["--config", str(config), "--shards", str(pairs), "--loss", "dpo"])
    assert result.exit_code == 0, result.output
    s = _settings(run)
    assert (s["optimizer"]["lr"], s["optimizer"]["lr_scheduler"], s["optimizer"]["warmup"]) == (1e-3, "cosine", 0.34)
    assert (s["data"]["batch_size"], s["data"]["grad_accum"], s["data"]["max_steps"], s["data"]["seed"]) == (2, 2, 3, 3)
    assert (s["model"]["lora_r"], s["model"]["lora_alpha"], s["model"]["lora_target_modules"]) == (4, 8.0, "q_proj,v_proj")
    assert s["model"]["precision"] == "fp32" and s["objective"]["beta"] == 0.2 and s["optimizer"]["max_grad_norm"] == 0.5
    assert (s["run"]["save_every"], s["run"]["keep_last"], s["run"]["report_to"]) == (2, 1, "none")
    assert len(_metrics(run)) == 3 and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]


def test_trl_grpo_keys_mean_grpos_own(tmp_path):
    from humanline_train.settings import load_config_file

    config = tmp_path / "grpo.yaml"
    config.write_text("beta: 0.04\nepsilon: 0.25\nnum_generations: 4\nmax_completion_length: 64\nuse_peft: false\n"
                      "max_steps: -1\nwarmup_steps: 5\nwarmup_ratio: 0.1\nlr_scheduler_type: constant_with_warmup\n")
    assert load_config_file(config, "grpo") == {"beta_kl": 0.04, "eps_low": 0.25, "eps_high": 0.25, "samples": 4,
                                                "max_new_tokens": 64, "lora_r": 0, "warmup": 5.0,
                                                "lr_scheduler": "constant"}


@pytest.mark.parametrize(("text", "message"), [
    ("loss_type: sigmoid\npadding_free: true\nlearning_rate: 1.0e-6\n",
     "loss_type, padding_free: not a setting of humanline-train, nor a TRL key it reads (docs/training.md lists both)"),
    ("learning_rate: 1.0e-6\nlr: 2.0e-6\n", "learning_rate and lr both set lr (1e-06, 2e-06); keep one"),
    ("per_device_train_batch_size: 0\n", "batch_size must be >= 1, got 0"),
])
def test_trl_keys_we_do_not_read_are_one_line(pairs, tiny_model, tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(config), "--shards", str(pairs), "--loss", "dpo", "--model",
                                       str(tiny_model), "--out", str(tmp_path / "run")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines == [f"error: --config {config}: {message}"], result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scheduler", ["constant", "linear", "cosine"])
def test_learning_rate_schedules_follow_their_formulas(pairs, tiny_model, tmp_path, scheduler):
    """6 steps, 2 of warmup from 0, then constant / linear decay to 0 / half a cosine to 0."""
    run = train(tiny_config(pairs, tiny_model, tmp_path / "run", max_steps=6, warmup=2, lr=1e-3,
                            lr_scheduler=scheduler))
    total, warmup = 6, 2
    decay = {"constant": lambda p: 1.0, "linear": lambda p: 1 - p, "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p))}
    expected = [1e-3 * (t / warmup if t < warmup else decay[scheduler]((t - warmup) / (total - warmup)))
                for t in range(total)]
    assert [m["train/learning_rate"] for m in _metrics(run)] == pytest.approx(expected, abs=1e-12)


def test_trackers_get_the_mean_of_each_logging_window(pairs, tiny_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_config(pairs, tiny_model, tmp_path / "run", max_steps=5, logging_steps=2,
                            report_to="tensorboard"))
    events = EventAccumulator(str(run / "tracking" / "humanline"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    losses = losses_of(run)
    assert logged == pytest.approx({2: (losses[0] + losses[1]) / 2, 4: (losses[2] + losses[3]) / 2, 5: losses[4]},
                                   rel=1e-6)


@pytest.mark.parametrize(("batch_size", "drop_last", "steps", "trained", "dropped"), [
    (8, False, 1, 6, 0), (5, False, 2, 6, 0), (5, True, 1, 5, 1)])
def test_six_examples_train_with_any_batch_and_the_counts_are_true(rows, tiny_model, tmp_path, batch_size, drop_last,
                                                                   steps, trained, dropped):
    six = write(tmp_path / "six", "pairs", rows[:6])
    result = CliRunner().invoke(main, ["--shards", str(six), "--loss", "dpo", "--model", str(tiny_model), "--max-length",
                                       "96", "--batch-size", str(batch_size), "--out", str(tmp_path / "run"),
                                       *(["--drop-last"] if drop_last else [])])
    assert result.exit_code == 0, result.output
    assert len(_metrics(tmp_path / "run")) == steps
    assert f"{dropped} left out of every step (an epoch's last, partial step), {trained} trained" in result.stderr
