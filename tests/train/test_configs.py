"""The commented YAMLs in configs/ run as they are, shrunk by flags to a tiny model and a step or
two (flags win over the file), and mean what their comments say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from real_shards import pair_rows, unpaired_rows, write
from humanline_train.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--max-length", "96", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    from humanline_data.importers import import_sources

    root = tmp_path_factory.mktemp("data")
    pairs = pair_rows(shared_data, 8)
    return {"pairs": write(root / "pairs", "pairs", pairs), "unpaired": write(root / "unpaired", "unpaired", unpaired_rows(pairs)),
            "prompts": import_sources([shared_data / "gsm8k" / "train.jsonl"], root / "prompts", limit=4)}


@pytest.mark.parametrize(("name", "inputs", "expected"), [
    ("dpo_humanline", ["--shards", "pairs"], {"loss": "dpo", "humanline.sync": True, "humanline.clip": True}),
    ("dpo_plain", ["--shards", "pairs"], {"loss": "dpo", "humanline.sync": False, "humanline.clip": False}),
    ("kto_humanline", ["--shards", "unpaired"], {"loss": "kto", "model.lora_r": 16, "run.report_to": "tensorboard"}),
    ("grpo_online_humanline", ["--prompts", "prompts", "--refresh-every", "1", "--refresh-prompts", "2", "--samples",
                               "2", "--max-new-tokens", "8"],
     {"loss": "grpo", "online.scorer": "math", "objective.beta_kl": 0.01, "objective.eps_high": 0.2}),
])
def test_each_shipped_config_runs(data, tiny_model, tmp_path, name, inputs, expected):
    inputs = [data[a] if a in data else a for a in inputs]
    result = CliRunner().invoke(main, ["--config", str(CONFIGS / f"{name}.yaml"), *map(str, inputs), "--model",
                                       str(tiny_model), *SMALL, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    for path, value in expected.items():
        node = settings
        for key in path.split("."):
            node = node[key]
        assert node == value, path
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
