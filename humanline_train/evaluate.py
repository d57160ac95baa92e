"""Evaluation of a model on held-out prompts (method.md §9): pass@1 or win rate, with standard errors.

Both run the data plane's own stages, so evaluation samples and scores exactly as training data
is made: ``generate`` (``n`` samples per prompt) -> ``score`` -> per-prompt statistics.

pass@1 (no baseline; verifiable prompts, scorer ``math``)
    A sample is correct when the scorer's ``correct`` component is 1 (``math``), or, for other
    scorers, when its reward is 1. A prompt's score is the mean correctness of its ``n``
    samples; pass@1 is the mean over prompts.

win rate (``baseline`` given; unverifiable prompts, scorer ``rm:<model>``)
    The baseline is a completions version answering the same prompts (e.g. the imported
    AlpacaEval GPT-4 Turbo outputs; its lowest ``sample_idx`` answer per prompt is used). Both
    sides are scored by the same scorer. A sample wins (1) when its reward is higher than the
    baseline's, ties count 0.5; a prompt's score is the mean over its ``n`` samples.
    Length-controlled win rate: a logistic regression of the per-sample outcome on
    ``tanh(Δlen / std(Δlen))``, Δlen = model minus baseline answer length in characters (the
    length term of AlpacaEval 2's LC GLM, without its instruction terms), read at Δlen = 0:
    ``sigmoid(intercept)``; its standard error by the delta method.

Standard errors: when every prompt's score is 0 or 1 (e.g. greedy pass@1) the binomial
``sqrt(p (1 - p) / N)``; otherwise the standard error of the mean of the per-prompt scores
(sample std with ddof 1 over ``sqrt(N)``); ``None`` when it cannot be computed (N < 2).

Samples the generate stage left out (empty completions) count as wrong / as losses, so a model
that answers nothing is not rewarded by a smaller denominator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from humanline_data.backends import SamplingParams
from humanline_data.errors import HumanlineError, SchemaError, os_errors
from humanline_data.generate import distinct_prompts, generate
from humanline_data.models import model_identity, resolve_model
from humanline_data.outputs import check_output
from humanline_data.scorers import parse_spec, score
from humanline_data.store import open_version, write_version
from humanline_train.checkpoint import write_atomic

SAMPLED_KINDS = ("completions", "scored")
GREEDY = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=256, seed=0)  # eval's defaults


def evaluate(
    model,
    prompts,
    scorer: str,
    baseline=None,
    sampling: SamplingParams = GREEDY,
    limit: int | None = None,
    backend: str = "auto",
    batch_size: int = 16,
    work=None,
) -> dict:
    """Evaluate ``model`` on the first ``limit`` prompts of ``prompts`` with ``sampling`` (the
    sampling-settings type generate and online rounds use); return the result dict.

    Keys: ``metric`` ("pass@1" or "win_rate"), ``value``, ``se``, ``count`` (prompts),
    ``n`` (samples per prompt), ``missing_samples`` (left out by generate as empty), the run's settings,
    and for win rates ``wins``/``ties``/``losses`` (sample counts) and ``length_controlled``
    (``value``, ``se``). Versions are written under ``work`` (kept, and listed under
    ``versions``) or under a temporary directory removed afterwards.
    """
    source = open_version(prompts, kinds=("prompts", *SAMPLED_KINDS))
    asked = distinct_prompts(source, limit)
    if asked.num_rows == 0:
        raise HumanlineError(f"{source.path}: no prompts to evaluate")
    model_path = resolve_model(model)
    _check_scorer(scorer)
    if baseline is None and scorer == "math" and pc.any(pc.is_null(asked.column("answer"))).as_py():
        raise SchemaError(f"{source.path}: pass@1 with the math scorer needs an answer for every prompt")
    reference = open_version(baseline, kinds=SAMPLED_KINDS) if baseline is not None else None
    base_rows = _baseline_rows(reference, asked) if reference is not None else None

    root = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="humanline-eval-"))
    try:
        n = sampling.n
        completions = generate(
            source.path, root / "completions", model_path, n=n, temperature=sampling.temperature,
            top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, seed=sampling.seed, backend=backend,
            batch_size=batch_size, limit=limit,
        )
        scored = score(completions, root / "scored", scorer, batch_size=batch_size)
        versions = {"completions": completions, "scored": scored}
        samples = open_version(scored).read(["prompt_id", "sample_idx", "completion", "reward", "reward_components"])
        ids = asked.column("prompt_id").to_pylist()
        result = {
            "model": str(model_path.resolve()),
            "model_sha256": model_identity(model_path)["model_sha256"],
            "prompts": str(source.path.resolve()),
            "scorer": scorer,
            **dataclasses.asdict(sampling),
            "limit": limit,
            "count": len(ids),
            "missing_samples": len(ids) * n - samples.num_rows,
        }
        if base_rows is None:
            result |= _pass_at_1(samples, ids, n)
        else:
            baseline_version = _write_baseline(base_rows, reference, root / "baseline")
            baseline_scored = score(baseline_version, root / "baseline_scored", scorer, batch_size=batch_size)
            versions |= {"baseline": baseline_version, "baseline_scored": baseline_scored}
            base = open_version(baseline_scored).read(["prompt_id", "completion", "reward"])
            result |= {"baseline": str(reference.path.resolve())} | _win_rate(samples, base, ids, n)
        if work is not None:
            result["versions"] = {name: str(path.resolve()) for name, path in versions.items()}
        return result
    finally:
        if work is None:
            shutil.rmtree(root, ignore_errors=True)


def _check_scorer(scorer: str) -> None:
    """Fail before sampling on a bad scorer spec (a reward model is only located, not loaded)."""
    kind, _, rest = scorer.partition(":")
    if kind == "rm" and rest:
        resolve_model(rest)
    else:
        parse_spec(scorer)


def mean_and_se(scores: list[float]) -> tuple[float, float | None]:
    """Mean of per-prompt scores and its standard error (binomial when all are 0/1)."""
    values = np.asarray(scores, dtype=np.float64)
    p = float(values.mean())
    if np.isin(values, (0.0, 1.0)).all():
        return p, math.sqrt(p * (1 - p) / len(values))
    if len(values) < 2:
        return p, None
    return p, float(values.std(ddof=1) / math.sqrt(len(values)))


def _pass_at_1(samples: pa.Table, ids: list[str], n: int) -> dict:
    correct = {pid: 0.0 for pid in ids}
    for row in samples.to_pylist():
        parts = json.loads(row["reward_components"] or "{}")
        correct[row["prompt_id"]] += float(parts.get("correct", row["reward"]) == 1.0)
    value, se = mean_and_se([correct[pid] / n for pid in ids])
    return {"metric": "pass@1", "value": value, "se": se}


def _win_rate(samples: pa.Table, base: pa.Table, ids: list[str], n: int) -> dict:
    base_ids = base.column("prompt_id").to_pylist()
    base_reward = dict(zip(base_ids, base.column("reward").to_pylist()))
    base_length = {pid: len(text) for pid, text in zip(base_ids, base.column("completion").to_pylist())}
    per_prompt = {pid: 0.0 for pid in ids}
    outcomes, length_gaps = [], []
    for row in samples.to_pylist():
        gap = row["reward"] - base_reward[row["prompt_id"]]
        outcome = 1.0 if gap > 0 else 0.5 if gap == 0 else 0.0
        per_prompt[row["prompt_id"]] += outcome
        outcomes.append(outcome)
        length_gaps.append(len(row["completion"]) - base_length[row["prompt_id"]])
    counts = _sample_counts(samples)
    for pid in ids:  # samples generate left out as empty: losses with an answer of length 0
        absent = n - counts.get(pid, 0)
        outcomes += [0.0] * absent
        length_gaps += [-base_length[pid]] * absent
    value, se = mean_and_se([per_prompt[pid] / n for pid in ids])
    lc_value, lc_se = length_controlled(outcomes, length_gaps)
    return {
        "metric": "win_rate",
        "value": value,
        "se": se,
        "wins": outcomes.count(1.0),
        "ties": outcomes.count(0.5),
        "losses": outcomes.count(0.0),
        "length_controlled": {"value": lc_value, "se": lc_se, "method": "logistic GLM on tanh(len gap / std), at gap 0"},
    }


def _sample_counts(samples: pa.Table) -> dict[str, int]:
    counts = samples.group_by("prompt_id").aggregate([([], "count_all")])
    return dict(zip(counts.column("prompt_id").to_pylist(), counts.column("count_all").to_pylist()))


def length_controlled(outcomes, length_gaps, ridge: float = 1e-3) -> tuple[float, float | None]:
    """Win rate at zero length gap: sigmoid(b0) of the logistic fit outcome ~ b0 + b1 tanh(gap/std).

    ``outcomes`` in [0, 1] (ties 0.5 act as soft labels); fitted by Newton's method with a small
    ridge penalty, which keeps the intercept finite when every sample wins (or loses).
    """
    outcomes = np.asarray(outcomes, dtype=np.float64)
    length_gaps = np.asarray(length_gaps, dtype=np.float64)
    scale = length_gaps.std()
    x = np.tanh(length_gaps / scale) if scale > 0 else np.zeros_like(length_gaps)
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-design @ beta))
        gradient = design.T @ (outcomes - p) - ridge * beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    p0 = 1.0 / (1.0 + math.exp(-beta[0]))
    variance = float(np.linalg.inv(hessian)[0, 0])
    return p0, p0 * (1 - p0) * math.sqrt(variance) if len(outcomes) > 1 else None


def _baseline_rows(reference, asked: pa.Table) -> pa.Table:
    """The baseline's first answer (lowest sample_idx) to each asked prompt; raises if one lacks it."""
    table = reference.read()
    table = table.filter(pc.is_in(table.column("prompt_id"), value_set=asked.column("prompt_id")))
    table = table.take(pc.sort_indices(table, [("prompt_id", "ascending"), ("sample_idx", "ascending")]))
    ids = table.column("prompt_id").to_pylist()
    first = [i for i, pid in enumerate(ids) if i == 0 or ids[i - 1] != pid]
    table = table.take(pa.array(first, pa.int64()))
    have = set(table.column("prompt_id").to_pylist())
    lacking = [pid for pid in asked.column("prompt_id").to_pylist() if pid not in have]
    if lacking:
        raise HumanlineError(
            f"baseline {reference.path} has no answer for {len(lacking)} of {asked.num_rows} prompts "
            f"(first prompt_id {lacking[0]})"
        )
    return table


def _write_baseline(rows: pa.Table, reference, out: Path) -> Path:
    """The baseline rows in use as a completions version (child of the baseline)."""
    rows = rows.drop_columns([c for c in ("reward", "scorer", "reward_components") if c in rows.column_names])
    with write_version(
        out, "completions", params={"stage": "eval baseline subset"}, parents=[reference.parent_ref()],
        producer={"stage": "evaluate"}, stats={"rows": rows.num_rows},
    ) as writer:
        writer.write(rows)
    return writer.path


@click.command("eval")
@click.option("--model", required=True, help="'smollm2-135m-instruct' (embedded), a checkpoint or a local HF folder.")
@click.option("--prompts", required=True, type=click.Path(path_type=Path), help="Held-out prompts version or dataset.")
@click.option("--scorer", required=True, help="math (pass@1) or rm:<model> (win rate with --baseline).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="Completions version answering the same prompts; gives a win rate.")
@click.option("--n", "n", default=GREEDY.n, show_default=True, help="Samples per prompt.")
@click.option("--temperature", default=GREEDY.temperature, show_default=True, help="0 = greedy.")
@click.option("--top-p", default=GREEDY.top_p, show_default=True)
@click.option("--max-new-tokens", default=GREEDY.max_new_tokens, show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N prompts.")
@click.option("--seed", default=GREEDY.seed, show_default=True)
@click.option("--backend", default="auto", show_default=True, help="Generation backend: auto, vllm, transformers.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="Keep the completions/scored versions under this folder (default: a temporary one).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON result here.")
def eval_command(out: Path | None, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                 **kwargs) -> None:
    """Evaluate a model: pass@1 (math) or win rate against --baseline; prints the result as JSON."""
    if out is not None:
        check_output(out, "file")
    sampling = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    text = json.dumps(evaluate(sampling=sampling, **kwargs), indent=2)
    if out is not None:
        with os_errors(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, text + "\n")
    click.echo(text)


COMMANDS = [eval_command]
