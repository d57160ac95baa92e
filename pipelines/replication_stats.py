"""Statistics of the CPU replication's report: pooled standard errors, paired per-seed
differences and the gap-closed fraction with intervals that do not assume any arm is free of
noise.

Every run is a (variant, training seed) pair; runs of different variants with the same seed
saw the same training problems and the same seed, so differences are taken within a seed
("paired") and summarised over seeds. A run's held-out evaluation is a 0/1 vector over the same
problems for every run, so problems can be resampled jointly across variants too.
"""

from __future__ import annotations

import math

import numpy as np

# Student t 97.5% quantiles (two-sided 95%) by degrees of freedom; beyond the table, the normal's.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
Z975 = 1.960
BOOTSTRAP_DRAWS = 4000
BOOTSTRAP_SEED = 0


def t975(df: int) -> float:
    """The two-sided 95% Student t quantile with ``df`` degrees of freedom (df >= 1)."""
    return T975[df - 1] if df <= len(T975) else Z975


def pooled_sd(groups: list[list[float]]) -> tuple[float | None, int]:
    """(sd, degrees of freedom) of the seed-to-seed spread pooled over ``groups`` (each a
    variant's per-seed values): sqrt(sum of squared deviations from each group's mean / sum of
    (n_i - 1)). Groups of one value add nothing; (None, 0) when no group has two."""
    squares, df = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            df += len(values) - 1
    return (math.sqrt(squares / df), df) if df else (None, 0)


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """a - b over the seeds both have (``seed -> value``): ``per_seed`` differences, their
    ``mean``, ``se`` (sd of the differences / sqrt(n), None for one seed), ``ci95`` (t interval)
    and ``seeds``. None when no seed is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    se = None
    if len(diffs) >= 2:
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    ci = [mean - t975(len(diffs) - 1) * se, mean + t975(len(diffs) - 1) * se] if se is not None else None
    return {"seeds": seeds, "per_seed": diffs, "mean": mean, "se": se, "ci95": ci}


def fieller(num: list[float], den: list[float]) -> dict:
    """95% Fieller interval of mean(num) / mean(den) from paired per-seed values (num_i, den_i
    of seed i; their covariance over seeds is used). ``bounded`` False when mean(den) is not
    significantly non-zero (the interval is then unbounded and ``ci95`` None)."""
    n = len(num)
    if n < 2:
        return {"ci95": None, "bounded": False}
    a, b = float(np.mean(num)), float(np.mean(den))
    cov = np.cov(np.array([num, den], dtype=float)) / n  # covariance of the two means
    t2 = t975(n - 1) ** 2
    qa, qb, qc = b * b - t2 * cov[1, 1], a * b - t2 * cov[0, 1], a * a - t2 * cov[0, 0]
    disc = qb * qb - qa * qc
    if qa <= 0 or disc < 0:
        return {"ci95": None, "bounded": False}
    root = math.sqrt(disc)
    return {"ci95": [(qb - root) / qa, (qb + root) / qa], "bounded": True}


def bootstrap_fraction(variant: np.ndarray, plain: np.ndarray, online: np.ndarray, draws: int = BOOTSTRAP_DRAWS,
                       seed: int = BOOTSTRAP_SEED) -> dict:
    """Paired bootstrap over seeds and problems of (mean variant - mean plain) / (mean online -
    mean plain). Each argument: 0/1 correctness, shape (seeds, problems), row i of each from the
    same training seed, column j the same problem. Every draw resamples seeds (rows, the same
    for the three) and problems (columns, the same for all) with replacement. ``ci95``: the
    2.5/97.5 percentiles of the draws whose gap is not 0; ``sd`` their standard deviation;
    ``undefined_draws``: draws with a zero gap."""
    rng = np.random.default_rng(seed)
    stack = np.stack([variant, plain, online]).astype(float)  # (3, seeds, problems)
    _, n_seeds, n_problems = stack.shape
    fractions, undefined = [], 0
    for _ in range(draws):
        rows = rng.integers(0, n_seeds, n_seeds)
        weights = np.bincount(rng.integers(0, n_problems, n_problems), minlength=n_problems) / n_problems
        v, p, o = (stack[:, rows, :] @ weights).mean(axis=1)
        if o == p:
            undefined += 1
            continue
        fractions.append((v - p) / (o - p))
    if not fractions:
        return {"ci95": None, "sd": None, "undefined_draws": undefined, "draws": draws}
    low, high = np.percentile(fractions, [2.5, 97.5])
    return {"ci95": [float(low), float(high)], "sd": float(np.std(fractions, ddof=1)), "undefined_draws": undefined,
            "draws": draws}
