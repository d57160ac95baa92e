"""Settings declared once: --config files, resume with only --resume, pinned shard versions,
--keep-last, reference-free objectives, precision, and a training path free of data-plane
dependencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import VOCAB
from real_shards import losses_of, pair_rows, tiny_config, write
from tolerances import LOSS_SCALE, assert_close_fp32
from humanline_train.cli import main
from humanline_train.reference import CachedReference
from humanline_train.trainer import train


@pytest.fixture(scope="module")
def rows(shared_data):
    return pair_rows(shared_data, 40)


def _args(shards, model, *extra):
    return ["--shards", str(shards), "--loss", "dpo", "--model", str(model), "--batch-size", "2", "--max-length", "96",
            "--lr", "1e-3", "--warmup", "0", *extra]


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_config_file_values_and_flags_that_override_them(rows, tiny_model, tmp_path):
    shards = write(tmp_path / "pairs", "pairs", rows)
    config = tmp_path / "run.yaml"
    config.write_text(f"optimizer:\n  lr: 0.002\n  warmup: 0\nhumanline:\n  sync_k: 3\nobjective:\n  beta: 0.3\n"
                      f"max_steps: 2\nbatch_size: 4\n")
    result = CliRunner().invoke(main, ["--config", str(config), "--shards", str(shards), "--loss", "dpo", "--model",
                                       str(tiny_model), "--out", str(tmp_path / "run"), "--batch-size", "2",
                                       "--max-length", "96"])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["optimizer"]["lr"] == 0.002 and settings["humanline"]["sync_k"] == 3
    assert settings["objective"] == {"beta": 0.3} and settings["data"]["max_steps"] == 2
    assert settings["data"]["batch_size"] == 2  # the flag wins over the file
    assert settings["model"]["precision"] == "fp32"  # auto, resolved on this CPU machine
    assert settings["data"]["shards"] == str(shards.resolve())  # the version, pinned
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective:\n  gamma: 2.0\n")
    message = _one_error_line(CliRunner().invoke(main, ["--config", str(bad), *_args(shards, tiny_model), "--out",
                                                        str(tmp_path / "bad-run")]))
    assert "--gamma does not apply to --loss dpo" in message
    assert not (tmp_path / "bad-run").exists()


def test_resume_alone_trains_on_the_pinned_version_and_refuses_when_it_changed(rows, tiny_model, tmp_path):
    dataset = tmp_path / "pairs"
    write(dataset, "pairs", rows)
    run = tmp_path / "run"
    args = _args(dataset, tiny_model, "--max-steps", "4", "--save-every", "2")  # the README's form: a dataset folder
    whole = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    class Crash(Exception):
        pass

    def crash(step, policy):
        if step == 2:
            raise Crash

    config = tiny_config(dataset, tiny_model, run, max_steps=4, save_every=2, warmup=0)
    with pytest.raises(Crash):  # stopped after step 2's checkpoint
        train(config, {"before_step": crash})
    write(dataset, "pairs", list(reversed(rows)))  # a newer version appears in the dataset folder
    resumed = CliRunner().invoke(main, ["--resume", str(run)])  # nothing else: the run's settings supply the rest
    assert resumed.exit_code == 0, resumed.output
    assert losses_of(run) == pytest.approx(losses_of(tmp_path / "whole"), abs=1e-6)  # v1, not the new v2

    manifest = dataset / "v1" / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # same content, other bytes: not the version the run pinned
    message = _one_error_line(CliRunner().invoke(main, ["--resume", str(run)]))
    assert "shard version" in message and "changed since the run started" in message
    os.rename(dataset / "v1", tmp_path / "moved")
    message = _one_error_line(CliRunner().invoke(main, ["--resume", str(run)]))
    assert message.endswith(f"the run's shard version {(dataset / 'v1').resolve()} is gone")


def test_keep_last_keeps_only_the_newest_checkpoints(rows, tiny_model, tmp_path):
    shards = write(tmp_path / "pairs", "pairs", rows)
    run = train(tiny_config(shards, tiny_model, tmp_path / "run", max_steps=4, save_every=1, keep_last=2))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3", "step-4"]


def test_simpo_runs_no_reference_and_refuses_humanline(rows, tiny_model, tmp_path):
    shards = write(tmp_path / "pairs", "pairs", rows)
    seen = []
    run = train(tiny_config(shards, tiny_model, tmp_path / "run", loss="simpo", humanline=False, max_steps=3),
                {"reference": lambda step, i, batch, ref, pol: seen.append(ref)})
    assert seen == [None, None, None]  # no reference log-probs were computed for any micro-batch
    assert len(losses_of(run)) == 3
    message = _one_error_line(CliRunner().invoke(main, [*_args(shards, tiny_model), "--loss", "simpo", "--out",
                                                        str(tmp_path / "hl")]))
    assert "--loss simpo is reference-free: humanline sync and clip do not apply" in message
    assert not (tmp_path / "hl").exists()


def test_cached_reference_keeps_every_process_rows(tmp_path):
    """Two processes fill one cache: the main process writes the union (no last-writer-wins)."""
    from humanline_train.batches import Batch

    def batch(seed: int) -> Batch:
        ids = torch.tensor([[1, 2, 3 + seed, 4], [1, 2, 5 + seed, 6]])
        keys = [bytes([seed, 0]), bytes([seed, 1])]
        return Batch(ids, torch.ones_like(ids), torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool), keys)

    class Policy(torch.nn.Module):
        def forward(self, input_ids, attention_mask, completion_mask):
            return -input_ids.float() * completion_mask

    policy = Policy()
    policy.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))
    path = tmp_path / "cache.pt"
    posted = []
    other = CachedReference(path, gather=lambda added: posted.append(added) or [added], is_main=False)
    other.sync(policy, [(0, 0, batch(1)), (1, 0, batch(3))])  # process 1's micro-batches
    assert not path.exists()  # only the main process writes
    main_ref = CachedReference(path, gather=lambda added: [added, *posted], is_main=True)
    main_ref.sync(policy, [(0, 0, batch(0)), (1, 0, batch(2))])  # process 0's
    assert len(CachedReference(path).entries) == 8  # all 8 rows of both processes


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_lookahead_matches_copy_under_every_precision(rows, tiny_model, tmp_path, precision):
    shards = write(tmp_path / "pairs", "pairs", rows)
    runs = {mode: losses_of(train(tiny_config(shards, tiny_model, tmp_path / mode, reference=mode, max_steps=3,
                                              precision=precision)))
            for mode in ("lookahead", "copy")}
    assert runs["lookahead"] == pytest.approx(runs["copy"], abs=1e-6)
    settings = json.loads((tmp_path / "copy" / "settings.json").read_text())
    assert settings["model"]["precision"] == precision


def test_training_imports_no_data_plane_engine():
    """A GPU image without polars, duckdb or vllm can start humanline-train."""
    code = ("import sys\nfor name in ('polars', 'duckdb', 'vllm'): sys.modules[name] = None\n"
            "import humanline_train.trainer, humanline_train.cli\n"
            "from click.testing import CliRunner\n"
            "r = CliRunner().invoke(humanline_train.cli.main, ['train', '--help'])\n"
            "assert r.exit_code == 0, r.output\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("loss", ["dpo", "grpo"])
def test_packed_layout_trains_like_padded(rows, tiny_model, tmp_path, loss):
    """Padding-free packed micro-batches (each distinct prompt once, document-masked attention)
    give the padded run's per-step losses."""
    shards = write(tmp_path / "pairs", "pairs", rows)
    runs = {layout: losses_of(train(tiny_config(shards, tiny_model, tmp_path / layout, loss=loss, layout=layout,
                                                 max_steps=3)))
            for layout in ("padded", "packed")}
    assert_close_fp32(runs["packed"], runs["padded"], VOCAB, "losses", scale=LOSS_SCALE)
    assert json.loads((tmp_path / "packed" / "settings.json").read_text())["model"]["layout"] == "packed"
