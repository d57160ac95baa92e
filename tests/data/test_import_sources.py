"""``humanline-data import`` of what practitioners already have: ``datasets`` ``save_to_disk``
folders, Hub-layout Parquet shard folders, OpenAI chat and preference rows, OpenRLHF rows and
verl's RL parquet; made in the tests from the real files in ../shared/data, with every broken
layout or record a one-line error that writes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from humanline_data import store
from humanline_data.cli import main
from humanline_data.schema import prompt_id


def run(*args):
    return CliRunner().invoke(main, ["import", *map(str, args)])


def imported(*args) -> store.Version:
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    return store.open_version(Path(result.stdout.strip().splitlines()[-1]))


def refused(*args) -> str:
    """The one error line of a failed import whose --out (the last argument) stays unwritten."""
    result = run(*args)
    assert result.exit_code == 2, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert store.list_versions(Path(args[-1])) == []
    return line


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def gsm8k(shared_data) -> dict[str, list[dict]]:
    """The first 30 train and 10 test GSM8K records as the file has them."""
    out = {}
    for split, n in (("train", 30), ("test", 10)):
        with open(shared_data / "gsm8k" / f"{split}.jsonl") as f:
            out[split] = [json.loads(line) for _, line in zip(range(n), f)]
    return out


def arrow_stream(path: Path, records: list[dict]) -> None:
    """``records`` as one Arrow IPC stream file, in batches of 7 rows (as ``datasets`` writes shards)."""
    table = pa.Table.from_pylist(records)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=7):
            writer.write_batch(batch)


def save_to_disk_by_hand(folder: Path, records: list[dict], shards: int = 1, split: str | None = None) -> Path:
    """The files ``datasets.Dataset.save_to_disk`` writes: Arrow stream shards, state.json, dataset_info.json."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    for i, name in enumerate(names):
        arrow_stream(folder / name, records[len(records) * i // shards: len(records) * (i + 1) // shards])
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return folder


# ---------------------------------------------------------------- datasets save_to_disk folders


def test_datasets_save_to_disk_folders_from_the_real_library(gsm8k, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    whole = tmp_path / "gsm8k_dict"
    datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in gsm8k.items()}).save_to_disk(str(whole))
    v = imported(whole, "--out", tmp_path / "d")
    table = v.read()
    assert v.kind == "prompts" and table.num_rows == 40
    assert table.column("split").to_pylist() == ["train"] * 30 + ["test"] * 10
    assert table.column("prompt_id").to_pylist() == [prompt_id(user(r["question"])) for r in gsm8k["train"] + gsm8k["test"]]
    assert set(table.column("source").to_pylist()) == {"gsm8k/gsm8k_dict"}
    assert [s["path"] for s in v.manifest["params"]["sources"]] == [str((whole / s).resolve()) for s in ("train", "test")]
    one = tmp_path / "one"
    datasets.Dataset.from_list(gsm8k["test"]).save_to_disk(str(one), num_shards=2)
    assert imported(one, "--out", tmp_path / "o").read().column("answer").to_pylist() == [
        r["answer"].split("####")[-1].strip().replace(",", "") for r in gsm8k["test"]]


def test_datasets_folders_built_by_hand_split_from_state_folder_or_dict(gsm8k, tmp_path):
    root = tmp_path / "hf"
    save_to_disk_by_hand(root / "dict" / "train", gsm8k["train"], shards=3)
    save_to_disk_by_hand(root / "dict" / "validation_small", gsm8k["test"][:4])
    (root / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation_small"]}))
    v = imported(root / "dict", "--out", tmp_path / "d")
    assert v.read().column("split").to_pylist() == ["train"] * 30 + ["validation_small"] * 4
    assert [r["messages"][0]["content"] for r in v.read().to_pylist()[:30]] == [r["question"] for r in gsm8k["train"]]
    save_to_disk_by_hand(root / "named", gsm8k["test"], split="test")
    save_to_disk_by_hand(root / "gsm8k_eval", gsm8k["test"])
    save_to_disk_by_hand(root / "plain", gsm8k["test"][:2])
    got = {name: imported(root / name, "--out", tmp_path / name) for name in ("named", "gsm8k_eval", "plain")}
    assert [set(v.read().column("split").to_pylist()) for v in got.values()] == [{"test"}, {"test"}, {"train"}]
    assert got["plain"].manifest["stats"]["split_defaulted_to_train"] == ["gsm8k/plain"]


def test_broken_datasets_folders_are_one_line_errors(gsm8k, tmp_path):
    good = save_to_disk_by_hand(tmp_path / "good", gsm8k["test"][:3])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "state.json").write_text("{not json")
    assert re.search(r"bad/state\.json: malformed JSON", refused(bad, "--out", tmp_path / "o1"))
    (bad / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../good/data-00000-of-00001.arrow"}]}))
    assert "'_data_files' is not a list of plain file names" in refused(bad, "--out", tmp_path / "o2")
    (bad / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    assert f"{bad / 'data-00000-of-00001.arrow'}: listed in {bad / 'state.json'} but missing" in refused(bad, "--out", tmp_path / "o3")
    (bad / "data-00000-of-00001.arrow").write_bytes(b"not arrow at all")
    assert "data-00000-of-00001.arrow: not a readable Arrow IPC stream" in refused(bad, "--out", tmp_path / "o4")
    pq.write_table(pa.Table.from_pylist(gsm8k["test"]), bad / "data-00000-of-00001.arrow")  # a Parquet file misnamed
    assert "not a readable Arrow IPC stream" in refused(bad, "--out", tmp_path / "o5")
    cut = (good / "data-00000-of-00001.arrow").read_bytes()
    (bad / "data-00000-of-00001.arrow").write_bytes(cut[: len(cut) // 2])
    assert re.search(r"data-00000-of-00001\.arrow: (unreadable after row \d+|not a readable Arrow IPC stream)",
                     refused(bad, "--out", tmp_path / "o6"))
    (tmp_path / "dict").mkdir()
    (tmp_path / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert f"{tmp_path / 'dict' / 'train'}: split 'train' named in" in refused(tmp_path / "dict", "--out", tmp_path / "o7")


# ---------------------------------------------------------------- Hub-layout parquet folders


def test_hub_layout_parquet_shards_split_from_file_names(gsm8k, tmp_path):
    repo = tmp_path / "gsm8k-hub"
    (repo / "data").mkdir(parents=True)
    train = pa.Table.from_pylist(gsm8k["train"])
    pq.write_table(train.slice(0, 18), repo / "data" / "train-00000-of-00002.parquet")
    pq.write_table(train.slice(18), repo / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(gsm8k["test"]), repo / "data" / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text("---\nconfigs: ...\n---\n")
    v = imported(repo, "--out", tmp_path / "d")
    rows = v.read().to_pylist()
    assert [r["split"] for r in rows] == ["test"] * 10 + ["train"] * 30
    assert [r["messages"][0]["content"] for r in rows[10:]] == [r["question"] for r in gsm8k["train"]]
    assert {r["source"] for r in rows} == {"gsm8k/gsm8k-hub"}
    assert [(s["split"], s["rows_read"]) for s in v.manifest["params"]["sources"]] == [("test", 10), ("train", 30)]
    # one folder per config, and an old push_to_hub name with a hash
    configs = tmp_path / "configs"
    for config, records in (("main", gsm8k["train"][:5]), ("socratic", gsm8k["test"][:3])):
        (configs / config).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(records), configs / config / "train-00000-of-00001-5d2fdb8c0bd6ba4b.parquet")
    v = imported(configs, "--out", tmp_path / "c")
    assert [(r["source"], r["split"]) for r in v.read().to_pylist()] == (
        [("gsm8k/configs/main", "train")] * 5 + [("gsm8k/configs/socratic", "train")] * 3)


def test_hub_layout_with_a_missing_shard_is_refused(gsm8k, tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(gsm8k["train"]), repo / "data" / "train-00001-of-00003.parquet")
    line = refused(repo, "--out", tmp_path / "o")
    assert line == f"error: {repo / 'data'}: the 'train' shards are not one whole set of 3 (missing 00000, 00002)"


# ---------------------------------------------------------------- trainers' own files


def test_openai_chat_rows_import_as_completions_with_the_instructions_prompt_ids(shared_data, tmp_path):
    outputs = json.loads((shared_data / "alpaca_eval" / "gpt4_1106_preview_outputs.json").read_text())[:50]
    rows = [{"messages": user(o["instruction"]) + [{"role": "assistant", "content": o["output"]}]} for o in outputs]
    rows[0]["messages"].insert(0, {"role": "system", "content": "Be helpful."})
    v = imported(jsonl(tmp_path / "chat_test.jsonl", rows), "--out", tmp_path / "c")
    table = v.read().to_pylist()
    assert v.kind == "completions" and v.manifest["params"]["sources"][0]["format"] == "openai"
    assert [r["prompt_id"] for r in table[1:]] == [prompt_id(user(o["instruction"])) for o in outputs[1:]]
    assert [r["completion"] for r in table] == [o["output"].strip() for o in outputs]
    assert table[0]["messages"][0] == {"role": "system", "content": "Be helpful."} and table[0]["split"] == "test"


def test_openai_preference_rows_keep_request_fields_in_metadata(tmp_path):
    row = {"input": {"messages": user("Hi"), "tools": [], "parallel_tool_calls": True},
           "preferred_output": [{"role": "assistant", "content": "Hello!"}],
           "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}
    [got] = imported(jsonl(tmp_path / "pref.jsonl", [row]), "--out", tmp_path / "p").read().to_pylist()
    assert (got["messages"], got["chosen"], got["rejected"]) == (user("Hi"), "Hello!", "Go away.")
    assert json.loads(got["metadata"]) == {"input": {"tools": [], "parallel_tool_calls": True}}


def test_openrlhf_rows_by_shape(tmp_path):
    said = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    kto = imported(jsonl(tmp_path / "k.jsonl", [{"input": said, "label": True}, {"input": user("3+3?"), "output": "7", "label": False}]),
                   "--out", tmp_path / "k").read().to_pylist()
    assert [(r["messages"], r["completion"], r["desirable"]) for r in kto] == [(user("2+2?"), "4", True), (user("3+3?"), "7", False)]
    sft = imported(jsonl(tmp_path / "s.jsonl", [{"input": said}]), "--out", tmp_path / "s")
    assert sft.kind == "completions" and sft.read().column("completion").to_pylist() == ["4"]
    ppo = imported(jsonl(tmp_path / "p.jsonl", [{"input": user("2+2?"), "label": "4"}, {"input": "1+1?", "label": None}]),
                   "--out", tmp_path / "p").read().to_pylist()
    assert [(r["messages"], r["answer"]) for r in ppo] == [(user("2+2?"), "4"), (user("1+1?"), None)]


def test_verl_parquet_from_real_gsm8k(gsm8k, tmp_path):
    records = [{
        "data_source": "openai/gsm8k",
        "prompt": user(r["question"] + " Let's think step by step."),
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": r["answer"].split("#### ")[-1]},
        "extra_info": {"split": "test", "index": i, "answer": r["answer"], "question": r["question"]},
    } for i, r in enumerate(gsm8k["test"])]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train.parquet")  # verl's own file name
    v = imported(tmp_path / "train.parquet", "--out", tmp_path / "v")
    rows = v.read().to_pylist()
    assert v.manifest["params"]["sources"][0]["format"] == "verl"
    assert [(r["answer"], r["split"], r["source"]) for r in rows] == [
        (rec["reward_model"]["ground_truth"], "test", "openai/gsm8k") for rec in records]
    assert json.loads(rows[0]["metadata"]) == {"ability": "math", "reward_model": {"style": "rule"},
                                               "extra_info": {"index": 0, **{k: records[0]["extra_info"][k] for k in ("answer", "question")}}}


@pytest.mark.parametrize("record, fmt, message", [
    ({"input": {"messages": user("Hi")}, "preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
      "non_preferred_output": [{"role": "assistant", "content": "c"}]}, "auto", r"format openai: 'preferred_output' must be one assistant message, got 2"),
    ({"input": "Hi", "preferred_output": "a", "non_preferred_output": "b"}, "auto", r"format openai: column 'input' has dtype str, expected an object"),
    ({"messages": user("Hi")}, "openai", r"format openai: final message of 'messages' is a user turn, expected assistant"),
    ({"input": user("Hi"), "label": True}, "auto", r"format openrlhf: 'input' does not end with the assistant turn its boolean 'label' judges"),
    ({"prompt": user("Hi"), "reward_model": {"ground_truth": ["72"]}}, "auto", r"format verl: column 'reward_model.ground_truth' has dtype list"),
    ({"prompt": user("Hi"), "data_source": "x", "extra_info": [1]}, "auto", r"format verl: column 'extra_info' has dtype list, expected an object"),
])
def test_bad_trainer_records_are_one_line_errors(tmp_path, record, fmt, message):
    line = refused(jsonl(tmp_path / "bad.jsonl", [record]), "--format", fmt, "--out", tmp_path / "o")
    assert re.search(rf"bad\.jsonl:1: {message}", line), line
