"""schema: prompt ids, kind detection, and conform's one-line errors on bad tables."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from humanline_data.errors import SchemaError
from humanline_data.schema import SCHEMAS, conform, normalize_messages, prompt_id

USER = [{"role": "user", "content": "What is 2+2?"}]


def completions_table(**overrides) -> pa.Table:
    """Two valid completion rows of one prompt; ``overrides`` replace whole columns."""
    columns = {
        "prompt_id": [prompt_id(USER)] * 2,
        "messages": [USER, USER],
        "source": ["test", "test"],
        "split": ["train", "train"],
        "sample_idx": [0, 1],
        "completion": ["4", "5"],
        "completion_tokens": [1, 1],
        "finish_reason": ["stop", "stop"],
        "generator": ["m", "m"],
        "reward": [1.0, 0.0],
        "scorer": ["math", "math"],
    }
    columns.update(overrides)
    return pa.table(columns)


def test_prompt_id_is_stable_and_ignores_role_case_and_outer_whitespace():
    a = prompt_id([{"role": "user", "content": "What is 2+2?"}])
    b = prompt_id([{"role": "User", "content": "  What is 2+2?\n"}])
    assert a == b == "2c0181c6b610a437"  # pinned: ids must not change between releases
    assert prompt_id([{"role": "system", "content": "What is 2+2?"}]) != a
    assert prompt_id([*USER, {"role": "assistant", "content": "4"}, *USER]) != a


def test_normalize_messages_rejects_unknown_role_in_one_line():
    with pytest.raises(SchemaError, match=r"unknown role 'bot'") as err:
        normalize_messages([{"role": "bot", "content": "hi"}])
    assert "\n" not in str(err.value)


def test_conform_casts_orders_fills_nullable_and_drops_unknown_columns():
    table = completions_table(extra=["x", "y"], sample_idx=pa.array([0, 1], pa.int64()))
    out = conform(table, "scored")
    assert out.schema == SCHEMAS["scored"]
    assert out.column("sample_idx").type == pa.int32()
    assert out.column("answer").null_count == 2 and out.column("metadata").null_count == 2
    assert "extra" not in out.column_names
    assert out.column("reward").to_pylist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "table, kind, message",
    [
        (completions_table().drop(["completion"]), "scored", r"missing required column 'completion' for kind scored"),
        (completions_table(reward=["0.5", "1.0"]), "scored", r"column 'reward' has dtype string, expected double"),
        (completions_table(sample_idx=["a", "b"]), "scored", r"column 'sample_idx' has dtype string, expected int32"),
        (completions_table(reward=[1.0, math.nan]), "scored", r"row 1: reward is nan \(must be finite\)"),
        (completions_table(reward=[math.inf, 0.0]), "scored", r"row 0: reward is inf"),
        (completions_table(completion=["4", "  \n"]), "scored", r"row 1: empty completion"),
        (completions_table(generator=["m", None]), "scored", r"row 1: column 'generator' is null"),
        (
            completions_table(messages=[USER, [{"role": "robot", "content": "hi"}]]),
            "scored",
            r"unknown role 'robot'",
        ),
        (completions_table(messages=[USER, []]), "scored", r"row 1: empty prompt \(no messages\)"),
        (
            completions_table(messages=[USER, [{"role": "user", "content": " "}]]),
            "scored",
            r"row 1: empty prompt message",
        ),
        (completions_table(sample_idx=[0, 0]), "scored", r"duplicate prompt_id/sample_idx"),
        (completions_table(), "bogus", r"unknown kind 'bogus'"),
    ],
    ids=[
        "missing-column",
        "reward-as-string",
        "int-as-string",
        "nan-reward",
        "inf-reward",
        "empty-completion",
        "null-required",
        "unknown-role",
        "no-messages",
        "blank-message",
        "duplicate-key",
        "unknown-kind",
    ],
)
def test_conform_rejects_bad_tables_in_one_line(table, kind, message):
    with pytest.raises(SchemaError, match=message) as err:
        conform(table, kind, where="batch.parquet")
    assert str(err.value).startswith("batch.parquet: ")
    assert "\n" not in str(err.value)


def test_conform_rejects_duplicate_prompts_and_bad_group_values():
    prompts = pa.table({"prompt_id": ["a", "a"], "messages": [USER, USER], "source": ["s"] * 2, "split": ["t"] * 2})
    with pytest.raises(SchemaError, match=r"duplicate prompt_id \{'prompt_id': 'a'\}"):
        conform(prompts, "prompts")
    groups = pa.table(
        {
            "prompt_id": ["a"],
            "messages": [USER],
            "source": ["s"],
            "completions": [["x", "y"]],
            "rewards": [[1.0, math.nan]],
            "advantages": [[1.0, -1.0]],
        }
    )
    with pytest.raises(SchemaError, match=r"row 0: rewards holds a NaN"):
        conform(groups, "groups")


def test_conform_rejects_empty_pair_side():
    pairs = pa.table(
        {"prompt_id": ["a"], "messages": [USER], "source": ["s"], "chosen": ["good"], "rejected": [""]}
    )
    with pytest.raises(SchemaError, match=r"row 0: empty rejected"):
        conform(pairs, "pairs")
    assert conform(pairs.set_column(4, "rejected", pa.array(["bad"])), "pairs").num_rows == 1
