"""The paper's sampling-interval experiment at CPU scale (SmolLM2-135M-Instruct, 2 cores):
does humanline GRPO on data sampled R times less often (stale) close the gap to online GRPO,
over many rounds, and how do the sync interval k and the two halves of humanline matter?

    python pipelines/cpu_replication.py --out runs/cpu-replication        # CPU scale, see README for its time
    python pipelines/cpu_replication.py --out runs/cpu-dry --dry-run      # tiny random model, ~3 min
    python pipelines/cpu_replication.py --out runs/gpu --scale gpu --model <Qwen2.5-1.5B-Instruct folder>

Task (``pipelines/arithmetic.py``): two-digit addition and subtraction, asked for the result
only; reward 8 x correct (math verifier) minus 1e-5 per character (``rewards.correct_kept``).
Every variant trains ``--steps`` optimizer steps of ``--prompts-per-step`` prompts x ``--n``
samples, on fresh problems in every round, so all see the same number of completions and the
same held-out set (greedy pass@1 on ``--eval-size`` problems disjoint from training):

=========================  ===============  ============================================
online                     sample every 1   plain GRPO (reference = policy at the round)
staleR                     every R steps    plain GRPO
staleR+humanline k=K       every R steps    humanline: sync every K steps, clip, for K in --k-values
offline                    once             plain GRPO on samples of the initial model
staleR+sync only k=K*      every R steps    ``--no-clip`` at the best K (K*)
staleR+clip only           every R steps    ``--no-sync``: reference = the policy at the round
offline+humanline k=K*     once             humanline at K* on the offline samples
=========================  ===============  ============================================

Phase 1 runs online, staleR, the k sweep and offline, seed by seed; K* is then the k whose
runs' own training samples were right most often over the second half of training (mean over
seeds; training reward, so the held-out set plays no part in the choice); phase 2 runs the two
ablations and offline + humanline at K*. ``--seeds`` training seeds 0..N-1 per variant (the
task is fixed). Each humanline variant's "gap closed" is measured between its plain
counterpart (staleR or offline: same data, no humanline) and online.

``--scale`` picks the sizes (each also a flag of its own, which wins):

=====  =====  ============  ==  ==  ==========  ====  ===========  =====  ======  ======
scale  steps  prompts/step  n   R   k values    eval  new tokens   LoRA   lr      seeds
=====  =====  ============  ==  ==  ==========  ====  ===========  =====  ======  ======
cpu    128    1             8   16  1, 4, 16    200   16           r 16   1e-4    3
gpu    1600   32            8   64  1, 4, 16    500   1024         none   1e-6    3
=====  =====  ============  ==  ==  ==========  ====  ===========  =====  ======  ======

The gpu scale is the paper's math setting (SPEC §3: 256 completions per step, sampling 64x less
often; k 12-25 there) on this task; give it ``--model``. CPU deviations, sized from measured
costs (README): LoRA (r 16, alpha 32, all linear layers) instead of full fine-tuning (a step of
8 completions: ~2 s vs ~3.5 s), 16 new tokens, ``--max-length 96``.

Reports, in RUN_DIR: ``results.json`` / ``results.md`` (held-out accuracy mean +/- standard
error over seeds; the fraction of the plain -> online gap each humanline variant closes, with
its delta-method standard error; training-sample accuracy; unclamped and PPO-clip fractions;
sampling and training seconds), ``rewards.png`` (training-sample accuracy per R-step window,
mean over seeds), ``fractions.png`` (unclamped and clip fractions over training),
``inspect_<dataset>.txt`` (the task's splits and each variant's first shard, seed 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from humanline_train.checkpoint import prune  # noqa: E402
from humanline_train.plot import read_metrics  # noqa: E402
from pipelines import arithmetic  # noqa: E402
from pipelines.common import (  # noqa: E402
    Steps, add_common_flags, cli, fmt, mean_se, round_rewards, start, write_results,
)
from pipelines.math_reasoning import REWARDS, add_grpo_flags, grpo_settings  # noqa: E402
from pipelines.rewards import CORRECT_WEIGHT  # noqa: E402

GRPO_EPS = 0.2
GRPO_BETA_KL = 1e-4
SCALES = {
    "cpu": dict(steps=128, prompts_per_step=1, n=8, stale_every=16, k_values="1,4,16", eval_size=200,
                max_new_tokens=16, max_length=96, lora_r=16, lr=1e-4, seeds=3),
    "gpu": dict(steps=1600, prompts_per_step=32, n=8, stale_every=64, k_values="1,4,16", eval_size=500,
                max_new_tokens=1024, max_length=1536, lora_r=0, lr=1e-6, seeds=3),
}
DRY_SIZES = dict(steps=4, n=2, stale_every=2, k_values="1,2", eval_size=5, max_new_tokens=8, max_length=64, seeds=1)
SECOND_HALF = 0.5  # K* is chosen on the training samples of steps >= SECOND_HALF * steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    add_grpo_flags(p, None, None, None, None, None, GRPO_EPS, GRPO_BETA_KL)
    p.add_argument("--scale", choices=list(SCALES), default="cpu", help="Sizes of the experiment (table above).")
    p.add_argument("--steps", type=int, help="Optimizer steps per run.")
    p.add_argument("--prompts-per-step", type=int, help="Prompts per optimizer step (x --n completions).")
    p.add_argument("--stale-every", type=int, help="R: steps between samplings of the stale variants.")
    p.add_argument("--k-values", help="Humanline sync intervals of the k sweep, comma-separated.")
    p.add_argument("--lora-r", type=int, help="LoRA rank (0: full fine-tuning).")
    p.add_argument("--eval-size", type=int, help="Held-out problems (greedy pass@1).")
    p.add_argument("--seeds", type=int, help="Training seeds 0..N-1 per variant.")
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
    if min(args.k_values) < 1 or min(args.seeds, args.eval_size, args.prompts_per_step, args.n, args.workers) < 1:
        p.error("--k-values, --seeds, --eval-size, --prompts-per-step, --n and --workers must be >= 1")
    args.sync_k = None  # per variant (grpo_settings' humanline default is replaced below)
    args.train_size = args.prompts_per_step * args.steps  # every round takes fresh problems
    args.scorer = f"python:{REWARDS}:{'dry_run_reward' if args.dry_run else 'correct_kept'}"
    return args


def phase_one(args) -> dict[str, dict]:
    """name -> variant (``every``: steps between samplings; ``humanline``: trainer overrides)."""
    r = args.stale_every
    plain = {"sync": False, "clip": False}
    variants = {"online": {"every": 1, "humanline": plain}, f"stale{r}": {"every": r, "humanline": plain}}
    for k in args.k_values:
        variants[f"stale{r}+humanline k={k}"] = {"every": r, "humanline": {"sync_k": k}, "k": k, "plain": f"stale{r}"}
    variants["offline"] = {"every": args.steps, "humanline": plain}
    return variants


def phase_two(args, best_k: int) -> dict[str, dict]:
    """The Fig. 5 ablations at ``best_k``, sync only (no clip) and clip only (no sync), and full
    humanline at ``best_k`` on the offline samples (``plain``: the variant without humanline)."""
    r = args.stale_every
    return {f"stale{r}+sync only k={best_k}": {"every": r, "humanline": {"sync_k": best_k, "clip": False}, "k": best_k,
                                               "plain": f"stale{r}"},
            f"stale{r}+clip only": {"every": r, "humanline": {"sync": False}, "plain": f"stale{r}"},
            f"offline+humanline k={best_k}": {"every": args.steps, "humanline": {"sync_k": best_k}, "k": best_k,
                                              "plain": "offline"}}


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
    scores = {variant["k"]: mean_se([r["late_sample_accuracy"] for r in records[name]])[0]
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
    if seed == 0:
        steps.inspect(f"{slug(name)}_seed0_round0", rounds[0]["shard"])
    record = {
        "run_dir": str(run_dir), "accuracy": result["value"], "accuracy_se": result["se"], "eval": result,
        "rounds": [{k: r[k] for k in ("round", "step", "end_step", "shard", "completions", "correct_frac")} for r in rounds],
        "completions_generated": sum(r["completions"] for r in rounds),
        "late_sample_accuracy": sum(late) / len(late),
        "unclamped_frac": metrics["train/humanline/unclamped_frac"][1],
        "clip_frac": metrics["train/clip_ratio/region_mean"][1],
        "train_seconds": round(train_seconds, 1),
        "sampling_seconds": round(steps.seconds[f"train-{tag}"] - train_seconds, 1),  # rounds, start-up, saves
    }
    saved.write_text(json.dumps(record, indent=1) + "\n")
    return record


def record_path(args, name: str, seed: int) -> Path:
    """Where :func:`run_variant` keeps the record of one finished run."""
    return args.out / "runs" / f"{slug(name)}-seed{seed}" / "record.json"


def slug(name: str) -> str:
    return name.replace("+", "-").replace(" ", "-").replace("=", "")


def gap_closed(variant: tuple[float, float], stale: tuple[float, float], online: tuple[float, float]) -> tuple[float, float] | None:
    """(fraction, standard error) of the plain -> online gap a variant closes: (v - s) / (o - s),
    each argument (mean, se over seeds), ``stale`` the plain variant on the same data; the se by
    the delta method (v, s, o independent). None when the gap o - s is 0."""
    (v, sv), (s, ss), (o, so) = variant, stale, online
    gain, gap = v - s, o - s
    if gap == 0:
        return None
    fraction = gain / gap
    # d/dv = 1/gap, d/do = -gain/gap^2, d/ds = (gain - gap)/gap^2 = (v - o)/gap^2
    variance = (sv / gap) ** 2 + (so * gain / gap ** 2) ** 2 + (ss * (v - o) / gap ** 2) ** 2
    return fraction, math.sqrt(variance)


def summarize(args, variants: dict[str, dict], records: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, runs in records.items():
        variant = variants[name]
        settings = train_settings(args, "", variant, 0)
        accuracy, se = mean_se([r["accuracy"] for r in runs])
        out[name] = {
            "sample_every": variant["every"], "sync": settings["sync"], "clip": settings["clip"],
            "sync_k": settings.get("sync_k") if settings["sync"] else None,
            "accuracy": accuracy, "accuracy_se": se, "per_seed_accuracy": [r["accuracy"] for r in runs],
            "late_sample_accuracy": mean_se([r["late_sample_accuracy"] for r in runs])[0],
            "unclamped_frac": mean_of([v for r in runs for v in r["unclamped_frac"]]),
            "clip_frac": mean_of([v for r in runs for v in r["clip_frac"]]),
            "completions_generated": runs[0]["completions_generated"],
            "train_seconds": mean_se([r["train_seconds"] for r in runs])[0],
            "sampling_seconds": mean_se([r["sampling_seconds"] for r in runs])[0],
        }
    online = out.get("online")
    for name, s in out.items():
        plain = out.get(variants[name].get("plain"))
        s["plain"] = variants[name].get("plain")
        s["gap"] = s["gap_se"] = s["gap_closed"] = s["gap_closed_se"] = None
        if not (plain and online):
            continue
        ends = (s, plain, online)
        one_seed = any(x["accuracy_se"] is None for x in ends)  # no spread to propagate
        s["gap"] = online["accuracy"] - plain["accuracy"]
        s["gap_se"] = None if one_seed else math.hypot(online["accuracy_se"], plain["accuracy_se"])
        closed = gap_closed(*[(x["accuracy"], x["accuracy_se"] or 0.0) for x in ends])
        s["gap_closed"], s["gap_closed_se"] = closed if closed else (None, None)
        if one_seed:
            s["gap_closed_se"] = None
    return out


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


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = args.out
    steps = start(args)
    if args.workers > 1:  # the runs' processes share the cores instead of each taking all of them
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.workers)))
    test, train = arithmetic.splits(args.eval_size, args.train_size)
    data = {name: steps.data(f"import-{name}", "import", arithmetic.write_jsonl(run / "task" / f"{name}.jsonl", rows),
                             "--format", "prompts", "--split", name, "--out", run / "data" / name)
            for name, rows in (("train", train), ("test", test))}
    for name, version in data.items():
        steps.inspect(name, version)
    eval_flags = ["--n", 1, "--temperature", 0, "--max-new-tokens", args.max_new_tokens]
    before = steps.evaluate("initial", args.model, data["test"], "math", *eval_flags)

    variants = phase_one(args)
    records: dict[str, list[dict]] = {}
    k_star = None
    for phase in (1, 2):
        if phase == 2:
            k_star = best_k(args, records)
            variants.update(phase_two(args, k_star))
        todo = [(seed, name) for seed in range(args.seeds) for name in variants if seed >= len(records.get(name, []))]
        run_all(args, steps, todo, lambda seed, name: run_variant(steps, args, data, name, variants[name], seed, eval_flags),
                records, lambda: report(args, steps, before, data, variants, records, k_star))
        if any(len(records.get(name, [])) < args.seeds for name in variants):
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


def report(args, steps: Steps, before: dict, data: dict, variants: dict, records: dict, k_star: int | None) -> None:
    """results.json / results.md and the PNGs for the variants finished so far (in ``variants``' order)."""
    run = args.out
    records = {name: records[name] for name in variants if name in records}
    summary = summarize(args, variants, records)
    plot(args, records, run)
    left = [name if name not in records else f"{name} (seeds {len(records[name])}..{args.seeds - 1})" for name in variants
            if len(records.get(name, [])) < args.seeds] + ([] if k_star else ["sync only, clip only and offline + humanline at the best k"])
    results = {
        "recipe": "cpu_replication", "dry_run": args.dry_run, "model": args.model, "scorer": args.scorer,
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "task_seed": arithmetic.TASK_SEED, "data": data,
        "initial": {"accuracy": before["value"], "accuracy_se": before["se"], "eval": before},
        "best_k": k_star, "variants": summary, "seeds": records, "not_run_yet": left,
        "training_sample_accuracy_windows": {name: windows(args, runs) for name, runs in records.items()},
        "step_seconds": steps.seconds, "wall_seconds": steps.elapsed(),
    }
    rows = [["initial model", "-", "-", "-", "-", fmt(before["value"], before["se"]), "-", "-", "-", "-", "-", "-", "-", "-"]]
    for name, s in summary.items():
        rows.append([name, s["sample_every"], s["sync_k"] or "-", "yes" if s["clip"] else "no", len(s["per_seed_accuracy"]),
                     fmt(s["accuracy"], s["accuracy_se"]), s["plain"] or "-", fmt(s["gap"], s["gap_se"]),
                     fmt(s["gap_closed"], s["gap_closed_se"], 2),
                     fmt(s["late_sample_accuracy"]), fmt(s["unclamped_frac"]), fmt(s["clip_frac"]),
                     f"{s['sampling_seconds']:.0f}", f"{s['train_seconds']:.0f}"])
    write_results(run, results, "CPU replication: GRPO sampling interval, k sweep and ablations (two-digit arithmetic)",
                  ["variant", "sample every (steps)", "sync k", "clip", "seeds", "held-out accuracy (mean ± se over seeds)",
                   "plain variant", "plain -> online gap", "gap closed", "training samples right (2nd half)", "unclamped frac", "PPO clip frac",
                   "sampling s / run", "train s / run"], rows,
                  notes=f"Model `{args.model}` (LoRA r {args.lora_r}); {before['count']} held-out problems, greedy; "
                        f"{args.steps} steps of {args.prompts_per_step} x {args.n} completions, "
                        f"{args.steps * args.prompts_per_step * args.n} per run; best k (training reward): {k_star}. "
                        + (f"NOT RUN YET (rerun the same command to resume): {', '.join(left)}. " if left else "")
                        + "Gap closed: (variant - plain) / (online - plain), plain = the same data without humanline, "
                        "delta-method se; it means something only where the gap is several se wide. "
                        "Curves: rewards.png, fractions.png." + (" DRY RUN: tiny random model, numbers are meaningless."
                                                                  if args.dry_run else ""))


if __name__ == "__main__":
    cli(main)
