"""Scored versions built from real rows (GSM8K problems, HH-RLHF harmless pairs) for the pair and
inspect tests. Rewards are assigned by the builders below, so tests know every value."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa

from humanline_data.schema import SCHEMAS, prompt_id
from humanline_data.store import write_version

# Reward patterns by problem number mod 8: sample i gets pattern[i]. Sample 0 is the problem's own
# reference solution, the others are solutions of the next problems (wrong answers).
REWARD_PATTERNS = [
    [1.0],  # single sample: dropped by pairs and groups
    [1.0, 1.0, 1.0],  # flat
    [0.01, 0.0],  # gap == default threshold: dropped by pairs
    [1.0, 0.0, 1.0, 0.0],  # ties on max and on min
    [1.0, 0.25, 0.5, 0.0, 0.75],
    [0.0, 0.3, 0.9],
    [0.6, 0.2],
    [0.0, 0.0, 0.0, 0.5, 0.125, 0.0],
]


def gsm8k_rows(data: Path, problems: int = 50) -> list[dict]:
    """Scored rows for the first ``problems`` GSM8K train problems (reward per REWARD_PATTERNS)."""
    with open(data / "gsm8k" / "train.jsonl") as f:
        items = [json.loads(line) for _, line in zip(range(problems + 8), f)]
    rows = []
    for i, item in enumerate(items[:problems]):
        messages = [{"role": "user", "content": item["question"]}]
        for s, reward in enumerate(REWARD_PATTERNS[i % len(REWARD_PATTERNS)]):
            rows.append(
                _row(messages, items[i + s]["answer"], s, reward, "gsm8k", "train" if i < 40 else "test",
                     answer=item["answer"].split("####")[-1].strip(), metadata={"gsm8k_index": i},
                     finish_reason="length" if (i + s) % 7 == 3 else "stop")
            )
    return rows


def hh_rows(data: Path, pairs: int = 20) -> list[dict]:
    """Scored rows from HH-RLHF harmless pairs: the chosen reply (reward 0.8) and the rejected one (0.1)."""
    rows = []
    with gzip.open(data / "preferences" / "hh_rlhf_harmless_base_test.jsonl.gz", "rt") as f:
        for line in f:
            item = json.loads(line)
            cut = item["chosen"].rfind("\n\nAssistant:")
            prefix = item["chosen"][:cut]
            chosen, rejected = item["chosen"][cut + 12:].strip(), item["rejected"][cut + 12:].strip()
            if not item["rejected"].startswith(prefix + "\n\nAssistant:") or not chosen or not rejected or chosen == rejected:
                continue
            turns = re.split(r"\n\n(Human|Assistant): ", prefix)[1:]
            messages = [{"role": "user" if who == "Human" else "assistant", "content": text}
                        for who, text in zip(turns[0::2], turns[1::2])]
            for s, (text, reward) in enumerate([(rejected, 0.1), (chosen, 0.8)]):
                rows.append(_row(messages, text, s, reward, "hh-rlhf", "test"))
            if len(rows) == 2 * pairs:
                return rows
    return rows


def _row(messages, completion, sample_idx, reward, source, split, answer=None, metadata=None, finish_reason="stop") -> dict:
    return {
        "prompt_id": prompt_id(messages), "messages": messages, "answer": answer, "source": source, "split": split,
        "sample_idx": sample_idx, "completion": completion, "completion_tokens": len(completion.split()),
        "finish_reason": finish_reason, "generator": "reference-texts", "reward": reward, "scorer": "assigned",
        "metadata": json.dumps(metadata) if metadata else None,
    }


def write_scored(out: Path, rows: list[dict], rows_per_file: int = 250_000) -> Path:
    """Write ``rows`` as the next ``scored`` version of ``out`` (parts of ``rows_per_file``); return its path."""
    with write_version(out, "scored", params={"test": True}, rows_per_file=rows_per_file) as w:
        w.write(pa.Table.from_pylist(rows, schema=SCHEMAS["scored"]))
    return w.path
