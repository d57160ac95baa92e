"""``humanline-data export``: every format and kind on versions built from real GSM8K and HH-RLHF
rows, read back by ``import`` (same prompt_ids and rows), the exact records each format
documents, refusals and bad ``--out`` as one-line errors that change nothing, and TRL's
DPOTrainer taking the exported pairs where trl is installed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from humanline_data import store
from humanline_data.cli import main
from humanline_data.pair import build
from humanline_data.schema import SCHEMAS
from humanline_data.targets import TARGETS
from scored_rows import gsm8k_rows, hh_rows, write_scored

# The columns each kind that import writes back must give unchanged, besides prompt_id and messages.
CONTENT = {"prompts": ["answer"], "completions": ["completion"], "pairs": ["chosen", "rejected"],
           "unpaired": ["completion", "desirable"]}
# What import makes of each (format, kind) export: (kind written back, extra columns kept).
BACK = {
    **{("trl", k): ("completions", []) for k in ("completions", "scored")},
    ("trl", "prompts"): ("prompts", []), ("trl", "groups"): ("prompts", []),
    ("trl", "pairs"): ("pairs", []), ("trl", "unpaired"): ("unpaired", []),
    **{("openai", k): ("completions", []) for k in ("completions", "scored")},
    ("openai", "pairs"): ("pairs", []),
    **{("verl", k): ("prompts", ["source", "split"]) for k in ("prompts", "completions", "scored")},
    ("verl", "groups"): ("prompts", ["source"]),
    **{("openrlhf", k): ("completions", []) for k in ("completions", "scored")},
    ("openrlhf", "prompts"): ("prompts", []), ("openrlhf", "groups"): ("prompts", []),
    ("openrlhf", "pairs"): ("pairs", []), ("openrlhf", "unpaired"): ("unpaired", []),
}
# This project's own columns import back as the same kind, every column unchanged.
OWN = [(fmt, kind) for fmt in ("jsonl", "parquet") for kind in SCHEMAS]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def file_name(fmt: str) -> str:
    return f"out.{'parquet' if TARGETS[fmt].parquet_schema else 'jsonl'}"


def exported(version: Path, fmt: str, out: Path) -> Path:
    result = run("export", version, "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    return out


def imported(src: Path, out: Path, *args) -> store.Version:
    result = run("import", src, "--out", out, *args)
    assert result.exit_code == 0, result.stderr
    return store.open_version(Path(result.stdout.strip().splitlines()[-1]))


def rows_of(version: Path) -> list[dict]:
    return store.open_version(version).read().to_pylist()


def distinct_prompts(rows: list[dict]) -> list[dict]:
    first = {}
    for row in rows:
        first.setdefault(row["prompt_id"], row)
    return list(first.values())


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def versions(shared_data, tmp_path_factory) -> dict[str, Path]:
    """One version of every kind, from 16 GSM8K problems and 4 multi-turn HH-RLHF pairs."""
    root = tmp_path_factory.mktemp("export")
    scored_rows = gsm8k_rows(shared_data, problems=16) + hh_rows(shared_data, pairs=4)
    out = {"scored": write_scored(root / "scored", scored_rows)}
    with store.write_version(root / "completions", "completions") as w:
        w.write(pa.Table.from_pylist(scored_rows, schema=SCHEMAS["completions"]))
    out["completions"] = w.path
    with store.write_version(root / "prompts", "prompts") as w:
        w.write(pa.Table.from_pylist(distinct_prompts(scored_rows), schema=SCHEMAS["prompts"]))
    out["prompts"] = w.path
    for mode in ("pairs", "groups", "unpaired"):
        out[mode] = build(out["scored"], root / mode, mode=mode)
    return out


@pytest.mark.parametrize("fmt, kind", sorted(BACK), ids=lambda v: v)
def test_export_then_import_gives_back_the_prompt_ids_and_rows(versions, tmp_path, fmt, kind):
    back_kind, kept = BACK[(fmt, kind)]
    src = rows_of(versions[kind])
    expected = distinct_prompts(src) if back_kind == "prompts" else src
    file = exported(versions[kind], fmt, tmp_path / file_name(fmt))
    back = imported(file, tmp_path / "back")
    assert back.kind == back_kind
    columns = ["prompt_id", "messages", *CONTENT[back_kind], *kept]
    assert [{c: r[c] for c in columns} for r in back.read().to_pylist()] == [{c: r[c] for c in columns} for r in expected]


@pytest.mark.parametrize("fmt, kind", OWN, ids=lambda v: v)
def test_own_columns_import_back_unchanged(versions, tmp_path, fmt, kind):
    src = rows_of(versions[kind])
    file = exported(versions[kind], fmt, tmp_path / file_name(fmt))
    back = imported(file, tmp_path / "back", "--format", "auto")
    assert back.kind == kind and back.read().to_pylist() == src


def test_trl_records_are_conversational_as_trl_documents(versions, tmp_path):
    pair = rows_of(versions["pairs"])[0]
    [first, *_] = [json.loads(line) for line in exported(versions["pairs"], "trl", tmp_path / "p.jsonl").read_text().splitlines()]
    assert first == {"prompt": pair["messages"], "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                     "rejected": [{"role": "assistant", "content": pair["rejected"]}]}
    unpaired = rows_of(versions["unpaired"])[0]
    first = json.loads(exported(versions["unpaired"], "trl", tmp_path / "u.jsonl").read_text().splitlines()[0])
    assert first == {"prompt": unpaired["messages"], "completion": [{"role": "assistant", "content": unpaired["completion"]}],
                     "label": unpaired["desirable"]}
    prompt = rows_of(versions["prompts"])[0]
    first = json.loads(exported(versions["prompts"], "trl", tmp_path / "q.jsonl").read_text().splitlines()[0])
    assert first == {"prompt": prompt["messages"], "answer": prompt["answer"]}


def test_openai_and_openrlhf_records(versions, tmp_path):
    pair = rows_of(versions["pairs"])[-1]
    record = json.loads(exported(versions["pairs"], "openai", tmp_path / "p.jsonl").read_text().splitlines()[-1])
    assert record == {"input": {"messages": pair["messages"]},
                      "preferred_output": [{"role": "assistant", "content": pair["chosen"]}],
                      "non_preferred_output": [{"role": "assistant", "content": pair["rejected"]}]}
    record = json.loads(exported(versions["pairs"], "openrlhf", tmp_path / "r.jsonl").read_text().splitlines()[-1])
    assert record == {"chosen": pair["messages"] + [{"role": "assistant", "content": pair["chosen"]}],
                      "rejected": pair["messages"] + [{"role": "assistant", "content": pair["rejected"]}]}
    done = rows_of(versions["completions"])[0]
    record = json.loads(exported(versions["completions"], "openai", tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert record == {"messages": done["messages"] + [{"role": "assistant", "content": done["completion"]}]}
    prompt = rows_of(versions["prompts"])[0]
    record = json.loads(exported(versions["prompts"], "openrlhf", tmp_path / "q.jsonl").read_text().splitlines()[0])
    assert record == {"input": prompt["messages"], "label": prompt["answer"]}


def test_verl_parquet_holds_distinct_prompts_in_verls_columns(versions, tmp_path):
    src = rows_of(versions["scored"])
    table = pq.read_table(exported(versions["scored"], "verl", tmp_path / "train.parquet"))
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    first = distinct_prompts(src)
    assert table.num_rows == len(first) < len(src)
    assert table.slice(0, 1).to_pylist() == [{
        "data_source": "gsm8k", "prompt": first[0]["messages"], "ability": None,
        "reward_model": {"style": "rule", "ground_truth": first[0]["answer"]},
        "extra_info": {"split": "train", "index": 0},
    }]
    assert table.column("extra_info").combine_chunks().field("index").to_pylist() == list(range(len(first)))


@pytest.mark.parametrize("fmt, kind", [("openai", "prompts"), ("openai", "unpaired"), ("openai", "groups"),
                                       ("verl", "pairs"), ("verl", "unpaired")])
def test_a_kind_a_format_has_no_form_for_is_refused_in_one_line(versions, tmp_path, fmt, kind):
    result = run("export", versions[kind], "--format", fmt, "--out", tmp_path / "x" / "out.jsonl")
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(versions[kind]))}: kind {kind} has no {fmt} form \(.+\); {fmt} takes .+", line)
    assert not (tmp_path / "x").exists()


def test_bad_out_is_refused_and_nothing_changes(versions, tmp_path):
    dataset = versions["pairs"].parent
    before = digest(dataset)
    taken = tmp_path / "taken.jsonl"
    taken.write_bytes(b"keep me\n")
    cases = [
        (taken, f"{taken}: already exists; export never overwrites"),
        (tmp_path, f"{tmp_path}: is a folder"),
        (dataset / "pairs.jsonl", f"{dataset / 'pairs.jsonl'}: lies inside the dataset folder {dataset}"),
        (versions["pairs"] / "sub" / "p.jsonl", f"lies inside the version {versions['pairs']}"),
        (taken / "p.jsonl", f"{taken}: cannot create the folder"),
    ]
    for out, message in cases:
        result = run("export", versions["pairs"], "--format", "trl", "--out", out)
        assert result.exit_code == 2, out
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and message in line, line
    assert digest(dataset) == before and taken.read_bytes() == b"keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.jsonl"]


def test_unknown_format_and_broken_version_are_one_line_errors(versions, tmp_path):
    result = run("export", versions["pairs"], "--format", "csv", "--out", tmp_path / "o")
    assert result.exit_code == 2 and result.stderr.startswith("error: Invalid value for '--format'")
    broken = tmp_path / "broken"
    (broken / "v1").mkdir(parents=True)
    for f in versions["pairs"].iterdir():
        (broken / "v1" / f.name).write_bytes(f.read_bytes())
    part = broken / "v1" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-9])
    result = run("export", broken, "--format", "trl", "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "part-00000.parquet" in result.stderr and not (tmp_path / "o.jsonl").exists()


def test_export_leaves_no_temporary_file_and_a_dataset_dir_means_its_latest(versions, tmp_path):
    out = exported(versions["prompts"].parent, "jsonl", tmp_path / "sub" / "prompts.jsonl")
    assert [p.name for p in out.parent.iterdir()] == ["prompts.jsonl"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows_of(versions["prompts"])


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("trl", "datasets")), reason="trl or datasets is not installed")
def test_trl_dpo_trainer_takes_the_exported_pairs(versions, tiny_model, tmp_path):
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = exported(versions["pairs"], "trl", tmp_path / "pairs.jsonl")
    train = datasets.load_dataset("json", data_files=str(file), split="train")
    assert train.num_rows == len(rows_of(versions["pairs"])) and trl.data_utils.is_conversational(train[0])
    config = trl.DPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, report_to=[], bf16=False,
                           per_device_train_batch_size=2, max_length=128, save_strategy="no",
                           dataloader_pin_memory=False)
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=config,
                             train_dataset=train.select(range(2)), processing_class=AutoTokenizer.from_pretrained(tiny_model))
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
