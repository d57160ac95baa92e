"""Reward functions of the math recipes, for ``--scorer python:pipelines/rewards.py:<function>``.

The paper's math runs (SPEC §3) reward answer correctness (weight 8, checked by a math
verifier) plus format (weight 1). Here correctness and format come from the project's math
scorer (``humanline_data.scorers.math_verifier.score_answers``): format is 1 when the
completion states its final answer with an explicit marker (``\\boxed{}``, ``####``, "the
answer is", ``Answer:``).
"""

from __future__ import annotations

from humanline_data.scorers.math_verifier import score_answers

CORRECT_WEIGHT = 8.0
FORMAT_WEIGHT = 1.0
DRY_RUN_LENGTH_WEIGHT = 1e-3  # per character


def correct_and_format(batch: list[dict]) -> list[float]:
    """8 * correct + 1 * format for each row (``completion``, reference ``answer``)."""
    results = score_answers([(row["completion"], row["answer"]) for row in batch])
    return [CORRECT_WEIGHT * correct + FORMAT_WEIGHT * fmt for correct, fmt in results]


def dry_run_reward(batch: list[dict]) -> list[float]:
    """``correct_and_format`` plus 0.001 per character: a tiny random model is never right and
    never marks an answer, so without the length term every group would be flat (no GRPO
    signal, an empty shard). Dry runs only."""
    return [r + DRY_RUN_LENGTH_WEIGHT * len(row["completion"]) for r, row in zip(correct_and_format(batch), batch)]
