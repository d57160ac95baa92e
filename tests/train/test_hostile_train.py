"""Hostile input to ``humanline-train``: every bad setting, config value, output path, damaged
run directory or diverging run ends in one ``error:`` line with exit status 2 (or, for damaged
checkpoints, a resume from the newest intact one), and nothing already written is lost or changed."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from real_shards import losses_of, pair_rows, write
from humanline_train.cli import main


@pytest.fixture(scope="module")
def pairs(shared_data, tmp_path_factory):
    return write(tmp_path_factory.mktemp("shards") / "pairs", "pairs", pair_rows(shared_data, 12))


def _args(shards, model, *extra):
    return ["--shards", str(shards), "--loss", "dpo", "--model", str(model), "--batch-size", "2", "--max-length", "96",
            "--lr", "1e-3", "--warmup", "0", "--max-steps", "2", *extra]


def one_error_line(result) -> str:
    """The single ``error:`` line of a failed invocation: exit status 2, no traceback, the last
    line of stderr (progress bars of a run that started may precede it)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and lines[-1] == errors[0], (result.exit_code, result.output)
    assert "Traceback" not in result.stderr and isinstance(result.exception, SystemExit)
    return errors[0]


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--max-steps", "-1"], "--max-steps must be >= 1, got -1"),
    (["--lr", "nan"], "--lr must be finite, got nan"),
    (["--lr", "inf"], "--lr must be finite, got inf"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--lr", "-1e-5"], "--lr must be > 0, got -1e-05"),
    (["--beta", "-0.1"], "--beta must be > 0, got -0.1"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1.0"),
    (["--keep-last", "-1"], "--keep-last must be >= 0, got -1"),
    (["--log-eps-p", "0.5"], "--log-eps-p must be < 0, got 0.5"),
    (["--max-grad-norm", "nan"], "--max-grad-norm must be finite, got nan"),
    (["--sync-k", "0"], "--sync-k must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
])
def test_settings_out_of_range_are_refused_before_anything_is_written(pairs, tiny_model, tmp_path, flags, message):
    result = CliRunner().invoke(main, [*_args(pairs, tiny_model), *flags, "--out", str(tmp_path / "run")])
    assert one_error_line(result) == f"error: {message}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("batch_size: true\n", "batch_size must be an integer, got True"),
    ("data:\n  epochs: 1.5\n", "epochs must be an integer, got 1.5"),
    ("lr: [0.001]\n", "lr must be a number, got [0.001]"),
    ("lr: fast\n", "lr must be a number, got 'fast'"),
    ("lr: .nan\n", "lr must be finite, got nan"),
    ("gradient_checkpointing: 3\n", "gradient_checkpointing must be true or false, got 3"),
    ("precision: fp64\n", "precision must be one of auto, fp32, bf16-mixed, bf16, got 'fp64'"),
    ("lr: 0.1\noptimizer:\n  lr: 0.2\n", "lr is given twice (lr and optimizer.lr); keep one"),
])
def test_config_values_are_read_as_their_flags_would_be_or_refused(pairs, tiny_model, tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(config), *_args(pairs, tiny_model), "--out", str(tmp_path / "run")])
    assert one_error_line(result) == f"error: --config {config}: {message}"
    assert not (tmp_path / "run").exists()


def test_yaml_1_1_exponent_floats_are_numbers(pairs, tiny_model, tmp_path):
    """YAML 1.1 reads ``1e-3`` (no dot) as text; the flag would read it as 0.001, so does --config."""
    import json

    config = tmp_path / "run.yaml"
    config.write_text("optimizer:\n  lr: 1e-3\nmax_grad_norm: 2\nbeta: 5e-2\n")
    args = [a for a in _args(pairs, tiny_model) if a not in ("--lr", "1e-3")]
    result = CliRunner().invoke(main, ["--config", str(config), *args, "--max-steps", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["optimizer"]["lr"] == 0.001 and settings["optimizer"]["max_grad_norm"] == 2.0
    assert settings["objective"]["beta"] == 0.05


def test_a_diverging_run_stops_before_the_update_and_never_saves_broken_weights(pairs, tiny_model, tmp_path):
    """lr 1e12 makes step 2's loss NaN (step 1's update blows the weights up): the run stops
    there in one line naming the step and step 1's checkpoint, which stays finite and alone."""
    import json

    import torch
    from safetensors.torch import load_file

    run = tmp_path / "run"
    args = [a for a in _args(pairs, tiny_model) if a not in ("--lr", "1e-3")]
    result = CliRunner().invoke(main, [*args, "--lr", "1e12", "--max-steps", "4", "--save-every", "1", "--out", str(run)])
    message = one_error_line(result)
    assert message.startswith("error: step 2: loss nan and gradient norm nan are not finite")
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step-1'}" in message
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-1"]
    assert all(torch.isfinite(t).all() for t in load_file(run / "checkpoints" / "step-1" / "model.safetensors").values())
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_non_finite_weights_are_never_saved(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from humanline_train import checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.lm_head.weight[3, 5] = float("inf")
    with pytest.raises(checkpoint.DivergedError, match=r"step-7: not saved, weight .* holds NaN or infinity"):
        checkpoint.save(tmp_path, 7, model, AutoTokenizer.from_pretrained(tiny_model), {}, {})
    assert not (tmp_path / "checkpoints" / "step-7").exists()


def test_outputs_that_are_no_run_folder_are_refused(pairs, tiny_model, tmp_path, monkeypatch):
    """--out "" / "." / "/" / a dataset folder / inside one / inside a version: one line, nothing written."""
    dataset = pairs.parent
    before = sorted(str(p) for p in dataset.rglob("*"))
    monkeypatch.chdir(tmp_path)
    for out, needle in [("", "--out must name a folder"), ("/", "/: the filesystem root cannot be the run folder"),
                        (dataset, f"{dataset}: is the dataset folder {dataset}"), (dataset / "run", "lies inside the dataset folder"),
                        (pairs / "run", f"lies inside the version {pairs}")]:
        message = one_error_line(CliRunner().invoke(main, [*_args(pairs, tiny_model), "--out", str(out)]))
        assert needle in message, message
    assert sorted(str(p) for p in dataset.rglob("*")) == before and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def whole_run(pairs, tiny_model, tmp_path_factory):
    """4 steps, checkpoints after steps 2 and 4: the run every damaged one must resume to."""
    run = tmp_path_factory.mktemp("whole") / "run"
    result = CliRunner().invoke(main, [*_args(pairs, tiny_model), "--max-steps", "4", "--save-every", "2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("damage", ["trainer_state.pt", "model.safetensors", "reference.pt", "metrics.jsonl"])
def test_a_damaged_checkpoint_is_named_and_the_run_resumes_from_the_newest_intact_one(whole_run, tmp_path, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    if damage == "metrics.jsonl":  # a kill mid-line: the last line torn
        metrics = run / "metrics.jsonl"
        metrics.write_bytes(metrics.read_bytes()[:-25])
    else:
        target = run / "checkpoints" / "step-4" / damage
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    result = CliRunner().invoke(main, ["--resume", str(run)])
    assert result.exit_code == 0, result.output
    why = "metrics.jsonl ends at step 3, so its later steps run again" if damage == "metrics.jsonl" else f"damaged ({damage}: "
    assert f"warning: passing over {run / 'checkpoints' / 'step-4'}: {why}" in result.stderr
    assert losses_of(run) == pytest.approx(losses_of(whole_run), abs=1e-6)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]


KILLED_AT_FIRST_SAVE = """
import os, signal, sys
from humanline_train import checkpoint
checkpoint._write_manifest = lambda folder, step: os.kill(os.getpid(), signal.SIGKILL)  # every file written, then killed
from humanline_train.cli import main
main(sys.argv[1:])
"""


def test_a_run_killed_during_its_first_save_resumes_from_the_start(pairs, tiny_model, whole_run, tmp_path):
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_FIRST_SAVE, *_args(pairs, tiny_model), "--max-steps", "4",
                             "--save-every", "2", "--out", str(run)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -9
    assert [p.name[:5] for p in (run / "checkpoints").iterdir()] == [".tmp-"]  # the unfinished save
    again = CliRunner().invoke(main, [*_args(pairs, tiny_model), "--max-steps", "4", "--save-every", "2", "--out", str(run)])
    assert "already exists and is not empty; pass --resume" in one_error_line(again)
    result = CliRunner().invoke(main, ["--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert "holds no intact checkpoint; training starts again from step 0" in result.stderr
    assert losses_of(run) == pytest.approx(losses_of(whole_run), abs=1e-6)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]  # the leftover is gone


def test_one_run_folder_one_trainer(whole_run, tmp_path):
    import os
    import shutil

    from humanline_train import checkpoint

    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    lock = checkpoint.lock_run_dir(run)  # another trainer holds it
    try:
        message = one_error_line(CliRunner().invoke(main, ["--resume", str(run)]))
    finally:
        os.close(lock)
    assert message == f"error: {run} is in use by another humanline-train process"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def train_on_a_full_disk(mount, shards: str, model: str) -> dict:
    """A run whose folder is on a disk too small for its first checkpoint (the child's side)."""
    run = mount / "run"
    result = CliRunner().invoke(main, [*_args(shards, model), "--max-steps", "2", "--out", str(run)])
    return {"exit": result.exit_code, "stderr": result.stderr, "checkpoints": sorted(os.listdir(run / "checkpoints")),
            "metrics": (run / "metrics.jsonl").read_text().count("\n"), "exception": repr(result.exception)}


def test_a_full_disk_at_a_checkpoint_is_one_line_naming_it(pairs, tiny_model, tmp_path):
    from small_disk import on_small_fs

    result = on_small_fs(tmp_path, "6m", __file__, "train_on_a_full_disk", str(pairs), str(tiny_model))
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]
    assert result["exit"] == 2 and "Traceback" not in result["stderr"], result
    assert lines == [f"error: {tmp_path / 'small' / 'run' / 'checkpoints' / 'step-2'}: cannot write "
                     "(No space left on device, ENOSPC)"]
    assert result["checkpoints"] == [] and result["metrics"] == 2  # no half checkpoint; the steps' metrics kept
