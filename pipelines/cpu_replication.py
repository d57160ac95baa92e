"""The paper's sampling-interval experiment at CPU scale (SmolLM2-135M-Instruct, 2 cores):
does humanline GRPO on data sampled R times less often (stale) or once (offline) close the gap
to online GRPO, and which half of humanline (reference sync, log-ratio clip) does it?

    python pipelines/cpu_replication.py --out runs/cpu-replication --workers 1    # CPU scale; resumable
    python pipelines/cpu_replication.py --out runs/cpu-dry --dry-run --scale gpu  # tiny random model (the test)
    python pipelines/cpu_replication.py --out runs/gpu --scale gpu --model <Qwen2.5-1.5B-Instruct folder>

Task: ``--scale cpu`` two-digit addition and subtraction (``pipelines/arithmetic.py``, 12,195
problems), asked for the result only; ``--scale gpu`` MATH (``../shared/data/math``: 12,000
training problems, MATH500 held out). Reward 8 x correct (math verifier) minus 1e-5 per
character (``rewards.correct_kept``). Every run trains ``--steps`` optimizer steps of
``--prompts-per-step`` prompts x ``--n`` samples on fresh problems in every round: every run of
every variant sees the same training problems (the loader shuffles within each round's shard,
by the run's seed) and the same held-out set (greedy pass@1 on the first ``--eval-size``
problems, disjoint from training).

==========================  ===============  ===============================================
online                      sample every 1   plain GRPO (reference = policy at the round)
staleR                      every R steps    plain GRPO
staleR+humanline k=K        every R steps    humanline: sync every K steps, clip; K in --k-values
offline                     once             plain GRPO on samples of the initial model
D+humanline k=K*            D's data         D: staleR or offline; K*: the best K
D+sync only k=K*            D's data         ``--no-clip`` at K*
D+clip only                 D's data         ``--no-sync``: reference = the policy at the round
==========================  ===============  ===============================================

Phase 1 runs online, staleR and offline on ``--seeds`` seeds and the k sweep on
``--sweep-seeds`` (seed by seed); K* is the k whose runs' own training samples were right most
often over the second half of training (mean over the sweep seeds; training reward, so the
held-out set plays no part); phase 2 runs staleR + humanline at K* on the remaining seeds, then
humanline, sync only and clip only at K* on the offline and staleR data, every seed. Runs of
one seed are paired: same problems, same seed, so differences are taken within a seed
(``pipelines/replication_stats.py``: pooled se, paired differences, the gap-closed fraction
with Fieller and bootstrap intervals).

``--scale`` picks the sizes (each also a flag of its own, which wins):

=====  =====  ============  ==  ==  ========  ====  =======  ====  ======  =====  ==========
scale  steps  prompts/step  n   R   k values  eval  new tok  LoRA  lr      seeds  sweep seeds
=====  =====  ============  ==  ==  ========  ====  =======  ====  ======  =====  ==========
cpu    128    1             8   64  1, 4, 16  1000  16       r 16  1e-4    5      2
gpu    192    16            8   64  16        500   512      none  1e-6    1      1
=====  =====  ============  ==  ==  ========  ====  =======  ====  ======  =====  ==========

cpu: R 64 and lr 1e-4 chosen by the pilot (``pipelines/replication_pilot.py``, docs/replication.md):
within a 64-step round the policy drifts from its samples (PPO clip active on ~8% of tokens,
rising through the round, against 3.6% at R 16); lr 4e-4 made online GRPO collapse. 49 runs: 21 in phase 1 (3 x 5, 3 x 2),
28 in phase 2 (3 + 5 x 5). Budget, from measured per-run costs on 1 torch thread, idle (second
run): training ~330 s, sampling ~60-85 s (stale64, offline) or ~340 s (online: 128 rounds),
LoRA merge ~10 s, greedy evaluation of 1,000 problems ~190 s (36 s of generation per 200
problems at ``--eval-batch`` 200, compute-bound): ~600 s a run, ~720 s online: 44 x 600 +
5 x 720 = ~30,000 s of one core, ~4.2 h with ``--workers 2`` on 2 idle cores (about twice that
under load; docs/replication.md has the measurements).

gpu: the paper's math setting (docs/method.md §8: 8 samples of a prompt, sampling 64x less often, full
fine-tuning at lr 1e-6, k 12-25) sized for one H100 (arithmetic, not measured: no GPU ran it).
A step is 128 completions of ~350 tokens after a ~120-token prompt: ~60k tokens; policy
forward + backward and the reference forward of Qwen2.5-1.5B are ~8 x 1.5e9 FLOPs a token,
~7e14 a step, ~1.8 s at 400 TFLOP/s (40% of bf16 peak): 192 steps ~6 min. Sampling with the
vLLM backend: 192 x 128 = 24,576 completions, ~8.6M new tokens, ~7 min at ~20k tokens/s
batched for the stale and offline runs; online adds a weight sync and a small batch per step
(192 rounds x ~8 s: ~26 min). MATH500 greedy (500 x <= 512 tokens): ~1 min. The decisive arms
(online, stale64, stale64 + humanline k 16, offline, offline + humanline k 16; 1 seed, the
first five runs) take ~32 + 4 x 14 = ~90 min; ``--max-minutes 100`` stops there, the four
ablations add ~1 h. 192 x 16 = 3,072 training problems of MATH's 12,000.

Reports, in RUN_DIR: ``results.json`` / ``results.md`` (a status line with the runs finished
of the design, plain statements of what they show, per variant the held-out accuracy with its
pooled se and per-seed values, paired differences, the gap closed with its intervals,
training-sample accuracy, unclamped / PPO-clip fractions and KL, seconds), ``outputs/`` (each
evaluation's per-problem greedy outputs, ``<variant>-seed<N>.jsonl.gz``), ``rewards.png``,
``fractions.png``, ``inspect_<dataset>.txt``. ``--publish DIR`` copies them to DIR after each
run and ``--docs-page PAGE`` writes results.md into PAGE between its results markers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from humanline_data.store import open_version  # noqa: E402
from humanline_train.checkpoint import prune  # noqa: E402
from humanline_train.plot import read_metrics  # noqa: E402
from pipelines import arithmetic, replication_stats as stats  # noqa: E402
from pipelines.common import (  # noqa: E402
    SHARED_DATA, Steps, add_common_flags, cli, fmt, mean_se, round_rewards, start, write_results,
)
from pipelines.math_reasoning import REWARDS, add_grpo_flags, grpo_settings, import_math  # noqa: E402
from pipelines.rewards import CORRECT_WEIGHT  # noqa: E402

GRPO_EPS = 0.2
GRPO_BETA_KL = 1e-4
SCALES = {
    "cpu": dict(steps=128, prompts_per_step=1, n=8, stale_every=64, k_values="1,4,16", eval_size=1000,
                max_new_tokens=16, max_length=96, lora_r=16, lr=1e-4, seeds=5, sweep_seeds=2, task="arithmetic"),
    "gpu": dict(steps=192, prompts_per_step=16, n=8, stale_every=64, k_values="16", eval_size=500, max_new_tokens=512,
                max_length=1024, lora_r=0, lr=1e-6, seeds=1, sweep_seeds=1, task="math"),
}
DRY_SIZES = dict(steps=4, prompts_per_step=1, n=2, stale_every=2, k_values="2", eval_size=5, max_new_tokens=8,
                 max_length=256, seeds=1, sweep_seeds=1)
MATH_FILES = {"train": SHARED_DATA / "math" / "train.jsonl", "test": SHARED_DATA / "math" / "math500_test.jsonl"}
SHOWN_AT = 2.0  # a paired difference "shows" when it exceeds this many standard errors
DOCS_BEGIN, DOCS_END = "<!-- cpu_replication results: BEGIN (written by the command) -->", "<!-- cpu_replication results: END -->"
SECOND_HALF = 0.5  # K* is chosen on the training samples of steps >= SECOND_HALF * steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    add_grpo_flags(p, None, None, None, None, None, GRPO_EPS, GRPO_BETA_KL)
    p.add_argument("--scale", choices=list(SCALES), default="cpu", help="Sizes of the experiment (table above).")
    p.add_argument("--task", choices=["arithmetic", "math"],
                   help="arithmetic (pipelines/arithmetic.py) or math (MATH train, MATH500 held out); default: the scale's.")
    p.add_argument("--steps", type=int, help="Optimizer steps per run.")
    p.add_argument("--prompts-per-step", type=int, help="Prompts per optimizer step (x --n completions).")
    p.add_argument("--stale-every", type=int, help="R: steps between samplings of the stale variants.")
    p.add_argument("--k-values", help="Humanline sync intervals of the k sweep, comma-separated.")
    p.add_argument("--lora-r", type=int, help="LoRA rank (0: full fine-tuning).")
    p.add_argument("--eval-size", type=int, help="Held-out problems (greedy pass@1).")
    p.add_argument("--seeds", type=int, help="Training seeds 0..N-1 of every variant that carries a claim.")
    p.add_argument("--sweep-seeds", type=int, help="Seeds of the k sweep's other k values (at most --seeds).")
    p.add_argument("--publish", type=Path, help="Also copy the report (and per-problem outputs) here after each run.")
    p.add_argument("--docs-page", type=Path,
                   help="Also write results.md into this page, between its two cpu_replication results markers.")
    p.add_argument("--eval-batch", type=int, default=200,
                   help="Held-out prompts generated at once (greedy evaluation; 200: ~1.3x faster than 16 on 1 thread).")
    p.add_argument("--workers", type=int, default=1,
                   help="Runs trained at once, each with cores/N torch threads (2 on 2 cores: ~1.3x the runs per hour "
                        "of one run on both cores; sequential order and results are unchanged).")
    p.add_argument("--max-minutes", type=float,
                   help="Start no new variant after this many minutes; the report says what is left, and the same "
                        "command (same --out) resumes, reusing every finished run.")
    args = p.parse_args(argv)
    sizes = {**SCALES[args.scale], **(DRY_SIZES if args.dry_run else {})}
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.k_values = [int(k) for k in str(args.k_values).split(",")]
    except ValueError:
        p.error(f"--k-values: expected comma-separated integers, got {args.k_values!r}")
    if args.steps % args.stale_every or args.steps // args.stale_every < 2:
        p.error(f"--stale-every {args.stale_every} must divide --steps {args.steps} into at least 2 rounds")
    if min(args.k_values) < 1 or min(args.sweep_seeds, args.eval_size, args.prompts_per_step, args.n, args.workers) < 1:
        p.error("--k-values, --sweep-seeds, --eval-size, --prompts-per-step, --n and --workers must be >= 1")
    if args.sweep_seeds > args.seeds:
        p.error(f"--sweep-seeds {args.sweep_seeds} must be at most --seeds {args.seeds}")
    args.sync_k = None  # per variant (grpo_settings' humanline default is replaced below)
    args.train_size = args.prompts_per_step * args.steps  # every round takes fresh problems
    available = task_sizes(args.task)
    if args.eval_size > available["test"] or args.train_size > available["train"]:
        p.error(f"--scale {args.scale}: {args.eval_size} held-out + {args.train_size} training problems "
                f"({args.steps} steps x {args.prompts_per_step}) do not fit the {args.task} task "
                f"({available['test']} held-out, {available['train']} training problems)")
    args.scorer = f"python:{REWARDS}:{'dry_run_reward' if args.dry_run else 'correct_kept'}"
    return args


def task_sizes(task: str) -> dict[str, int]:
    """Problems the task holds: ``train`` (for training) and ``test`` (held out)."""
    if task == "math":
        return {name: sum(1 for _ in open(path)) for name, path in MATH_FILES.items()}
    total = len(arithmetic.problems())  # one pool, split disjointly: either side may take all but the other's
    return {"train": total, "test": total}


def phase_one(args) -> dict[str, dict]:
    """name -> variant (``every``: steps between samplings; ``humanline``: trainer overrides)."""
    r, seeds = args.stale_every, args.seeds
    plain = {"sync": False, "clip": False}
    variants = {"online": {"every": 1, "humanline": plain, "seeds": seeds},
                f"stale{r}": {"every": r, "humanline": plain, "seeds": seeds}}
    for k in args.k_values:
        variants[f"stale{r}+humanline k={k}"] = {"every": r, "humanline": {"sync_k": k}, "k": k, "plain": f"stale{r}",
                                                 "seeds": args.sweep_seeds}
    variants["offline"] = {"every": args.steps, "humanline": plain, "seeds": seeds}
    return variants


def phase_two(args, best_k: int) -> dict[str, dict]:
    """Full humanline at ``best_k`` on the staleR data (all ``--seeds``) and the Fig. 5
    ablations, sync only (no clip) and clip only (no sync), on the staleR and on the offline data,
    with full humanline at ``best_k`` on the offline data (``plain``: the same data without
    humanline)."""
    arms = {data: {"every": every, "plain": data, "seeds": args.seeds}
            for data, every in ((f"stale{args.stale_every}", args.stale_every), ("offline", args.steps))}
    out = {f"{data}+humanline k={best_k}": {**arm, "humanline": {"sync_k": best_k}, "k": best_k} for data, arm in arms.items()}
    for data, arm in arms.items():  # after both full-humanline arms, so that a time budget cuts the ablations first
        out[f"{data}+sync only k={best_k}"] = {**arm, "humanline": {"sync_k": best_k, "clip": False}, "k": best_k}
        out[f"{data}+clip only"] = {**arm, "humanline": {"sync": False}}
    return out


def design_runs(args) -> int:
    """Runs of the whole design: phase one's (the sweep at ``--sweep-seeds``) plus phase two's,
    less the sweep seeds that phase two's staleR humanline at the best k reuses."""
    sweep_extra = args.seeds - args.sweep_seeds
    return sum(v["seeds"] for v in phase_one(args).values()) + sweep_extra + 5 * args.seeds


def train_settings(args, prompts: str, variant: dict, seed: int) -> dict:
    """``humanline-train`` settings of one run of ``variant``."""
    settings = grpo_settings(args, prompts, args.scorer, variant["every"], False, seed)
    settings.update({"sync": True, "clip": True, "log_eps_p": args.log_eps_p, "log_eps_r": args.log_eps_r,
                     "lora_r": args.lora_r, "layout": "packed", **variant["humanline"]})  # packed: each prompt once
    if not (settings["sync"] or settings["clip"]):
        for key in ("log_eps_p", "log_eps_r"):
            del settings[key]
    return settings


def best_k(args, records: dict[str, list[dict]]) -> int:
    """The k of the sweep whose runs' training samples were right most often over the second half."""
    scores = {variant["k"]: mean_se([r["late_sample_accuracy"] for r in records[name][:args.sweep_seeds]])[0]
              for name, variant in phase_one(args).items() if "k" in variant}  # the stale k sweep
    return max(scores, key=lambda k: (scores[k], -k))


def run_variant(steps: Steps, args, data: dict, name: str, variant: dict, seed: int, eval_flags: list) -> dict:
    """Train and evaluate one seed of ``variant``; its record (also ``runs/<tag>/record.json``: a
    rerun of the same command reuses it instead of training again)."""
    tag = f"{slug(name)}-seed{seed}"
    saved = record_path(args, name, seed)
    if saved.is_file():
        return json.loads(saved.read_text())
    run_dir = Path(steps.train(f"train-{tag}", train_settings(args, data["train"], variant, seed),
                               args.out / "runs" / tag, keep_checkpoints=args.keep_checkpoints))
    result = steps.evaluate(tag, steps.final_model(tag, run_dir), data["test"], "math", *eval_flags)
    if not args.keep_checkpoints:
        prune(run_dir, keep_last=1)
    rounds = round_rewards(run_dir, CORRECT_WEIGHT / 2)
    metrics = read_metrics(run_dir)  # metric -> (steps, values)
    late = [r["correct_frac"] for r in rounds if r["step"] >= SECOND_HALF * args.steps] or [rounds[-1]["correct_frac"]]
    train_seconds = sum(metrics["train/perf/seconds_step"][1])
    if seed == 0 and "plain" not in variant:  # humanline variants: round 0 as their plain counterpart's (same model, problems)
        steps.inspect(f"{slug(name)}_seed0_round0", rounds[0]["shard"])
    record = {
        "run_dir": str(run_dir), "accuracy": result["value"], "accuracy_se": result["se"], "eval": result,
        "correct": save_outputs(args, tag, result, data["test"]),
        "rounds": [{k: r[k] for k in ("round", "step", "end_step", "shard", "completions", "correct_frac")} for r in rounds],
        "completions_generated": sum(r["completions"] for r in rounds),
        "late_sample_accuracy": sum(late) / len(late),
        "unclamped_frac": metrics["train/humanline/unclamped_frac"][1],
        "clip_frac": metrics["train/clip_ratio/region_mean"][1],
        "kl": metrics["train/kl"][1],  # k3 KL(policy || reference); plain runs: the reference is the sampler
        "train_seconds": round(train_seconds, 1),
        "sampling_seconds": round(steps.seconds[f"train-{tag}"] - train_seconds, 1),  # rounds, start-up, saves
        "eval_seconds": steps.seconds[f"eval-{tag}"], "export_seconds": steps.seconds.get(f"export-{tag}", 0.0),
    }
    saved.write_text(json.dumps(record, indent=1) + "\n")
    return record


def save_outputs(args, tag: str, result: dict, test_version: str) -> str:
    """Write the evaluation's per-problem greedy outputs to ``RUN_DIR/outputs/<tag>.jsonl.gz``, one
    row per held-out problem in order (``problem``: its index, ``completion``: None where the
    generate stage left it out, ``correct`` 0/1; problems and answers: the test prompts version,
    or ``task/test.jsonl``); return the correctness column as a string of 0/1."""
    order = open_version(test_version).read(columns=["prompt_id"]).column("prompt_id").to_pylist()
    scored = open_version(result["versions"]["scored"]).read(columns=["prompt_id", "completion", "reward_components"])
    found = {r["prompt_id"]: r for r in scored.to_pylist()}
    outputs = [{"problem": i, "completion": found[p]["completion"] if p in found else None,
                "correct": int(p in found and json.loads(found[p]["reward_components"])["correct"] == 1)}
               for i, p in enumerate(order)]  # left out: wrong, as the evaluation counts it
    path = args.out / "outputs" / f"{tag}.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as out:  # mtime 0: the same outputs give the same bytes
        out.write("".join(json.dumps(r) + "\n" for r in outputs).encode())
    return "".join(str(r["correct"]) for r in outputs)


def record_path(args, name: str, seed: int) -> Path:
    """Where :func:`run_variant` keeps the record of one finished run."""
    return args.out / "runs" / f"{slug(name)}-seed{seed}" / "record.json"


def slug(name: str) -> str:
    return name.replace("+", "-").replace(" ", "-").replace("=", "")


def summarize(args, variants: dict[str, dict], records: dict[str, list[dict]]) -> tuple[dict[str, dict], dict]:
    """Per variant: held-out accuracy (mean; se over its own seeds and the pooled se), drift and
    cost means; for each variant with a ``plain`` counterpart, its paired per-seed difference from
    it and the gap closed. Also the pooled seed-to-seed sd (over every variant with 2+ seeds)."""
    sd, df = stats.pooled_sd([[r["accuracy"] for r in runs] for runs in records.values()])
    pooled = {"sd": sd, "df": df}
    out = {}
    for name, runs in records.items():
        variant = variants[name]
        settings = train_settings(args, "", variant, 0)
        accuracy, se = mean_se([r["accuracy"] for r in runs])
        out[name] = {
            "sample_every": variant["every"], "sync": settings["sync"], "clip": settings["clip"],
            "sync_k": settings.get("sync_k") if settings["sync"] else None, "plain": variant.get("plain"),
            "accuracy": accuracy, "accuracy_se": se, "accuracy_pooled_se": sd / math.sqrt(len(runs)) if sd else None,
            "per_seed_accuracy": [r["accuracy"] for r in runs],
            "late_sample_accuracy": mean_se([r["late_sample_accuracy"] for r in runs])[0],
            **{key: mean_of([v for r in runs for v in r.get(key, [])]) for key in ("unclamped_frac", "clip_frac", "kl")},
            "completions_generated": runs[0]["completions_generated"],
            **{key: mean_se([r.get(key, 0.0) for r in runs])[0]
               for key in ("train_seconds", "sampling_seconds", "eval_seconds", "export_seconds")},
        }
    by_seed = {name: {i: r["accuracy"] for i, r in enumerate(runs)} for name, runs in records.items()}
    for name, s in out.items():
        s["vs_online"] = stats.paired(by_seed[name], by_seed["online"]) if "online" in by_seed and name != "online" else None
        s["vs_plain"] = s["gap"] = s["gap_closed"] = None
        if not (s["plain"] in out and "online" in out):
            continue
        s["vs_plain"] = stats.paired(by_seed[name], by_seed[s["plain"]])
        s["gap"] = stats.paired(by_seed["online"], by_seed[s["plain"]])
        s["gap_closed"] = gap_closed(records[name], records[s["plain"]], records["online"])
    return out, pooled


def gap_closed(variant: list[dict], plain: list[dict], online: list[dict]) -> dict | None:
    """The fraction of the plain -> online gap a variant closes, over the seeds all three have:
    mean(variant - plain) / mean(online - plain) of per-seed held-out accuracies, with its 95%
    Fieller interval (seed spread of numerator and denominator and their covariance) and a
    95% paired bootstrap interval over seeds and problems. None when the gap is 0."""
    n = min(len(variant), len(plain), len(online))
    acc = [[r["accuracy"] for r in runs[:n]] for runs in (variant, plain, online)]
    num = [v - p for v, p in zip(acc[0], acc[1])]
    den = [o - p for o, p in zip(acc[2], acc[1])]
    if sum(den) == 0:
        return None
    correct = [np.array([[int(c) for c in r["correct"]] for r in runs[:n]]) for runs in (variant, plain, online)]
    return {"value": sum(num) / sum(den), "seeds": n, "fieller": stats.fieller(num, den),
            "bootstrap": stats.bootstrap_fraction(*correct)}

def mean_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def windows(args, runs: list[dict]) -> list[float]:
    """Training-sample accuracy per window of R steps, mean over seeds (rounds weighted by completions)."""
    r = args.stale_every
    out = []
    for w in range(args.steps // r):
        right = total = 0.0
        for run in runs:
            for rnd in run["rounds"]:
                if w * r <= rnd["step"] < (w + 1) * r or (rnd["step"] < w * r < rnd["end_step"]):
                    right += rnd["correct_frac"] * rnd["completions"]
                    total += rnd["completions"]
        out.append(right / total if total else float("nan"))
    return out


def plot(args, records: dict[str, list[dict]], run: Path) -> None:
    """rewards.png (training-sample accuracy per R-step window) and fractions.png (unclamped and
    PPO-clip fractions per R-step window), each a mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = args.stale_every
    x = [(w + 0.5) * r for w in range(args.steps // r)]

    def per_window(series: list[list]) -> list[float]:
        return [mean_of([v for s in series for v in s[w * r:(w + 1) * r]]) or float("nan") for w in range(len(x))]

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, runs) in enumerate(records.items()):
        ax.plot(x, windows(args, runs), marker="o", ms=3, ls="-" if i < 7 else "--", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training samples right (per {r}-step window)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "rewards.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax in zip(("unclamped_frac", "clip_frac"), axes):
        for i, (name, runs) in enumerate(records.items()):
            ax.plot(x, per_window([run_[key] for run_ in runs]), ls="-" if i < 7 else "--", label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " ") + f" (per {r}-step window)")
        ax.grid(alpha=0.3)
    axes[1].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "fractions.png", dpi=110)
    plt.close(fig)


def prepare(args) -> tuple[Steps, dict, list, dict]:
    """The run's :class:`Steps`, its imported ``data`` (train / test prompts versions), the
    evaluation flags and the initial model's evaluation."""
    run = args.out
    steps = start(args)
    if args.workers > 1:  # the runs' processes share the cores instead of each taking all of them
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.workers)))
    if args.task == "math":
        args.train_file, args.test_file = MATH_FILES["train"], MATH_FILES["test"]
    imported = run / "data" / "imported.json"  # a resumed run trains on the versions its runs' settings name
    sizes = {"task": args.task, "train_size": args.train_size, "eval_size": args.eval_size}
    known = json.loads(imported.read_text()) if imported.is_file() else {}
    if known.get("sizes") == sizes:
        data = known["data"]
    else:
        if args.task == "math":
            data = import_math(steps, args, run / "data")
        else:
            test, train = arithmetic.splits(args.eval_size, args.train_size)
            data = {name: steps.data(f"import-{name}", "import", arithmetic.write_jsonl(run / "task" / f"{name}.jsonl", rows),
                                     "--format", "prompts", "--split", name, "--out", run / "data" / name)
                    for name, rows in (("train", train), ("test", test))}
            for name, version in data.items():
                steps.inspect(name, version)
        imported.write_text(json.dumps({"sizes": sizes, "data": data}, indent=1) + "\n")
    eval_flags = ["--n", 1, "--temperature", 0, "--max-new-tokens", args.max_new_tokens, "--batch-size", args.eval_batch]
    saved = run / "evals" / "initial.json"  # a resumed run reuses it, as it reuses every finished run
    before = json.loads(saved.read_text()) if saved.is_file() else {}
    if before.get("count") != args.eval_size:
        before = steps.evaluate("initial", args.model, data["test"], "math", *eval_flags)
    before["correct"] = save_outputs(args, "initial", before, data["test"])
    return steps, data, eval_flags, before


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = args.out
    steps, data, eval_flags, before = prepare(args)

    variants = phase_one(args)
    records: dict[str, list[dict]] = {}
    k_star = None
    for phase in (1, 2):
        if phase == 2:
            k_star = best_k(args, records)
            variants.update(phase_two(args, k_star))  # staleR + humanline at k*: now all --seeds
        todo = [(seed, name) for seed in range(args.seeds) for name, v in variants.items()
                if len(records.get(name, [])) <= seed < v["seeds"]]
        run_all(args, steps, todo, lambda seed, name: run_variant(steps, args, data, name, variants[name], seed, eval_flags),
                records, lambda: report(args, steps, before, data, variants, records, k_star))
        if missing(variants, records):
            break  # out of time
    if records:
        report(args, steps, before, data, variants, records, k_star)
    print(run)
    return run


def run_all(args, steps: Steps, todo: list[tuple[int, str]], run, records: dict[str, list[dict]], on_record) -> None:
    """``run(seed, name)`` for each of ``todo`` in its order (seed by seed: a budget cut leaves every
    variant with as many seeds as possible), ``--workers`` at a time; a run starts only within
    ``--max-minutes`` unless its record is already saved. ``records[name]`` gets each variant's
    records in seed order as soon as every earlier seed is in; ``on_record()`` after each run."""
    lock = threading.Lock()
    queue = iter(todo)
    finished: dict[tuple[int, str], dict] = {}

    def worker() -> None:
        while True:
            with lock:
                item = next(queue, None)
                if item is None or (out_of_time(args, steps) and not record_path(args, item[1], item[0]).is_file()):
                    return
            record = run(*item)
            with lock:
                finished[item] = record
                for name in dict.fromkeys(n for _, n in todo):
                    while (len(records.get(name, [])), name) in finished:
                        records.setdefault(name, []).append(finished.pop((len(records.get(name, [])), name)))
                on_record()

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for done in [pool.submit(worker) for _ in range(args.workers)]:
            done.result()  # a failed run's error surfaces here


def out_of_time(args, steps: Steps) -> bool:
    """``--max-minutes`` have passed: start nothing new."""
    return args.max_minutes is not None and steps.elapsed() > 60 * args.max_minutes


def missing(variants: dict, records: dict) -> list[str]:
    """The variants (with the seeds they lack) that have not finished all their seeds."""
    return [name if name not in records else f"{name} (seeds {len(records[name])}..{v['seeds'] - 1})"
            for name, v in variants.items() if len(records.get(name, [])) < v["seeds"]]


def pm(d: dict | None, digits: int = 3) -> str:
    """``mean ± se`` of a :func:`stats.paired` result (``-`` for None)."""
    return fmt(d["mean"], d["se"], digits) if d else "-"


def interval(ci: list | None, digits: int = 2) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "unbounded"


def comparisons_table(summary: dict) -> str:
    """Markdown table of every variant with a plain counterpart: per-seed paired differences,
    the gap and the gap closed with its two intervals."""
    lines = ["| variant | plain (same data) | seeds | variant - plain per seed | variant - plain (mean ± se, 95% t) "
             "| online - plain (gap, mean ± se) | gap closed | 95% Fieller (seeds) | 95% bootstrap (seeds x problems) |",
             "|" + "---|" * 9]
    for name, s in summary.items():
        d, g, c = s["vs_plain"], s["gap"], s["gap_closed"]
        if not d:
            continue
        lines.append(" | ".join(["", name, s["plain"], str(len(d["seeds"])), " ".join(f"{x:+.3f}" for x in d["per_seed"]),
                                 f"{pm(d)} {interval(d['ci95'], 3) if d['ci95'] else ''}", pm(g),
                                 fmt(c["value"], None, 2) if c else "- (no gap)",
                                 interval(c["fieller"]["ci95"]) if c else "-",
                                 interval(c["bootstrap"]["ci95"]) if c else "-", ""]).strip())
    return "\n".join(lines)


def verdicts(summary: dict) -> list[str]:
    """Plain statements of what the finished runs show, each from a paired difference and its se
    (a difference "shows" when it exceeds ``SHOWN_AT`` se; one seed shows nothing)."""
    def shown(d: dict | None) -> str:
        if not d or d["se"] is None:
            return "not measurable yet (fewer than 2 seeds)"
        word = "shows" if abs(d["mean"]) > SHOWN_AT * d["se"] else "does not show"
        return f"{fmt(d['mean'], d['se'])} over {len(d['seeds'])} seeds: {word} a difference (> {SHOWN_AT:g} se)"

    lines = []
    for name, s in summary.items():
        if name != "online" and not s["plain"]:
            lines.append(f"Does {name} cost accuracy? online - {name} = {shown(negated(s['vs_online']))}.")
    for name, s in summary.items():
        if not s["plain"]:
            continue
        line = f"Does {name} beat {s['plain']}? {name} - {s['plain']} = {shown(s['vs_plain'])}"
        c = s["gap_closed"]
        if c and s["gap"]["se"] is not None and s["gap"]["mean"] > SHOWN_AT * s["gap"]["se"]:
            ci = c["bootstrap"]["ci95"]
            where = ("" if ci is None else "; the interval holds 1 (all of the gap)" if ci[0] <= 1 <= ci[1] else
                     "; the interval excludes 1")
            where += "" if ci is None else ", holds 0 (none of it)" if ci[0] <= 0 <= ci[1] else ", excludes 0"
            line += f"; it closes {c['value']:.2f} of the gap (bootstrap 95% {interval(ci)}{where})"
        lines.append(line + ".")
    return lines


def negated(d: dict | None) -> dict | None:
    """online - X from X - online (``stats.paired`` of the other order)."""
    if not d:
        return None
    ci = [-d["ci95"][1], -d["ci95"][0]] if d["ci95"] else None
    return {**d, "per_seed": [-x for x in d["per_seed"]], "mean": -d["mean"], "ci95": ci}


def report(args, steps: Steps, before: dict, data: dict, variants: dict, records: dict, k_star: int | None) -> None:
    """results.json / results.md and the PNGs for the variants finished so far (in ``variants``' order);
    with ``--publish``, copies of them (and the per-problem outputs) in that folder."""
    run = args.out
    records = {name: records[name] for name in variants if name in records}
    summary, pooled = summarize(args, variants, records)
    plot(args, records, run)
    left = missing(variants, records) + ([] if k_star else ["phase two (humanline at the best k on all seeds, sync only, "
                                                            "clip only; staleR and offline)"])
    finished = sum(len(runs) for runs in records.values())
    status = (f"Status: {finished} of the design's {design_runs(args)} runs finished"
              + (" (all)." if not left else f"; not run yet (the same command resumes): {'; '.join(left)}."))
    results = {
        "recipe": "cpu_replication", "dry_run": args.dry_run, "model": args.model, "scorer": args.scorer, "status": status,
        "runs_finished": finished, "runs_in_design": design_runs(args),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "task_seed": arithmetic.TASK_SEED, "data": data,
        "initial": {"accuracy": before["value"], "accuracy_se": before["se"], "eval": before},
        "best_k": k_star, "pooled_seed_sd": pooled, "variants": summary, "seeds": records, "not_run_yet": left,
        "training_sample_accuracy_windows": {name: windows(args, runs) for name, runs in records.items()},
        "step_seconds": steps.seconds, "wall_seconds": steps.elapsed(),
    }
    rows = [["initial model", "-", "-", "-", "-", fmt(before["value"], before["se"]), "-", "-", "-", "-", "-", "-", "-", "-",
             "-", f"{steps.seconds.get('eval-initial', 0):.0f}"]]
    for name, s in summary.items():
        rows.append([name, s["sample_every"], s["sync_k"] or "-", "yes" if s["clip"] else "no", len(s["per_seed_accuracy"]),
                     fmt(s["accuracy"], s["accuracy_pooled_se"]), " ".join(f"{a:.3f}" for a in s["per_seed_accuracy"]),
                     pm(s["vs_online"]), fmt(s["late_sample_accuracy"]), fmt(s["unclamped_frac"]), fmt(s["clip_frac"]),
                     fmt(s["kl"], None, 4), f"{s['sampling_seconds']:.0f}", f"{s['train_seconds']:.0f}",
                     f"{s['export_seconds']:.0f}", f"{s['eval_seconds']:.0f}"])
    sd = pooled["sd"]
    write_results(run, results, "CPU replication: GRPO sampling interval, k sweep and ablations (two-digit arithmetic)",
                  ["variant", "sample every (steps)", "sync k", "clip", "seeds", "held-out accuracy (mean ± pooled se)",
                   "per seed", "variant - online (paired, mean ± se)", "training samples right (2nd half)",
                   "unclamped frac", "PPO clip frac", "KL(policy||ref) k3", "sampling s / run", "train s / run",
                   "merge s / run", "eval s / run"], rows,
                  notes=f"**{status}**\n\n" + "".join(f"- {line}\n" for line in verdicts(summary)) + "\n"
                        f"Model `{args.model}` (LoRA r {args.lora_r}, lr {args.lr:g}); {before['count']} held-out problems, "
                        f"greedy; {args.steps} steps of {args.prompts_per_step} x {args.n} completions, "
                        f"{args.steps * args.prompts_per_step * args.n} per run; k sweep on {args.sweep_seeds} seeds, "
                        f"best k (training reward): {k_star}.\n\n"
                        f"Pooled se: the seed-to-seed sd pooled over every variant with 2+ seeds "
                        f"(sqrt(sum of squared deviations from each variant's mean / sum of (n - 1)) = "
                        f"{fmt(sd)} on {pooled['df']} df) / sqrt(seeds of the variant). Paired differences: per seed "
                        f"(same training problems, same seed), mean ± se of the per-seed differences.\n\n"
                        "## Against the same data without humanline\n\n" + comparisons_table(summary) + "\n\n"
                        "Gap closed: mean(variant - plain) / mean(online - plain) over the seeds the three share; "
                        "Fieller: the ratio's 95% interval from the per-seed differences (their spread and covariance, "
                        "t quantile); bootstrap: 95% percentile interval of the ratio over "
                        f"{stats.BOOTSTRAP_DRAWS} draws resampling seeds and held-out problems (jointly for the three "
                        "variants). The ratio means something only where the gap is several se wide.\n\n"
                        "Per-problem greedy outputs: outputs/<variant>-seed<N>.jsonl.gz (problems in task/test.jsonl). "
                        "Curves: rewards.png, fractions.png." + ("\n\nDRY RUN: tiny random model, numbers are meaningless."
                                                                 if args.dry_run else ""))
    if args.publish:
        publish(run, args.publish)
    if args.docs_page:
        fill_docs(args.docs_page, (run / "results.md").read_text())


def fill_docs(page: Path, results_md: str) -> None:
    """Replace the text between ``DOCS_BEGIN`` and ``DOCS_END`` in ``page`` by ``results_md``
    (its headings two levels down); a page without both markers is left as it is."""
    text = page.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return
    body = "\n".join("##" + line if line.startswith("#") else line for line in results_md.strip().splitlines())
    head, rest = text.split(DOCS_BEGIN, 1)
    page.write_text(f"{head}{DOCS_BEGIN}\n{body}\n{DOCS_END}{rest.split(DOCS_END, 1)[1]}")


def publish(run: Path, folder: Path) -> None:
    """Copy the report (results, curves, commands, diagnostics, per-problem outputs) into ``folder``."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for path in [*run.glob("results.*"), *run.glob("*.png"), *run.glob("inspect_*.txt"), run / "commands.sh"]:
        shutil.copy(path, folder / path.name)
    if (run / "outputs").is_dir():
        shutil.copytree(run / "outputs", folder / "outputs", dirs_exist_ok=True)


if __name__ == "__main__":
    cli(main)
