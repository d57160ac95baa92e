"""humanline-train eval: pass@1 and win rate on real held-out prompts, checked against
independent DuckDB computations over the versions the evaluation wrote."""

from __future__ import annotations

import dataclasses

import json
import math
import shutil

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from humanline_data.errors import HumanlineError, ModelNotFoundError
from humanline_data.importers import import_sources
from humanline_data.store import list_versions, open_version
from humanline_data.backends import SamplingParams
from humanline_train.evaluate import GREEDY, eval_command, evaluate, length_controlled, mean_and_se

SCORER_MODULE = '''
def even_length(batch):
    """1.0 for a completion with an even number of characters, else 0.0."""
    return [float(len(row["completion"]) % 2 == 0) for row in batch]
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("eval_data")
    alpaca = shared_data / "alpaca_eval"
    return {
        "gsm8k": import_sources([shared_data / "gsm8k" / "test.jsonl"], root / "gsm8k", limit=5),
        "alpaca": import_sources([alpaca / "eval_instructions.json"], root / "alpaca", split="test", limit=3),
        "gpt4": import_sources([alpaca / "gpt4_1106_preview_outputs.json"], root / "gpt4", split="test", limit=3),
        "gpt4_two": import_sources([alpaca / "gpt4_1106_preview_outputs.json"], root / "gpt4_two", split="test", limit=2),
    }


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A tiny random one-label Llama reward model with SmolLM2's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from conftest import TOKENIZER_DIR

    path = tmp_path_factory.mktemp("tiny_rm")
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=2,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, path / f.name)
    return path


def _sql(sql: str, **versions) -> list[tuple]:
    """Run ``sql`` over views named after the given versions' parquet parts."""
    con = duckdb.connect()
    for name, path in versions.items():
        parts = [str(p) for p in open_version(path).files]
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({parts!r})")
    return con.execute(sql).fetchall()


def test_pass_at_1_math_equals_mean_correctness_of_scored_version(tiny_model, data, tmp_path):
    result = evaluate(tiny_model, data["gsm8k"], "math", sampling=SamplingParams(n=2, temperature=0.7, max_new_tokens=12),
                      work=tmp_path, backend="transformers")
    assert result["metric"] == "pass@1" and result["count"] == 5 and result["n"] == 2
    scored = result["versions"]["scored"]
    assert open_version(scored).manifest["parents"][0]["path"] == result["versions"]["completions"]
    # per prompt: sum of correctness over the 2 samples asked (a sample left out as empty is wrong) / 2
    per_prompt = [r[0] for r in _sql(
        "SELECT coalesce(sum(CAST(json_extract(s.reward_components, '$.correct') AS DOUBLE)), 0) / 2 "
        "FROM p LEFT JOIN s USING (prompt_id) GROUP BY p.prompt_id", p=data["gsm8k"], s=scored)]
    assert len(per_prompt) == 5
    assert result["value"] == pytest.approx(float(np.mean(per_prompt)))
    rows = _sql("SELECT count(*) FROM s", s=scored)[0][0]
    assert result["missing_samples"] == 10 - rows
    assert set(result) >= {"value", "se", "count", "model", "model_sha256", "prompts", "scorer"}


def test_pass_at_1_hand_computed_with_controlled_scorer(tiny_model, data, tmp_path):
    module = tmp_path / "even_scorer.py"
    module.write_text(SCORER_MODULE)
    result = evaluate(tiny_model, data["gsm8k"], f"python:{module}:even_length",
                      sampling=SamplingParams(n=3, temperature=0.7, max_new_tokens=10), work=tmp_path / "work", backend="transformers")
    table = open_version(result["versions"]["scored"]).read(["prompt_id", "completion"]).to_pylist()
    ids = open_version(data["gsm8k"]).read(["prompt_id"]).column("prompt_id").to_pylist()
    scores = [sum(len(r["completion"]) % 2 == 0 for r in table if r["prompt_id"] == pid) / 3 for pid in ids]
    expected = float(np.mean(scores))
    assert result["value"] == pytest.approx(expected)
    if set(scores) <= {0.0, 1.0}:
        assert result["se"] == pytest.approx(math.sqrt(expected * (1 - expected) / 5))
    else:
        assert result["se"] == pytest.approx(float(np.std(scores, ddof=1) / math.sqrt(5)))


def test_greedy_empty_answers_count_as_wrong(tiny_model, data):
    # the tiny random model answers these prompts greedily with eos at once: no rows survive
    result = evaluate(tiny_model, data["gsm8k"], "math", sampling=dataclasses.replace(GREEDY, max_new_tokens=8), limit=3,
                      backend="transformers")
    assert result["count"] == 3
    assert result["missing_samples"] == 3
    assert result["value"] == 0.0 and result["se"] == 0.0
    assert "versions" not in result


def test_win_rate_against_baseline_equals_independent_computation(tiny_model, tiny_rm, data, tmp_path):
    result = evaluate(tiny_model, data["alpaca"], f"rm:{tiny_rm}", baseline=data["gpt4"],
                      sampling=SamplingParams(n=3, temperature=0.7, max_new_tokens=12), work=tmp_path, backend="transformers")
    assert result["metric"] == "win_rate" and result["count"] == 3
    v = result["versions"]
    outcomes = _sql(
        "SELECT m.prompt_id, CASE WHEN m.reward > b.reward THEN 1 WHEN m.reward = b.reward THEN 0.5 ELSE 0 END::DOUBLE, "
        "length(m.completion) - length(b.completion) "
        "FROM m JOIN b USING (prompt_id) ORDER BY m.prompt_id, m.sample_idx", m=v["scored"], b=v["baseline_scored"])
    assert len(outcomes) == 9  # tiny model samples are never empty at temperature 0.7
    per_prompt = {}
    for pid, outcome, _ in outcomes:
        per_prompt.setdefault(pid, []).append(outcome)
    scores = [sum(o) / 3 for o in per_prompt.values()]
    assert result["value"] == pytest.approx(float(np.mean(scores)))
    assert result["wins"] + result["ties"] + result["losses"] == 9
    assert result["wins"] == sum(o == 1.0 for _, o, _ in outcomes)
    # the baseline subset is scored by the same reward model on the baseline's own answers
    base = _sql("SELECT b.completion = g.completion FROM b JOIN g USING (prompt_id)", b=v["baseline_scored"], g=data["gpt4"])
    assert len(base) == 3 and all(same for (same,) in base)
    lc = result["length_controlled"]
    expected_lc, _ = length_controlled(np.array([o for _, o, _ in outcomes]), np.array([g for *_, g in outcomes], float))
    assert lc["value"] == pytest.approx(expected_lc)


def test_length_controlled_recovers_rate_at_zero_gap():
    rng = np.random.default_rng(0)
    gaps = rng.normal(0, 300, 4000)
    p = 1 / (1 + np.exp(-(0.4 + 1.5 * np.tanh(gaps / gaps.std()))))
    outcomes = (rng.random(4000) < p).astype(float)
    value, se = length_controlled(outcomes, gaps)
    assert value == pytest.approx(1 / (1 + math.exp(-0.4)), abs=3 * se)
    assert 0 < se < 0.05
    # when length explains nothing, the LC rate is the plain win rate
    flat, _ = length_controlled(np.array([1.0, 0.0, 1.0, 0.5]), np.zeros(4))
    assert flat == pytest.approx(0.625, abs=1e-3)


def test_mean_and_se():
    assert mean_and_se([1, 0, 1, 1]) == (0.75, pytest.approx(math.sqrt(0.75 * 0.25 / 4)))
    assert mean_and_se([0.5, 1.0, 0.0]) == (0.5, pytest.approx(0.5 / math.sqrt(3)))
    assert mean_and_se([0.5]) == (0.5, None)


def test_cli_prints_json_and_writes_out(tiny_model, data, tmp_path):
    out = tmp_path / "res" / "results.json"
    args = ["--model", str(tiny_model), "--prompts", str(data["gsm8k"]), "--scorer", "math", "--limit", "2",
            "--n", "2", "--temperature", "0.7", "--max-new-tokens", "6", "--backend", "transformers", "--out", str(out)]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["count"] == 2 and printed["metric"] == "pass@1" and "versions" not in printed
    # with a kept --work folder, a second evaluation names its own (next) versions
    for _ in range(2):
        result = CliRunner().invoke(eval_command, [*args, "--work", str(tmp_path / "work")])
        assert result.exit_code == 0, result.output
    versions = json.loads(result.stdout)["versions"]
    assert versions == {k: str(tmp_path / "work" / k / "v2") for k in ("completions", "scored")}


def test_bad_inputs_fail_before_sampling_and_write_nothing(tiny_model, tiny_rm, data, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(HumanlineError, match=r"baseline .* has no answer for 1 of 3 prompts \(first prompt_id [0-9a-f]{16}\)"):
        evaluate(tiny_model, data["alpaca"], f"rm:{tiny_rm}", baseline=data["gpt4_two"], work=work)
    with pytest.raises(ModelNotFoundError, match="no_such_rm"):
        evaluate(tiny_model, data["alpaca"], f"rm:{tmp_path / 'no_such_rm'}", baseline=data["gpt4"], work=work)
    with pytest.raises(HumanlineError, match="unknown scorer 'bleu'"):
        evaluate(tiny_model, data["gsm8k"], "bleu", work=work)
    with pytest.raises(HumanlineError, match="needs an answer for every prompt"):
        evaluate(tiny_model, data["alpaca"], "math", work=work)
    assert not work.exists() or not any(list_versions(d) for d in work.iterdir())
    assert len(list_versions(data["gsm8k"].parent)) == 1


def test_humanline_train_eval_bad_baseline_exits_2_with_one_line(tiny_model, tiny_rm, data, tmp_path):
    from humanline_train.cli import main

    out = tmp_path / "results.json"
    args = ["eval", "--model", str(tiny_model), "--prompts", str(data["alpaca"]), "--scorer", f"rm:{tiny_rm}",
            "--baseline", str(data["gpt4_two"]), "--work", str(tmp_path / "work"), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: baseline ") and result.stderr.count("\n") == 1
    assert not out.exists() and not (tmp_path / "work").exists()
