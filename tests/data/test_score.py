"""The score stage: math verifier on real MATH/GSM8K solutions, reward models (plain and
ArmoRM-style remote code), user python functions, and bad inputs."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from humanline_data.cli import main
from humanline_data.errors import HumanlineError, ModelNotFoundError, SchemaError, WrongKindError
from humanline_data.schema import prompt_id
from humanline_data.scorers import score
from humanline_data.scorers.math_verifier import extract_answer, score_answers
from humanline_data.store import list_versions, open_version, write_version

from tolerances import assert_close_fp32

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
USER_SCORER = FIXTURES / "user_scorer.py"


# ---------------------------------------------------------------- building input versions


def completion_rows(items: list[dict], source: str = "test") -> pa.Table:
    """A completions table from dicts with ``prompt``, ``completion`` and optional ``answer``,
    ``sample_idx`` and ``metadata`` (dict)."""
    rows = []
    for item in items:
        messages = [{"role": "user", "content": item["prompt"]}]
        rows.append({
            "prompt_id": prompt_id(messages),
            "messages": messages,
            "answer": item.get("answer"),
            "source": source,
            "split": "train",
            "sample_idx": item.get("sample_idx", 0),
            "completion": item["completion"],
            "completion_tokens": len(item["completion"].split()),
            "finish_reason": "stop",
            "generator": "test",
            "metadata": json.dumps(item["metadata"]) if "metadata" in item else None,
        })
    return pa.Table.from_pylist(rows)


def write_input(dataset: Path, items: list[dict], kind: str = "completions") -> Path:
    table = completion_rows(items)
    if kind == "prompts":
        table = table.drop_columns(["sample_idx", "completion", "completion_tokens", "finish_reason", "generator"])
    with write_version(dataset, kind) as writer:
        writer.write(table)
    return writer.path


def rewards_of(version: Path) -> list[float]:
    return open_version(version).read(columns=["reward"]).column("reward").to_pylist()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    """The CLI's one error line (the last stderr line; progress output may precede it)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    return lines[-1]


# ---------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    ("text", "answer", "marked"),
    [
        (r"so the value is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", True),
        (r"first \boxed{1}, then \boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}", True),
        (r"hence $x = \boxed 9$.", "9", True),
        ("She pays 6*7 = 42 dollars.\n#### 42", "42", True),
        ("#### 1,080", "1080", True),
        ("Adding up, the answer is 7.", "7", True),
        ("The final answer is $3.5$.", "3.5", True),
        ("Q: what is 1+2?\nA: 3", "3", True),
        ("Working...\nAnswer: -12", "-12", True),
        ("I have 3 apples and then 15 pears", "15", False),
        ("it costs $2,500 in total", "2500", False),
        ("no number here at all", None, False),
    ],
)
def test_extract_answer(text, answer, marked):
    assert extract_answer(text) == (answer, marked)


@pytest.mark.parametrize("completion, gold, correct", [
    ("The answer is 18 + 42", "60", False),  # restating the question is not an answer
    ("The answer is 2*30.", "60", False),
    ("\\boxed{6 \\times 10}", "60", False),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),  # a fraction is a number
    ("18 + 42 = 60", "60", True),  # the last number, after the working
    ("The answer is $1,080.", "1080", True),
    ("The answer is -5", "-5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),  # a LaTeX reference still matches its equivalents
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", True),
])
def test_a_plain_number_reference_needs_a_number(completion, gold, correct):
    assert score_answers([(completion, gold)]) == [(float(correct), float("answer" in completion or "boxed" in completion))]


def test_math_rewards_and_format_weight(tmp_path):
    inp = write_input(tmp_path / "c", [
        {"prompt": "p1", "completion": r"so $\boxed{\frac{1}{2}}$", "answer": "0.5"},
        {"prompt": "p2", "completion": "#### 42", "answer": "42"},
        {"prompt": "p3", "completion": "The answer is 7.", "answer": "8"},
        {"prompt": "p4", "completion": "A: 3", "answer": "3"},
        {"prompt": "p5", "completion": "we get 10 then 12", "answer": "12"},
        {"prompt": "p6", "completion": "no idea", "answer": "5"},
    ])
    plain = score(inp, tmp_path / "s", "math")
    assert rewards_of(plain) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    weighted = score(inp, tmp_path / "s", "math", format_weight=0.5)
    assert rewards_of(weighted) == [1.5, 1.5, 0.5, 1.5, 1.0, 0.0]
    table = open_version(weighted).read()
    assert [json.loads(c) for c in table.column("reward_components").to_pylist()][2] == {"correct": 0.0, "format": 1.0}
    assert set(table.column("scorer").to_pylist()) == {"math+format*0.5"}
    manifest = open_version(weighted).manifest
    assert manifest["params"]["format_weight"] == 0.5 and manifest["kind"] == "scored"
    assert manifest["stats"]["reward_mean"] == pytest.approx(6.0 / 6)
    assert manifest["stats"]["component_means"] == {"correct": pytest.approx(4 / 6), "format": pytest.approx(4 / 6)}
    assert manifest["parents"][0]["path"] == str(inp.resolve())


# ---------------------------------------------------------------- math on real data


def _math_items(shared_data: Path, n_train: int = 1000, seed: int = 0) -> list[dict]:
    train = read_jsonl(shared_data / "math" / "train.jsonl")
    test = read_jsonl(shared_data / "math" / "math500_test.jsonl")
    picked = random.Random(seed).sample(train, n_train) + test
    return [{"prompt": r["problem"], "completion": r["solution"], "answer": r["answer"]} for r in picked]


def _gsm8k_items(shared_data: Path, n: int = 1000, seed: int = 0) -> list[dict]:
    rows = random.Random(seed).sample(read_jsonl(shared_data / "gsm8k" / "train.jsonl"), n)
    return [
        {"prompt": r["question"], "completion": r["answer"], "answer": r["answer"].split("####")[-1].strip()}
        for r in rows
    ]


def _swap_answers(items: list[dict]) -> list[dict]:
    """Each row gets the next row's reference answer."""
    return [{**item, "answer": items[(i + 1) % len(items)]["answer"]} for i, item in enumerate(items)]


@pytest.mark.parametrize("dataset", ["math", "gsm8k"])
def test_math_verifies_real_reference_solutions(shared_data, tmp_path, dataset):
    items = _math_items(shared_data) if dataset == "math" else _gsm8k_items(shared_data)
    rewards = rewards_of(score(write_input(tmp_path / "c", items), tmp_path / "s", "math"))
    assert sum(rewards) / len(rewards) >= 0.99
    swapped = _swap_answers(items[:500])
    wrong = rewards_of(score(write_input(tmp_path / "w", swapped), tmp_path / "sw", "math"))
    assert sum(wrong) / len(wrong) <= 0.05


def test_math_worker_processes_give_the_same_rewards(shared_data, tmp_path):
    items = _math_items(shared_data, n_train=150, seed=1)[:150] + _swap_answers(_gsm8k_items(shared_data, n=50))
    inp = write_input(tmp_path / "c", items)
    serial = score(inp, tmp_path / "s", "math", batch_size=64)
    pooled = score(inp, tmp_path / "s", "math", batch_size=64, workers=2)
    assert rewards_of(pooled) == rewards_of(serial)
    assert 140 <= sum(rewards_of(serial)) <= 152  # the 150 own answers verify, the 50 swapped mostly not
    assert open_version(pooled).manifest["params"]["workers"] == 2


def test_math_needs_an_answer(tmp_path):
    inp = write_input(tmp_path / "c", [
        {"prompt": "p1", "completion": "#### 1", "answer": "1"},
        {"prompt": "p2", "completion": "#### 2"},
    ])
    with pytest.raises(SchemaError, match=r"math scorer needs an answer column; row 1 of prompt_id \w+ has none"):
        score(inp, tmp_path / "s", "math")
    assert list_versions(tmp_path / "s") == []


# ---------------------------------------------------------------- reward models

# the addends whose rounding reaches one reward of the tiny reward models below: per layer, 5 sums
# over the hidden size (norm, q/k/v, o, norm, gate/up), one over a head's 8 dims, 2 over the
# positions (under 64 here) and one over the MLP's 64; then the final norm and the head's 32
RM_TERMS = 2 * (5 * 32 + 8 + 2 * 64 + 64) + 32 + 32


def _reward_model_folder(path: Path, seed: int = 0) -> Path:
    """A tiny random one-label LlamaForSequenceClassification with the SmolLM2 tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=2)
    LlamaForSequenceClassification(config).save_pretrained(path)
    for f in (FIXTURES / "smollm2_tokenizer").iterdir():
        shutil.copy(f, path / f.name)
    return path


def _armo_style_folder(path: Path, seed: int = 0) -> Path:
    """A remote-code model (auto_map) whose forward returns an object with ``.score``."""
    from transformers import LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    path.mkdir(parents=True)
    shutil.copy(FIXTURES / "armo_style_rm" / "modeling_armo_style.py", path)
    import importlib.util

    spec = importlib.util.spec_from_file_location("armo_fixture", path / "modeling_armo_style.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ArmoStyleRewardModel(config).save_pretrained(path)
    config_json = json.loads((path / "config.json").read_text())
    config_json["auto_map"] = {"AutoModelForSequenceClassification": "modeling_armo_style.ArmoStyleRewardModel"}
    (path / "config.json").write_text(json.dumps(config_json))
    for f in (FIXTURES / "smollm2_tokenizer").iterdir():
        shutil.copy(f, path / f.name)
    return path


RM_ITEMS = [
    {"prompt": "What is 2+2?", "completion": "4"},
    {"prompt": "Write a haiku about rain.", "completion": "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"},
    {"prompt": "Say hi.", "completion": "Hello there, nice to meet you!", "sample_idx": 0},
]


def _independent_rewards(folder: Path, items: list[dict], read) -> list[float]:
    """One unpadded forward per row, with the tokenizer's own chat template."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True)
    out = []
    for item in items:
        conversation = [{"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": item["completion"]}]
        ids = tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out.append(read(model(input_ids=ids)).item())
    return out


def test_reward_model_matches_independent_forward(tmp_path):
    folder = _reward_model_folder(tmp_path / "rm")
    version = score(write_input(tmp_path / "c", RM_ITEMS), tmp_path / "s", f"rm:{folder}", batch_size=2)
    expected = _independent_rewards(folder, RM_ITEMS, lambda o: o.logits[0, 0])
    assert_close_fp32(rewards_of(version), expected, RM_TERMS, "rewards")
    assert len(set(expected)) == 3  # distinct rewards, so the row order is checked too
    manifest = open_version(version).manifest
    assert manifest["producer"]["model"] == str(folder.resolve()) and len(manifest["producer"]["model_sha256"]) == 16
    scorer = open_version(version).read(columns=["scorer"]).column("scorer")[0].as_py()
    assert scorer == f"rm:rm@{manifest['producer']['model_sha256']}"


def test_armo_style_remote_code_model_uses_score(tmp_path):
    folder = _armo_style_folder(tmp_path / "armo")
    version = score(write_input(tmp_path / "c", RM_ITEMS), tmp_path / "s", f"rm:{folder}", batch_size=3)
    expected = _independent_rewards(folder, RM_ITEMS, lambda o: o.score[0, 0])
    # the score sums 3 rewards of either sign (to ~40x below them here): its rounding is theirs
    parts = _independent_rewards(folder, RM_ITEMS, lambda o: o.rewards[0].abs().sum())
    assert_close_fp32(rewards_of(version), expected, RM_TERMS, "rewards", scale=max(parts))
    assert len(set(expected)) == 3


def test_reward_model_not_found(tmp_path):
    inp = write_input(tmp_path / "c", RM_ITEMS)
    with pytest.raises(ModelNotFoundError):
        score(inp, tmp_path / "s", f"rm:{tmp_path / 'nowhere'}")
    result = run_cli("score", inp, "--scorer", f"rm:{tmp_path / 'nowhere'}", "--out", tmp_path / "s")
    assert error_line(result).startswith("error: model ") and "not found" in result.stderr
    assert list_versions(tmp_path / "s") == []


# ---------------------------------------------------------------- python functions


def test_python_function_from_file_and_module(tmp_path, monkeypatch):
    items = [
        {"prompt": "a", "completion": "x" * 50, "metadata": {"bonus": 2}},
        {"prompt": "b", "completion": "y" * 120},
    ]
    inp = write_input(tmp_path / "c", items)
    by_file = score(inp, tmp_path / "s", f"python:{USER_SCORER}:length_reward", batch_size=1)
    assert rewards_of(by_file) == [2.5, 1.2]
    monkeypatch.syspath_prepend(str(FIXTURES))
    by_module = score(inp, tmp_path / "s", "python:user_scorer:length_reward")
    assert rewards_of(by_module) == [2.5, 1.2]
    table = open_version(by_module).read()
    assert table.column("scorer")[0].as_py() == "python:user_scorer:length_reward"
    assert json.loads(table.column("reward_components")[1].as_py()) == {"length_reward": 1.2}
    assert open_version(by_module).manifest["producer"]["source"] == str(USER_SCORER.resolve())


def test_rescoring_scored_rows_carries_columns(tmp_path):
    items = [{"prompt": "a", "completion": "#### 4", "answer": "4", "metadata": {"origin": "kept"}}]
    first = score(write_input(tmp_path / "c", items), tmp_path / "s", "math")
    again = score(first, tmp_path / "s2", f"python:{USER_SCORER}:length_reward")
    before, after = open_version(first).read(), open_version(again).read()
    assert rewards_of(again) == [0.06]
    carried = [c for c in before.column_names if c not in ("reward", "scorer", "reward_components")]
    assert after.select(carried).equals(before.select(carried))
    assert json.loads(after.column("metadata")[0].as_py()) == {"origin": "kept"}


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("wrong_length", r"returned 1 rewards for a batch of 2 rows"),
        ("not_a_float", r"returned 'good' \(str\), expected a float"),
        ("missing_function", r"has no function 'missing_function'"),
    ],
)
def test_python_function_bad_returns(tmp_path, function, message):
    inp = write_input(tmp_path / "c", [{"prompt": "a", "completion": "one"}, {"prompt": "b", "completion": "two"}])
    with pytest.raises(HumanlineError, match=message):
        score(inp, tmp_path / "s", f"python:{USER_SCORER}:{function}")
    assert list_versions(tmp_path / "s") == []


HOSTILE_SCORER = """
import sys

def raises_on_bad(batch):
    return [1.0 if "bad" not in row["completion"] else int("not a number") for row in batch]

def exits(batch):
    sys.exit(3)

def batch_of_one_only(batch):
    assert len(batch) == 1, "batches are too big"
    return [1.0]

def inf_on_bad(batch):
    return [float("inf") if "bad" in row["completion"] else 1.0 for row in batch]

def huge_on_bad(batch):
    return [1e300 if "bad" in row["completion"] else 1.0 for row in batch]

def huge_int_on_bad(batch):
    return [10 ** 400 if "bad" in row["completion"] else 1 for row in batch]

def generator_that_raises(batch):
    yield 1.0
    raise RuntimeError("ran dry")

def returns_none(batch):
    return None
"""


@pytest.mark.parametrize(("function", "message"), [
    ("raises_on_bad", "raised ValueError: invalid literal for int() with base 10: 'not a number', at row (prompt_id {bad})"),
    ("exits", "raised SystemExit(3) (sys.exit), at row (prompt_id {first})"),
    ("batch_of_one_only", "raised AssertionError: batches are too big, at the batch of 3 rows from row (prompt_id {first})"),
    ("inf_on_bad", "row 1 (prompt_id {bad}): scorer python:{module}:inf_on_bad gave reward inf; rewards must be finite"),
    ("huge_on_bad", "row 1 (prompt_id {bad}): scorer python:{module}:huge_on_bad gave reward 1e+300; "
                    "rewards must be at most 1e+100 in magnitude"),
    ("huge_int_on_bad", "returned a number that is no float64 (int too large to convert to float), at row (prompt_id {bad})"),
    ("generator_that_raises", "raised RuntimeError: ran dry, at row (prompt_id {first})"),
    ("returns_none", "returned NoneType, expected a list of floats"),
])
def test_user_code_that_fails_is_one_line_naming_function_and_row(tmp_path, function, message):
    module = tmp_path / "hostile.py"
    module.write_text(HOSTILE_SCORER)
    inp = write_input(tmp_path / "c", [{"prompt": "a", "completion": "good"}, {"prompt": "b", "completion": "bad", "sample_idx": 4},
                                       {"prompt": "c", "completion": "good too"}])
    good = score(inp, tmp_path / "s", f"python:{USER_SCORER}:length_reward")
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    ids = open_version(inp).read(columns=["prompt_id"]).column("prompt_id").to_pylist()
    line = error_line(run_cli("score", inp, "--scorer", f"python:{module}:{function}", "--out", tmp_path / "s"))
    assert f"python:{module}:{function}" in line
    assert message.format(first=f"{ids[0]}, sample_idx 0", bad=f"{ids[1]}, sample_idx 4", module=module) in line
    assert list_versions(tmp_path / "s") == [good] and {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not list((tmp_path / "s").glob(".tmp-*"))


def test_user_module_that_exits_on_import_is_one_line(tmp_path):
    module = tmp_path / "quits.py"
    module.write_text("import sys\nsys.exit('no scoring today')\n")
    inp = write_input(tmp_path / "c", [{"prompt": "a", "completion": "x"}])
    line = error_line(run_cli("score", inp, "--scorer", f"python:{module}:f", "--out", tmp_path / "s"))
    assert line == f"error: python scorer: importing {module} failed: SystemExit('no scoring today') (sys.exit)"
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- bad inputs through the CLI


def test_cli_writes_version_and_prints_its_path(tmp_path):
    inp = write_input(tmp_path / "c", [{"prompt": "a", "completion": "#### 4", "answer": "4"}])
    result = run_cli("score", tmp_path / "c", "--scorer", "math", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "s" / "v1")
    assert rewards_of(tmp_path / "s") == [1.0]
    assert open_version(tmp_path / "s").manifest["parents"][0]["path"] == str(inp.resolve())


def test_nan_reward_is_one_line_error_and_keeps_earlier_version(tmp_path):
    inp = write_input(tmp_path / "c", [
        {"prompt": "a", "completion": "first"},
        {"prompt": "b", "completion": "second"},
    ])
    good = score(inp, tmp_path / "s", f"python:{USER_SCORER}:length_reward")
    manifest = (good / "manifest.json").read_bytes()
    result = run_cli("score", inp, "--scorer", f"python:{USER_SCORER}:nan_on_second_row", "--out", tmp_path / "s")
    line = error_line(result)
    assert line.startswith("error: row 1 (prompt_id ") and "gave reward nan" in line
    assert list_versions(tmp_path / "s") == [good]
    assert (good / "manifest.json").read_bytes() == manifest and rewards_of(good) == [0.05, 0.06]
    assert not list((tmp_path / "s").glob(".tmp-*"))


def test_wrong_input_kind(tmp_path):
    inp = write_input(tmp_path / "p", [{"prompt": "a", "completion": "x", "answer": "1"}], kind="prompts")
    with pytest.raises(WrongKindError, match=r"kind 'prompts', this stage needs completions or scored"):
        score(inp, tmp_path / "s", "math")
    result = run_cli("score", inp, "--scorer", "math", "--out", tmp_path / "s")
    assert "kind 'prompts'" in error_line(result)
    assert list_versions(tmp_path / "s") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scorer", "bleu"], "unknown scorer 'bleu'"),
        (["--scorer", "python:only_module"], "unknown scorer"),
        (["--scorer", "rm:x", "--format-weight", "1"], "--format-weight applies to the math scorer only"),
        (["--scorer", "math", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--scorer", "math", "--workers", "0"], "--workers must be at least 1"),
        (["--scorer", f"python:{USER_SCORER}:length_reward", "--workers", "2"], "--workers applies to the math scorer only"),
        (["--scorer", "python:no/such/file.py:f"], "module file no/such/file.py not found"),
    ],
)
def test_bad_flags(tmp_path, args, message):
    inp = write_input(tmp_path / "c", [{"prompt": "a", "completion": "x", "answer": "1"}])
    result = run_cli("score", inp, *args, "--out", tmp_path / "s")
    assert message in error_line(result)
    assert list_versions(tmp_path / "s") == []

