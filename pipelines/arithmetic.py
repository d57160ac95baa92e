"""The arithmetic task of the CPU recipes (``cpu_replication``, ``scripts/main.sh``): two-digit
addition and subtraction (``a - b`` with ``a >= b``), asked for the result only.

Why this task: the embedded 135M model answers it right in ~10-20% of greedy tries (MATH and
GSM8K are near 0% for it), so GRPO groups of 8 samples hold both better and worse answers; the
answers are a few tokens long (16 new tokens are enough), which keeps CPU sampling cheap; a
seeded shuffle of the 12,195 distinct problems gives disjoint train and test splits.

    python pipelines/arithmetic.py --test 400 --train 64 --out runs/task   # writes test.jsonl, train.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

TASK_SEED = 1234  # the problems' shuffle: fixed, so every recipe and seed sees the same splits
SYSTEM = "Be brief."
QUESTION = "What is {a} {op} {b}? Reply with just the number."


def problems(seed: int = TASK_SEED) -> list[tuple[int, str, int]]:
    """Every distinct ``(a, op, b)``: a, b two-digit, op + or - (a >= b for -), shuffled with ``seed``."""
    found = [(a, "+", b) for a in range(10, 100) for b in range(10, 100)]
    found += [(a, "-", b) for a in range(10, 100) for b in range(10, a + 1)]
    random.Random(seed).shuffle(found)
    return found


def row(a: int, op: str, b: int) -> dict:
    """One prompts row: chat messages (a short system turn, the question) and the exact answer."""
    return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION.format(a=a, op=op, b=b)}],
            "answer": str(a + b if op == "+" else a - b)}


def splits(test_size: int, train_size: int, seed: int = TASK_SEED) -> tuple[list[dict], list[dict]]:
    """Disjoint (test, train) rows: the first ``test_size`` shuffled problems, then ``train_size`` more."""
    found = problems(seed)
    if test_size + train_size > len(found):
        raise ValueError(f"only {len(found)} distinct problems for {test_size} test + {train_size} train")
    rows = [row(*p) for p in found[: test_size + train_size]]
    return rows[:test_size], rows[test_size:]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write the arithmetic task's test.jsonl and train.jsonl (prompts format).")
    p.add_argument("--test", type=int, required=True, help="Held-out problems.")
    p.add_argument("--train", type=int, required=True, help="Training problems (disjoint from the test ones).")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        test, train = splits(args.test, args.train)
    except ValueError as err:
        sys.exit(f"error: {err}")
    for name, rows in (("test", test), ("train", train)):
        print(write_jsonl(args.out / f"{name}.jsonl", rows))


if __name__ == "__main__":
    main()
