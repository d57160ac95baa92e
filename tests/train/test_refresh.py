"""Online refresh: one round of prompts -> policy samples -> scores -> shard, with lineage."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from humanline_data.backends import SamplingParams
from humanline_data.errors import HumanlineError
from humanline_data.importers import import_sources
from humanline_data.models import model_fingerprint
from humanline_data.store import list_versions, open_version
from humanline_train.refresh import make_shard, write_prompt_slice

LENGTH_SCORER = f"python:{Path(__file__).resolve().parents[1] / 'fixtures' / 'user_scorer.py'}:length_reward"


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory, shared_data) -> Path:
    """A prompts version of the first 4 GSM8K training problems."""
    out = tmp_path_factory.mktemp("refresh_prompts") / "gsm8k"
    return import_sources([shared_data / "gsm8k" / "train.jsonl"], out, limit=4)


def _round(model, prompts, out, scorer, mode, offset=0, num_prompts=2, n=3):
    return dict(model_dir=Path(model), prompts=str(prompts), offset=offset, num_prompts=num_prompts, out=Path(out),
                scorer=scorer, mode=mode, sampling=SamplingParams(n=n, temperature=0.7, top_p=0.95, max_new_tokens=8, seed=5))


def _parent(version) -> Path:
    (parent,) = version.manifest["parents"]
    return Path(parent["path"])


def _check_lineage(shard: Path, model: Path, prompt_set: Path, offset: int) -> list[str]:
    """Walk shard -> scored -> completions -> prompts slice -> prompt set; return the slice's ids."""
    shard_v = open_version(shard)
    scored = open_version(_parent(shard_v), kinds=("scored",))
    completions = open_version(_parent(scored), kinds=("completions",))
    assert completions.manifest["producer"]["model"] == str(model.resolve())
    assert completions.manifest["producer"]["model_sha256"] == model_fingerprint(model)
    assert completions.manifest["params"]["model"] == str(model)
    round_prompts = open_version(_parent(completions), kinds=("prompts",))
    assert round_prompts.manifest["params"]["offset"] == offset
    assert _parent(round_prompts) == prompt_set.resolve()
    return round_prompts.read(["prompt_id"]).column("prompt_id").to_pylist()


def test_groups_round_in_a_separate_process_has_full_lineage(tiny_model, gsm8k, tmp_path):
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        shard = pool.submit(make_shard, **_round(tiny_model, gsm8k, tmp_path / "r", LENGTH_SCORER, "groups")).result()
    assert shard == tmp_path / "r" / "groups" / "v1"
    version = open_version(shard, kinds=("groups",))
    ids = _check_lineage(shard, tiny_model, gsm8k, offset=0)
    all_ids = open_version(gsm8k).read(["prompt_id"]).column("prompt_id").to_pylist()
    assert ids == all_ids[:2]
    groups = version.read().to_pylist()
    assert groups and {g["prompt_id"] for g in groups} <= set(ids)
    for g in groups:  # rewards are the completion lengths / 100; advantages follow method.md §5.3
        assert g["rewards"] == pytest.approx([len(c) / 100 for c in g["completions"]])
        mean = sum(g["rewards"]) / len(g["rewards"])
        std = (sum((r - mean) ** 2 for r in g["rewards"]) / len(g["rewards"])) ** 0.5
        assert g["advantages"] == pytest.approx([(r - mean) / (std + 0.01) for r in g["rewards"]])


def test_next_round_wraps_and_math_pairs_name_the_checkpoint(tiny_model, gsm8k, tmp_path):
    out = tmp_path / "r"
    shard = make_shard(**_round(tiny_model, gsm8k, out, "math", "pairs", offset=3, num_prompts=2, n=2))
    assert shard == out / "pairs" / "v1" and open_version(shard).kind == "pairs"
    all_ids = open_version(gsm8k).read(["prompt_id"]).column("prompt_id").to_pylist()
    assert _check_lineage(shard, tiny_model, gsm8k, offset=3) == [all_ids[3], all_ids[0]]
    scored = open_version(out / "scored")
    assert scored.manifest["params"]["scorer"] == "math"
    # the random model never answers a GSM8K problem: flat rewards, no pair passes the threshold
    assert open_version(shard).manifest["rows"] == 0


def test_prompt_slices_wrap_deterministically(gsm8k, tmp_path):
    ids = open_version(gsm8k).read(["prompt_id"]).column("prompt_id").to_pylist()

    def slice_ids(offset, count):
        path = write_prompt_slice(gsm8k, offset, count, tmp_path / "prompts")
        return open_version(path).read(["prompt_id"]).column("prompt_id").to_pylist()

    assert slice_ids(0, 3) == ids[:3]
    assert slice_ids(3, 3) == [ids[3], ids[0], ids[1]]
    assert slice_ids(9, 2) == ids[1:3]
    assert slice_ids(2, 10) == ids[2:] + ids[:2]  # capped at the set: each prompt once
    last = open_version(tmp_path / "prompts")
    assert last.manifest["params"] == {"offset": 2, "num_prompts": 10, "round": 0, "prompt_set_size": 4}
    assert last.manifest["stats"]["capped_at_prompt_set_size"] is True
    assert json.loads(json.dumps(last.manifest["parents"]))[0]["kind"] == "prompts"


@pytest.mark.parametrize(
    "offset, count, message",
    [(0, 0, "prompts per round must be >= 1, got 0"), (-1, 2, "prompt offset must be >= 0, got -1")],
)
def test_bad_slice_is_one_line_error_and_writes_nothing(gsm8k, tmp_path, offset, count, message):
    out = tmp_path / "r"
    with pytest.raises(HumanlineError, match=message):
        make_shard(model_dir=tmp_path / "unused", prompts=str(gsm8k), offset=offset, num_prompts=count, out=out,
                   scorer="math", mode="pairs", sampling=SamplingParams(n=2, max_new_tokens=8))
    assert not out.exists()
    assert len(list_versions(gsm8k.parent)) == 1
