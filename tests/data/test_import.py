"""``humanline-data import``: every format on small synthetic files, every bad input as a
one-line error that writes nothing, and every file of the real data in ../shared/data."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from humanline_data import bundled, store
from humanline_data.cli import main
from humanline_data.errors import InputFormatError
from humanline_data.importers import import_sources, infer_split
from humanline_data.pair import build
from humanline_data.schema import SCHEMAS, prompt_id


def run(*args: str):
    return CliRunner().invoke(main, ["import", *map(str, args)])


def imported(*args: str) -> store.Version:
    """Run the import CLI, check it succeeded and printed the version last; open that version."""
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    version = Path(result.stdout.strip().splitlines()[-1])
    assert version.is_dir() and re.fullmatch(r"v\d+", version.name)
    return store.open_version(version)


def jsonl(path: Path, records: list, compress: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def rows(version: store.Version) -> list[dict]:
    return version.read().to_pylist()


# ---------------------------------------------------------------- formats on synthetic files


def test_trl_plain_and_conversational_pairs(tmp_path):
    src = jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "judge": "human"},
            {
                "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say bye"}],
                "chosen": [{"role": "assistant", "content": "Bye!"}],
                "rejected": [{"role": "assistant", "content": "Whatever."}],
                "score_chosen": 8.0,
                "score_rejected": 3,
            },
            {  # implicit prompt: the turns before the final assistant message
                "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
            },
        ],
    )
    v = imported(src, "--out", tmp_path / "pairs")
    a, b, c = rows(v)
    assert v.kind == "pairs" and v.manifest["params"]["sources"][0]["format"] == "trl"
    assert (a["messages"], a["chosen"], a["rejected"]) == (user("Say hi"), "Hi!", "No.")
    assert (a["chosen_reward"], a["margin"], json.loads(a["metadata"])) == (None, None, {"judge": "human"})
    assert b["messages"][0] == {"role": "system", "content": "Be brief."} and b["chosen"] == "Bye!"
    assert (b["chosen_reward"], b["rejected_reward"], b["margin"], b["metadata"]) == (8.0, 3.0, 5.0, None)
    assert (c["messages"], c["chosen"], c["rejected"]) == (user("2+2?"), "4", "5")
    assert a["prompt_id"] == prompt_id(user("Say hi")) and a["source"] == "trl/prefs"


def test_trl_unpaired_and_kto(tmp_path):
    trl = jsonl(tmp_path / "u.jsonl", [{"prompt": "Q", "completion": "A", "label": True}])
    kto = jsonl(tmp_path / "k.jsonl", [{"messages": user("Q"), "completion": "B", "label": False}])
    t, k = rows(imported(trl, "--out", tmp_path / "t"))[0], rows(imported(kto, "--out", tmp_path / "k"))[0]
    assert (t["completion"], t["desirable"], k["completion"], k["desirable"]) == ("A", True, "B", False)
    assert t["prompt_id"] == k["prompt_id"] == prompt_id(user("Q"))
    assert store.open_version(tmp_path / "k").kind == "unpaired"


def test_sharegpt_pairs_with_system_and_roles(tmp_path):
    src = tmp_path / "sg.json"
    src.write_text(json.dumps([{
        "system": "You are kind.",
        "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "Joke?"}
        ],
        "chosen": {"from": "gpt", "value": "Knock knock."},
        "rejected": {"from": "assistant", "value": "No."},
    }], indent=2))
    [row] = rows(imported(src, "--out", tmp_path / "sg"))
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user"]
    assert (row["chosen"], row["rejected"], row["source"]) == ("Knock knock.", "No.", "sharegpt/sg")


def test_hh_transcripts(tmp_path):
    head = "Human: Hi there\n\nAssistant: Hello.\n\nHuman: Tell me a secret"
    src = jsonl(tmp_path / "hh_train.jsonl", [{"chosen": head + "\n\nAssistant: I can't.", "rejected": head + "\n\nAssistant: OK: 42"}])
    [row] = rows(imported(src, "--out", tmp_path / "hh"))
    assert row["messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a secret"},
    ]
    assert (row["chosen"], row["rejected"]) == ("I can't.", "OK: 42")


def test_math_gsm8k_and_alpaca_prompts(tmp_path):
    m = jsonl(tmp_path / "math_train.jsonl", [{"problem": "1+1?", "answer": "2", "level": 1}, {"problem": "x?", "answer": ""}])
    g = jsonl(tmp_path / "g_test.jsonl", [{"question": "How many?", "answer": "3*4=<<3*4=12>>12\n#### 1,200"}])
    a = jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "bonjour"}, {"instruction": "Hi"}])
    mv = imported(m, "--out", tmp_path / "m")
    assert [(r["answer"], r["split"], r["source"]) for r in rows(mv)] == [("2", "train", "math/math_train"), (None, "train", "math/math_train")]
    assert json.loads(rows(mv)[0]["metadata"]) == {"level": 1} and mv.manifest["stats"]["rows_without_answer"] == 1
    [gr] = rows(imported(g, "--out", tmp_path / "g"))
    assert (gr["answer"], gr["split"], json.loads(gr["metadata"])) == ("1200", "test", {"solution": "3*4=<<3*4=12>>12"})
    ar = rows(imported(a, "--format", "alpaca", "--split", "eval", "--out", tmp_path / "a"))
    assert [r["messages"][0]["content"] for r in ar] == ["Translate\n\nbonjour", "Hi"] and ar[0]["split"] == "eval"


def test_generic_prompts_and_prompt_versions_import_again(tmp_path):
    src = jsonl(tmp_path / "mine.jsonl", [
        {"prompt": "Q1", "answer": "1", "topic": "a"},
        {"messages": [{"role": "system", "content": "S"}, *user("Q2")]},
    ])
    first = imported(src, "--split", "train", "--out", tmp_path / "p")
    assert first.manifest["params"]["sources"][0]["format"] == "prompts"
    assert [(r["answer"], len(r["messages"]), r["source"]) for r in rows(first)] == [("1", 1, "prompts/mine"), (None, 2, "prompts/mine")]
    again = imported(first.path, "--out", tmp_path / "p2")
    assert rows(again) == rows(first)


def test_completions_number_samples_and_rewards_make_scored(tmp_path):
    gens = [
        {"prompt": "A", "completion": "a1", "generator": "m1"},
        {"messages": user("B"), "completion": "b1"},
        {"prompt": "A", "completion": "a2", "answer": 7, "finish_reason": "length", "completion_tokens": 12},
    ]
    v = imported(jsonl(tmp_path / "gens_train.jsonl", gens), "--out", tmp_path / "c")
    got = [(r["messages"][0]["content"], r["sample_idx"], r["generator"], r["completion_tokens"], r["finish_reason"]) for r in rows(v)]
    assert v.kind == "completions"
    assert got == [("A", 0, "m1", -1, "unknown"), ("B", 0, "import", -1, "unknown"), ("A", 1, "import", 12, "length")]
    assert rows(v)[2]["answer"] == "7"
    scored = [dict(g, reward=r) for g, r in zip(gens, [1.0, 0, 0.5])]
    s = imported(jsonl(tmp_path / "scored_train.jsonl", scored), "--out", tmp_path / "s")
    assert s.kind == "scored"
    assert [(r["reward"], r["scorer"]) for r in rows(s)] == [(1.0, "import"), (0.0, "import"), (0.5, "import")]


def test_sources_json_array_gzip_parquet_and_versions_roundtrip(tmp_path):
    recs = [{"question": f"Q{i}?", "answer": f"so\n#### {i}", "tag": i} for i in range(4)]
    arr = tmp_path / "arr_train.json"
    arr.write_text(json.dumps(recs))
    gz = jsonl(tmp_path / "gz_train.jsonl.gz", recs, compress=True)
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "pq_train.parquet")
    versions = [imported(p, "--out", tmp_path / p.name.split(".")[0]) for p in (arr, gz, tmp_path / "pq_train.parquet")]
    answers = [[r["answer"] for r in rows(v)] for v in versions]
    assert answers == [["0", "1", "2", "3"]] * 3
    assert {r["prompt_id"] for r in rows(versions[0])} == {r["prompt_id"] for r in rows(versions[2])}
    assert [json.loads(r["metadata"])["tag"] for r in rows(versions[1])] == [0, 1, 2, 3]
    # a completions version imports again as completions, metadata carried through
    gens = jsonl(tmp_path / "gen_train.jsonl", [{"prompt": "Q", "completion": "A", "extra": {"k": [1, 2]}}])
    first = imported(gens, "--out", tmp_path / "gen")
    again = imported(first.path, "--format", "completions", "--out", tmp_path / "gen2")
    [r1], [r2] = rows(first), rows(again)
    assert r2 == r1 and json.loads(r2["metadata"]) == {"extra": {"k": [1, 2]}}
    assert again.manifest["params"]["sources"][0]["sha256"] == store.sha256_file(first.path / "manifest.json")


def test_every_kind_of_our_own_versions_imports_as_itself(tmp_path):
    """A version of this project is imported as its own kind, whatever its columns look like to
    format detection (pairs looked like trl, unpaired like scored completions, groups like prompts):
    the same rows and prompt_ids, and the new version's parents name the source version."""
    scored = imported(jsonl(tmp_path / "s_train.jsonl", [
        {"prompt": p, "completion": f"{p} says {s}", "reward": float(s), "sample_idx": s, "topic": p}
        for p in ("Q1", "Q2") for s in range(3)]), "--out", tmp_path / "scored")
    plain = imported(jsonl(tmp_path / "c_train.jsonl", [{"prompt": "Q", "completion": "A"}]), "--out", tmp_path / "c")
    prompts = imported(jsonl(tmp_path / "p_test.jsonl", [{"prompt": "Q", "answer": "1"}]), "--out", tmp_path / "p")
    sources = [scored, plain, prompts] + [store.open_version(build(scored.path, tmp_path / mode, mode=mode))
                                          for mode in ("pairs", "groups", "unpaired")]
    assert sorted(v.kind for v in sources) == sorted(SCHEMAS)
    for source in sources:
        again = imported(source.path, "--out", tmp_path / f"again-{source.kind}")
        assert again.kind == source.kind and again.manifest["rows"] > 0
        assert again.read().equals(source.read())
        assert [p["path"] for p in again.manifest["parents"]] == [str(source.path.resolve())]
        assert again.manifest["params"]["sources"][0]["format"] == "version"
    pairs = sources[3]
    trl = jsonl(tmp_path / "more.jsonl", [{"prompt": "Q9", "chosen": "a", "rejected": "b"}])
    both = imported(pairs.path, trl, "--out", tmp_path / "both", "--limit", "3")
    assert both.kind == "pairs" and both.read().slice(0, 2).equals(pairs.read())
    assert len(both.manifest["parents"]) == 1 and both.manifest["rows"] == 3
    result = run(pairs.path, tmp_path / "p_test.jsonl", "--out", tmp_path / "mixed")
    assert result.exit_code == 2 and "a prompts record among pairs records" in result.stderr
    assert store.list_versions(tmp_path / "mixed") == []


def test_manifest_records_sources_format_and_counts(tmp_path):
    a = jsonl(tmp_path / "a_train.jsonl", [{"problem": f"p{i}", "answer": "1"} for i in range(3)])
    b = jsonl(tmp_path / "b_train.jsonl", [{"question": "q", "answer": "#### 2"}, {"question": "p0", "answer": "#### 3"}])
    v = imported(a, b, "--out", tmp_path / "mix", "--limit", "4")
    params, stats = v.manifest["params"], v.manifest["stats"]
    assert [(s["path"], s["format"], s["rows_read"]) for s in params["sources"]] == [
        (str(a.resolve()), "math", 3), (str(b.resolve()), "gsm8k", 1)
    ]
    assert params["sources"][0]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert (params["format"], params["limit"]) == ("auto", 4)
    assert stats == {"rows_read": 4, "rows_written": 4, "skipped": {}, "rows_without_answer": 0}
    assert v.manifest["producer"]["name"] == "humanline_data.importers"


def test_split_inference():
    assert [infer_split(n) for n in ("gsm8k_train", "math500_test", "eval_instructions", "dev-set", "outputs")] == [
        "train", "test", "test", "validation", None
    ]


def test_stage_function_matches_cli(tmp_path):
    src = jsonl(tmp_path / "x_test.jsonl", [{"problem": "p", "answer": "1"}])
    path = import_sources([src], tmp_path / "api")
    assert path == tmp_path / "api" / "v1" and store.open_version(path).manifest["rows"] == 1
    with pytest.raises(InputFormatError, match=r"unknown format 'csv' \(expected one of auto, trl"):
        import_sources([src], tmp_path / "api", fmt="csv")


# ---------------------------------------------------------------- bad input


GOOD = [{"prompt": "Q", "completion": "A", "reward": 1.0}]


@pytest.mark.parametrize(
    "content, args, message",
    [
        ('{"prompt": "Q", "completion": "A"}\n{"prompt": "Q2", "completion": \n', [], r"bad_train\.jsonl:2: malformed JSON"),
        ('[\n {"prompt": "Q", "completion": "A"},\n {"prompt" "Q2"}\n]', [], r"bad_train\.jsonl:3: malformed JSON"),
        ('{"prompt": "Q", "completion": "A"}\n[1, 2]\n', [], r"bad_train\.jsonl:2: expected a JSON object, got list"),
        ('{"prompt": "Q", "answer": "1"}\n', ["--format", "completions"],
         r"bad_train\.jsonl:1: format completions: missing required column 'completion' or 'output' \(record has prompt, answer\)"),
        ('{"prompt": [{"role": "bot", "content": "Q"}], "chosen": "a", "rejected": "b"}\n', [],
         r"bad_train\.jsonl:1: format trl: column 'prompt': unknown role 'bot'"),
        ('{"prompt": "  ", "completion": "A"}\n', [], r"bad_train\.jsonl:1: format completions: empty 'prompt'"),
        ('{"prompt": "Q", "completion": "A"}\n{"prompt": "Q", "completion": " \\n"}\n', [],
         r"bad_train\.jsonl:2: format completions: empty 'completion'"),
        ('{"prompt": "Q", "completion": "A", "reward": NaN}\n', [], r"bad_train\.jsonl:1: format completions: column 'reward' is nan"),
        ('{"prompt": "Q", "completion": "A", "reward": Infinity}\n', [], r"column 'reward' is inf \(must be finite\)"),
        ('{"prompt": "Q", "completion": "A", "reward": 1e200}\n', [],
         r"bad_train\.jsonl:1: format completions: column 'reward' is 1e\+200 \(must be at most 1e\+100 in magnitude\)"),
        ('{"prompt": "Q", "completion": "A", "reward": 1' + "0" * 400 + '}\n', [],
         r"bad_train\.jsonl:1: format completions: column 'reward' is an integer beyond float64's range"),
        ('{"prompt": "Q", "chosen": "a", "rejected": "b", "chosen_reward": -1e300, "rejected_reward": 0}\n', [],
         r"bad_train\.jsonl:1: format trl: column 'chosen_reward' is -1e\+300 \(must be at most 1e\+100"),
        ('{"prompt": "Q", "completion": "A", "reward": "0.5"}\n', [],
         r"bad_train\.jsonl:1: format completions: column 'reward' has dtype str, expected a number"),
        ('{"prompt": "Q", "completion": "A", "sample_idx": 0}\n{"prompt": "Q", "completion": "B", "sample_idx": 0}\n', [],
         r"bad_train\.jsonl:2: format completions: duplicate prompt_id/sample_idx \(\w+, 0\)"),
        ('{"messages": [{"role": "user", "content": "Q"}], "completion": "A", "label": "yes"}\n', [],
         r"bad_train\.jsonl:1: format kto: column 'label' has dtype str, expected boolean"),
        ('{"question": "Q", "answer": "42"}\n', [], r"bad_train\.jsonl:1: format gsm8k: 'answer' has no final answer after '####'"),
        ('{"chosen": "Human: hi\\n\\nAssistant: a", "rejected": "x"}\n', ["--format", "hh"],
         r"bad_train\.jsonl:1: format hh: 'rejected' does not start with"),
        ('{"prompt": "Q", "completion": "A", "reward": 1}\n{"prompt": "R", "completion": "B"}\n', [],
         r"bad_train\.jsonl:2: a completions record among scored records"),
        ('{"prompt": "Q", "completion": "A"}\n', ["--format", "nope"], r"unknown format 'nope'"),
        ('{"colour": "red"}\n', [], r"bad_train\.jsonl:1: cannot detect the format from columns colour; pass --format"),
        ("", [], r"bad_train\.jsonl: no records"),
    ],
    ids=[
        "malformed-jsonl", "malformed-array", "not-object", "missing-column", "unknown-role", "empty-prompt",
        "empty-completion", "nan-reward", "inf-reward", "huge-reward", "huge-int-reward", "huge-chosen-reward",
        "reward-string", "duplicate-sample", "label-dtype",
        "gsm8k-no-answer", "hh-malformed", "mixed-kinds", "unknown-format", "undetectable", "empty-file",
    ],
)
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, content, args, message):
    out = tmp_path / "data"
    v1 = imported(jsonl(tmp_path / "good_train.jsonl", GOOD), "--out", out).path
    before = {p: p.read_bytes() for p in v1.iterdir()}
    bad = tmp_path / "bad_train.jsonl"
    bad.write_text(content)
    result = run(bad, "--out", out, *args)
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and re.search(message, line), line
    assert store.list_versions(out) == [v1]
    assert {p: p.read_bytes() for p in v1.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_missing_source_bad_gzip_and_parquet_rows(tmp_path):
    result = run(tmp_path / "absent.jsonl", "--out", tmp_path / "d")
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'absent.jsonl'}: source file not found"
    assert not (tmp_path / "d").exists()
    (tmp_path / "x.jsonl.gz").write_bytes(b"not gzip")
    result = run(tmp_path / "x.jsonl.gz", "--out", tmp_path / "d")
    assert result.exit_code == 2 and "x.jsonl.gz: not a readable gzip file" in result.stderr
    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["x", "y"], "reward": [0.0, float("nan")]}), tmp_path / "r.parquet")
    result = run(tmp_path / "r.parquet", "--split", "train", "--out", tmp_path / "d")
    assert result.exit_code == 2 and "r.parquet:row 2: format completions: column 'reward' is nan" in result.stderr
    assert store.list_versions(tmp_path / "d") == []


def test_a_file_without_a_split_word_is_train_and_the_manifest_says_so(tmp_path):
    v = imported(jsonl(tmp_path / "mydata.jsonl", GOOD), "--out", tmp_path / "d")
    assert [r["split"] for r in rows(v)] == ["train"]
    assert v.manifest["stats"]["split_defaulted_to_train"] == ["completions/mydata"]
    named = imported(jsonl(tmp_path / "gens_test.jsonl", GOOD), "--out", tmp_path / "d")
    assert [r["split"] for r in rows(named)] == ["test"] and "split_defaulted_to_train" not in named.manifest["stats"]


def test_skip_invalid_counts_reasons(tmp_path):
    src = jsonl(tmp_path / "c_train.jsonl", [
        {"prompt": "Q", "completion": "A"},
        {"prompt": "Q", "completion": ""},
        {"prompt": [{"role": "tool", "content": "x"}], "completion": "B"},
        {"prompt": "R", "completion": "C"},
    ])
    result = run(src, "--out", tmp_path / "c", "--skip-invalid")
    assert result.exit_code == 0
    assert "skipped: empty_completion 1, unknown_role 1" in result.stdout
    v = store.open_version(tmp_path / "c")
    assert [r["completion"] for r in rows(v)] == ["A", "C"]
    assert v.manifest["stats"]["skipped"] == {"empty_completion": 1, "unknown_role": 1}


# ---------------------------------------------------------------- real data


def test_real_math_train(shared_data, tmp_path):
    v = imported(shared_data / "math/train.jsonl", "--out", tmp_path / "math")
    stats = v.manifest["stats"]
    assert v.kind == "prompts" and v.manifest["params"]["sources"][0]["format"] == "math"
    assert stats == {"rows_read": 12000, "rows_written": 11999, "skipped": {"duplicate_prompt": 1}, "rows_without_answer": 2}
    first = rows(v)[0]
    assert first["answer"] == "0" and first["split"] == "train" and first["source"] == "math/train"
    assert first["messages"][0]["content"].startswith("Let \\[f(x) = \\left\\{")
    meta = json.loads(first["metadata"])
    assert (meta["subject"], meta["level"], meta["unique_id"]) == ("Algebra", 5, "train/algebra/0.json")
    assert meta["solution"].endswith("So $a+b=-3+3=\\boxed{0}$.")


def test_real_math500(shared_data, tmp_path):
    v = imported(shared_data / "math/math500_test.jsonl", "--out", tmp_path / "m500")
    table = v.read()
    source = [json.loads(line) for line in (shared_data / "math/math500_test.jsonl").read_text().splitlines()]
    assert table.num_rows == 500 and set(table.column("split").to_pylist()) == {"test"}
    assert table.column("answer").to_pylist() == [r["answer"] for r in source]


def test_real_gsm8k(shared_data, tmp_path):
    train = imported(shared_data / "gsm8k/train.jsonl", "--out", tmp_path / "g")
    test = imported(shared_data / "gsm8k/test.jsonl", "--out", tmp_path / "g")
    assert (train.path.name, test.path.name) == ("v1", "v2")
    assert (train.manifest["rows"], test.manifest["rows"]) == (7473, 1319)
    tr, te = train.read(), test.read()
    assert set(tr.column("split").to_pylist()) == {"train"} and set(te.column("split").to_pylist()) == {"test"}
    assert tr.column("answer")[0].as_py() == "72" and te.column("answer")[0].as_py() == "18"
    source = [json.loads(line) for line in (shared_data / "gsm8k/train.jsonl").read_text().splitlines()]
    with_comma = next(i for i, r in enumerate(source) if "#### 1,080" in r["answer"])
    assert tr.column("answer")[with_comma].as_py() == "1080"
    assert tr.column("prompt_id")[0].as_py() == prompt_id(user(source[0]["question"]))
    assert not set(tr.column("prompt_id").to_pylist()) & set(te.column("prompt_id").to_pylist())


def test_real_hh_needs_skip_invalid_for_its_nine_broken_pairs(shared_data, tmp_path):
    src = shared_data / "preferences/hh_rlhf_harmless_base_test.jsonl.gz"
    refused = run(src, "--out", tmp_path / "hh")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: {src}:87: format hh: empty final Assistant turn in 'chosen' (--skip-invalid skips and counts such records)"
    )
    v = imported(src, "--out", tmp_path / "hh", "--skip-invalid")
    assert v.kind == "pairs" and v.manifest["params"]["sources"][0]["format"] == "hh"
    assert v.manifest["stats"]["skipped"] == {"empty_completion": 4, "prompt_mismatch": 5}
    table = v.read()
    assert table.num_rows == 2312 - 9
    assert all(m[-1]["role"] == "user" for m in table.column("messages").to_pylist())
    first = table.slice(0, 1).to_pylist()[0]
    assert first["messages"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["chosen"].startswith("No, sorry!") and first["rejected"].startswith("There are lots of funny things")
    assert table.column("margin").null_count == table.num_rows


def test_real_chat_pairs_demo(shared_data, tmp_path):
    src = shared_data / "preferences/chat_pairs_demo.json"
    v = imported(src, "--out", tmp_path / "demo")
    source = json.loads(src.read_text())
    table = v.read()
    assert v.manifest["params"]["sources"][0]["format"] == "sharegpt" and table.num_rows == 300
    msgs = table.column("messages").to_pylist()
    assert all(m[-1]["role"] == "user" for m in msgs)
    assert [len(m) for m in msgs] == [len(r["conversations"]) for r in source]
    assert table.column("chosen").to_pylist() == [r["chosen"]["value"].strip() for r in source]


def test_real_chat_pairs_demo_as_trl_names_the_missing_column(shared_data, tmp_path):
    src = shared_data / "preferences/chat_pairs_demo.json"
    result = run(src, "--format", "trl", "--out", tmp_path / "demo")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {src}:2: format trl: missing required column 'prompt' (record has conversations, chosen, rejected)"
    )
    assert not (tmp_path / "demo").exists()


def test_real_alpaca_eval_prompts_and_baseline_completions(shared_data, tmp_path):
    prompts = imported(shared_data / "alpaca_eval/eval_instructions.json", "--format", "alpaca", "--out", tmp_path / "ae")
    outputs = imported(shared_data / "alpaca_eval/gpt4_1106_preview_outputs.json", "--split", "test", "--out", tmp_path / "gpt4")
    p, o = prompts.read(), outputs.read()
    assert (prompts.kind, outputs.kind, p.num_rows, o.num_rows) == ("prompts", "completions", 805, 805)
    assert outputs.manifest["params"]["sources"][0]["format"] == "completions"
    assert set(p.column("split").to_pylist()) == {"test"}
    assert p.column("prompt_id").to_pylist() == o.column("prompt_id").to_pylist()  # same instructions, same ids
    assert set(o.column("generator").to_pylist()) == {"gpt4_1106_preview"}
    assert set(o.column("sample_idx").to_pylist()) == {0}
    first = o.slice(0, 1).to_pylist()[0]
    assert first["messages"] == user("What are the names of some famous actors that started their careers on Broadway?")
    assert first["completion"].startswith("Several famous actors started their careers on Broadway")
    assert json.loads(first["metadata"]) == {"dataset": "helpful_base"}
    assert json.loads(p.column("metadata")[0].as_py())["generator"] == "example"


def test_prompt_ids_are_stable_across_imports(shared_data, tmp_path):
    a = imported(shared_data / "math/math500_test.jsonl", "--out", tmp_path / "a").read()
    b = imported(shared_data / "math/math500_test.jsonl", "--out", tmp_path / "b").read()
    assert a.column("prompt_id").to_pylist() == b.column("prompt_id").to_pylist()
    assert len(set(a.column("prompt_id").to_pylist())) == 500


def test_bundled_gsm8k_slices_import(tmp_path):
    train = imported(bundled.path(bundled.GSM8K_TRAIN), "--out", tmp_path / "b")
    test = imported(bundled.path(bundled.GSM8K_TEST), "--out", tmp_path / "b")
    assert (train.manifest["rows"], test.manifest["rows"]) == (300, 100)
    assert set(test.read().column("split").to_pylist()) == {"test"}
    assert not set(train.read().column("prompt_id").to_pylist()) & set(test.read().column("prompt_id").to_pylist())
    assert all(a.replace("-", "").replace(".", "").isdigit() for a in train.read().column("answer").to_pylist())
    with pytest.raises(Exception, match=r"no bundled file 'x.jsonl' \(have gsm8k_test.jsonl, gsm8k_train.jsonl\)"):
        bundled.path("x.jsonl")
