"""The replication report's statistics (pipelines/replication_stats.py) on small worked cases."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines import replication_stats as stats  # noqa: E402


def test_pooled_sd_weights_each_variant_by_its_degrees_of_freedom():
    # deviations: (-1, 1) -> 2, (-2, 0, 2) -> 8; df 1 + 2; a one-seed variant adds nothing
    sd, df = stats.pooled_sd([[1.0, 3.0], [0.0, 2.0, 4.0], [7.0]])
    assert df == 3 and sd == pytest.approx(math.sqrt(10 / 3))
    assert stats.pooled_sd([[1.0], [2.0]]) == (None, 0)


def test_paired_differences_use_the_shared_seeds_only():
    d = stats.paired({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9}, {0: 0.4, 1: 0.4, 2: 0.6})
    assert d["seeds"] == [0, 1, 2] and d["per_seed"] == pytest.approx([0.1, 0.2, 0.1])
    assert d["mean"] == pytest.approx(0.4 / 3)
    assert d["se"] == pytest.approx(math.sqrt(((0.1 - 0.4 / 3) ** 2 * 2 + (0.2 - 0.4 / 3) ** 2) / 2 / 3))
    assert d["ci95"] == pytest.approx([d["mean"] - 4.303 * d["se"], d["mean"] + 4.303 * d["se"]])
    assert stats.paired({0: 1.0}, {1: 1.0}) is None


def test_fieller_interval_solves_its_quadratic_and_is_unbounded_without_a_gap():
    num, den = [0.05, 0.07, 0.06, 0.08, 0.04], [0.10, 0.11, 0.09, 0.12, 0.10]
    found = stats.fieller(num, den)
    assert found["bounded"]
    n, t = 5, stats.t975(4)
    a, b = np.mean(num), np.mean(den)
    cov = np.cov([num, den]) / n
    for f in found["ci95"]:  # each end: |a - f b| is exactly t standard errors of a - f b
        assert (a - f * b) ** 2 == pytest.approx(t * t * (cov[0, 0] - 2 * f * cov[0, 1] + f * f * cov[1, 1]))
    assert found["ci95"][0] < a / b < found["ci95"][1]
    assert not stats.fieller(num, [0.1, -0.1, 0.05, -0.05, 0.0])["bounded"]  # gap indistinguishable from 0


def test_bootstrap_fraction_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    online = (rng.random((5, 400)) < 0.5).astype(int)
    plain = (rng.random((5, 400)) < 0.3).astype(int)
    variant = (rng.random((5, 400)) < 0.4).astype(int)
    first = stats.bootstrap_fraction(variant, plain, online, draws=300)
    assert first == stats.bootstrap_fraction(variant, plain, online, draws=300)
    estimate = (variant.mean() - plain.mean()) / (online.mean() - plain.mean())
    assert first["ci95"][0] < estimate < first["ci95"][1] and first["undefined_draws"] == 0
    same = stats.bootstrap_fraction(variant, plain, plain, draws=50)  # no gap in any draw
    assert same["ci95"] is None and same["undefined_draws"] == 50


def test_pilot_drift_by_quarter_of_the_round():
    from pipelines.replication_pilot import by_quarter

    # two rounds of 8 steps: quarters are steps 0-1, 2-3, 4-5, 6-7 of each round; None is skipped
    values = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, None, 14, 15, 16, 17]
    assert by_quarter(values, 8) == pytest.approx([5.5, 17 / 3, 9.5, 11.5])
    assert by_quarter([1.0, 2.0], 1) == [1.5, None, None, None]  # online: every step is a round's first
