"""Reward functions of the math recipes, for ``--scorer python:pipelines/rewards.py:<function>``.

The paper's math runs (method.md §8) reward answer correctness (weight 8, checked by a math
verifier) plus format (weight 1). Here correctness and format come from the project's math
scorer (``humanline_data.scorers.math_verifier.score_answers``): format is 1 when the
completion states its final answer with an explicit marker (``\\boxed{}``, ``####``, "the
answer is", ``Answer:``).
"""

from __future__ import annotations

from humanline_data.scorers.math_verifier import score_answers

CORRECT_WEIGHT = 8.0
FORMAT_WEIGHT = 1.0
TIE_BREAK_PER_CHAR = 1e-5
DRY_RUN_LENGTH_WEIGHT = 1e-3  # per character


def correct_and_format(batch: list[dict]) -> list[float]:
    """8 * correct + 1 * format for each row (``completion``, reference ``answer``)."""
    results = score_answers([(row["completion"], row["answer"]) for row in batch])
    return [CORRECT_WEIGHT * correct + FORMAT_WEIGHT * fmt for correct, fmt in results]


def correct_kept(batch: list[dict]) -> list[float]:
    """8 * correct minus 1e-5 per character (see :func:`keep_equal_groups`)."""
    results = score_answers([(row["completion"], row["answer"]) for row in batch])
    return keep_equal_groups([CORRECT_WEIGHT * correct for correct, _ in results], batch)


def correct_and_format_kept(batch: list[dict]) -> list[float]:
    """``correct_and_format`` minus 1e-5 per character (see :func:`keep_equal_groups`)."""
    return keep_equal_groups(correct_and_format(batch), batch)


def keep_equal_groups(rewards: list[float], batch: list[dict]) -> list[float]:
    """``rewards`` minus 1e-5 per character of each completion: a group whose samples all score
    the same (e.g. all wrong) keeps near-zero advantages (|A| ~ 0.01-0.04 against ~1 for a real
    spread) instead of being dropped as flat. The online refresh drops flat groups and stops the
    run on a round that keeps none, which a small model hits within a few rounds of two to four
    prompts; TRL's GRPO keeps such groups in the batch with advantage 0."""
    return [r - TIE_BREAK_PER_CHAR * len(row["completion"]) for r, row in zip(rewards, batch)]


def dry_run_reward(batch: list[dict]) -> list[float]:
    """``correct_and_format`` plus 0.001 per character: a tiny random model is never right and
    never marks an answer, so without the length term every group would be flat (no GRPO
    signal, an empty shard). Dry runs only."""
    return [r + DRY_RUN_LENGTH_WEIGHT * len(row["completion"]) for r, row in zip(correct_and_format(batch), batch)]
