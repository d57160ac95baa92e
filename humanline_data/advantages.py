"""GRPO's group advantage (method.md §5.3), the one home of the formula for pairing and training:
A_i = (s_i - mean(s)) / (population std(s) + 0.01) within each group of scores."""

from __future__ import annotations

import numpy as np

ADVANTAGE_EPS = 0.01


def group_advantages(scores, group_ids) -> np.ndarray:
    """Advantages [N] float64 of ``scores`` [N], each row normalised within its ``group_ids`` [N] group."""
    scores = np.asarray(scores, dtype=np.float64)
    _, inverse = np.unique(np.asarray(group_ids), return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse).astype(np.float64)
    mean = np.bincount(inverse, weights=scores) / counts
    centred = scores - mean[inverse]
    std = np.sqrt(np.bincount(inverse, weights=centred**2) / counts)
    return centred / (std[inverse] + ADVANTAGE_EPS)
