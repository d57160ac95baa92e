"""CPU replication of the paper's central claim on the embedded model (SmolLM2-135M-Instruct):
stale (offline-ish) GRPO data plus humanline syncing and clipping recovers what online
sampling buys, at a fraction of the sampling.

    python pipelines/cpu_replication.py --out runs/cpu-replication --with-dpo   # ~70 min, 2 idle cores
    python pipelines/cpu_replication.py --out runs/cpu-dry --dry-run          # tiny model, ~1 min

Task: generated two-digit arithmetic ("What is 37 + 48? Give the final answer after
'Answer:'."; subtraction keeps the result non-negative), checked by the project's math
verifier. Why this task: the 135M model starts clearly above 0% and below 60% (greedy 15% on
40 held-out problems of this set with 48 new tokens), so GRPO groups of 8 samples hold both
better and worse answers (a learning signal); answers are short (48 tokens keep CPU sampling
affordable); and a seeded generator gives fresh training problems for every round and a
held-out test split disjoint from them by construction. MATH/GSM8K are out of reach of a 135M
model on CPU in an hour (near 0% and 200+ token answers).

Three GRPO variants see the same number of training completions (``--steps`` steps of
``prompts_per_step * n`` completions; ``prompts_per_step = prompts_per_refresh / online_every``):

===============  =========================  ====================================================
online           sample every 1 step        plain GRPO (reference = the policy at the refresh)
stale            sample every 16 steps      plain GRPO (``--no-humanline``)
stale+humanline  sample every 16 steps      humanline sync every 4 steps, clip [-1.5, 1.5]
===============  =========================  ====================================================

(``--online-every``, ``--stale-every``, ``--sync-k``). With the default 16 steps the stale
variants sample once, from the initial model: the paper's offline setting. With
``--with-dpo``, humanline DPO also trains on pairs built from the stale run's first round (the
same initial-model samples). Reward (``--reward``, ``pipelines/rewards.py``): 8 x correct
by default. SPEC §3's math runs add 1 x format (``--reward correct+format``), but on this model
the format term takes over: a 4-step smoke run raised the share of samples with an answer marker
from 16% to 47% while held-out greedy accuracy fell from 15% to 2.5-10% ("The answer is 21."
with a wrong number replaces "37 + 15 = 52"); only ~4% of temperature-0.7 samples are correct
at the start, against 15% greedy. Both rewards subtract 1e-5 per character, which keeps
all-equal groups with near-zero advantages instead of letting the online refresh drop them (a
round that keeps no group stops the run). Each variant runs for every seed in ``--seeds`` (the
training seed; the task is the same for all).

Deviations from SPEC §3's math settings, for a 135M model and 16 steps on 2 CPU cores:
lr 1e-5 (not 1e-6: 16 steps, not 1600), 16 completions per step (not 256), 48 new tokens,
sampling every 16 (not 64) steps, humanline sync every 4 (not 12-25) steps. Measured on this
machine (embedded model, 2 cores): a step of 32 completions trains in ~35 s (forward 11 s,
backward 16 s, reference 7 s); sampling runs ~60 tokens/s; one online round (checkpoint,
sampling, scoring) adds ~20 s; greedy evaluation ~0.6 s per problem.

Reports, in RUN_DIR: ``results.json``/``results.md`` (held-out accuracy before and after as mean
+/- standard error over seeds, completions generated, wall time per variant), ``rewards.png``
(accuracy of each round's training samples, averaged over seeds), ``curves.png`` (training metrics of
the first seed), ``inspect_<dataset>.txt``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.common import (  # noqa: E402
    Steps, add_common_flags, cli, start, final_checkpoint, fmt, mean_se, plot_round_rewards, prune_checkpoints,
    round_rewards, write_results,
)
from pipelines.math_reasoning import CURVES, REWARDS, add_grpo_flags, apply_dry_sizes, grpo_settings  # noqa: E402
from pipelines.rewards import CORRECT_WEIGHT  # noqa: E402

TASK_SEED = 1234  # the arithmetic problems (fixed: seeds vary training only)
LR = 1e-5
GENERATIONS = 8
MAX_NEW_TOKENS = 48
MAX_LENGTH = 256
PROMPTS_PER_REFRESH = 2
ONLINE_EVERY = 1
STALE_EVERY = 16
SYNC_K = 4
STEPS = 16
EVAL_SIZE = 100
SEEDS = 3
GRPO_EPS = 0.2
GRPO_BETA_KL = 1e-4
DPO_BETA = 0.1
REWARD_FUNCTIONS = {"correct": "correct_kept", "correct+format": "correct_and_format_kept"}
PROMPT = "What is {a} {op} {b}? Give the final answer after 'Answer:'."

DRY_SIZES = dict(prompts_per_refresh=2, n=2, steps=4, stale_every=4, sync_k=2, max_new_tokens=8, eval_size=5, seeds=1)


def arithmetic_problems(seed: int, test_size: int, train_size: int) -> tuple[list[dict], list[dict]]:
    """Disjoint (test, train) lists of ``{"prompt", "answer"}``: distinct two-digit problems
    ``a + b`` and ``a - b`` (a >= b), shuffled with ``seed``."""
    problems = [(a, "+", b) for a in range(10, 100) for b in range(10, 100)]
    problems += [(a, "-", b) for a in range(10, 100) for b in range(10, a + 1)]
    random.Random(seed).shuffle(problems)
    if test_size + train_size > len(problems):
        sys.exit(f"error: only {len(problems)} distinct problems for {test_size} test + {train_size} train")
    rows = [{"prompt": PROMPT.format(a=a, op=op, b=b), "answer": str(a + b if op == "+" else a - b)}
            for a, op, b in problems[: test_size + train_size]]
    return rows[:test_size], rows[test_size:]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    add_grpo_flags(p, LR, GENERATIONS, MAX_NEW_TOKENS, MAX_LENGTH, SYNC_K, GRPO_EPS, GRPO_BETA_KL)
    p.add_argument("--prompts-per-refresh", type=int, default=PROMPTS_PER_REFRESH, help="Prompts per online round.")
    p.add_argument("--online-every", type=int, default=ONLINE_EVERY, help="Online: steps between samplings.")
    p.add_argument("--stale-every", type=int, default=STALE_EVERY, help="Stale variants: steps between samplings.")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--eval-size", type=int, default=EVAL_SIZE, help="Held-out problems (greedy pass@1).")
    p.add_argument("--seeds", type=int, default=SEEDS, help="Training seeds 0..N-1 per variant.")
    p.add_argument("--reward", choices=list(REWARD_FUNCTIONS), default="correct",
                   help="Training reward: 8 x correct, or 8 x correct + 1 x format (SPEC's math weights).")
    p.add_argument("--with-dpo", action="store_true", help="Also humanline DPO on pairs of the stale run's first round.")
    args = p.parse_args(argv)
    if args.dry_run:
        apply_dry_sizes(p, args, DRY_SIZES)
    if args.prompts_per_refresh % args.online_every:
        p.error("--prompts-per-refresh must be a multiple of --online-every")
    args.prompts_per_step = args.prompts_per_refresh // args.online_every
    args.train_size = args.prompts_per_step * args.steps  # every round takes fresh problems
    args.scorer = f"python:{REWARDS}:{'dry_run_reward' if args.dry_run else REWARD_FUNCTIONS[args.reward]}"
    return args


def variants(args) -> dict[str, tuple[int, bool]]:
    """name -> (refresh interval in steps, humanline)."""
    return {"online": (args.online_every, False), "stale": (args.stale_every, False),
            "stale+humanline": (args.stale_every, True)}


def dpo_settings(args, pairs: str, seed: int) -> dict:
    """Humanline DPO on ``pairs``: ``prompts_per_step`` pairs per step, as many epochs as the steps need."""
    return {"loss": "dpo", "model": args.model, "shards": pairs, "max_steps": args.steps, "epochs": args.steps,
            "batch_size": args.prompts_per_step, "lr": args.lr, "beta": DPO_BETA, "max_length": args.max_length,
            "max_grad_norm": args.max_grad_norm, "sync_k": args.sync_k, "log_eps_p": args.log_eps_p,
            "log_eps_r": args.log_eps_r, "seed": seed}


def mean_rounds(per_seed: list[list[dict]], key: str) -> list[dict]:
    """Round-by-round mean of ``key`` over seeds (the schedule is the same for every seed)."""
    return [{"step": rounds[0]["step"], "end_step": rounds[0]["end_step"], key: sum(r[key] for r in rounds) / len(rounds)}
            for rounds in zip(*per_seed)]


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = args.out
    steps = start(args)
    test, train = arithmetic_problems(TASK_SEED, args.eval_size, args.train_size)
    data = {
        "train": steps.data("import-train", "import", write_jsonl(run / "task" / "arithmetic_train.jsonl", train),
                            "--format", "prompts", "--split", "train", "--out", run / "data" / "train"),
        "test": steps.data("import-test", "import", write_jsonl(run / "task" / "arithmetic_test.jsonl", test),
                           "--format", "prompts", "--split", "test", "--out", run / "data" / "test"),
    }
    for name, version in data.items():
        steps.inspect(name, version)
    eval_flags = ["--n", 1, "--temperature", 0, "--max-new-tokens", args.max_new_tokens]
    before = steps.evaluate("initial", args.model, data["test"], "math", *eval_flags)

    names = list(variants(args)) + (["dpo+humanline"] if args.with_dpo else [])
    seeds: dict[str, list[dict]] = {name: [] for name in names}
    for seed in range(args.seeds):
        for name, (every, humanline) in variants(args).items():
            tag = f"{name.replace('+', '-')}-seed{seed}"
            run_dir = Path(steps.train(f"train-{tag}", grpo_settings(args, data["train"], args.scorer, every, humanline, seed),
                                       run / "runs" / tag, keep_checkpoints=args.keep_checkpoints))
            seeds[name].append(finish(steps, args, run_dir, tag, data, eval_flags, round_rewards(run_dir, CORRECT_WEIGHT / 2)))
        if args.with_dpo:
            first_round = seeds["stale"][-1]["rounds"][0]["scored"]
            pairs = steps.data(f"pair-seed{seed}", "pair", first_round, "--mode", "pairs", "--out", run / "data" / "dpo_pairs")
            steps.inspect(f"dpo_pairs_seed{seed}", pairs)
            tag = f"dpo-humanline-seed{seed}"
            run_dir = Path(steps.train(f"train-{tag}", dpo_settings(args, pairs, seed), run / "runs" / tag))
            seeds["dpo+humanline"].append(finish(steps, args, run_dir, tag, data, eval_flags, [], shard=pairs))
    for name in variants(args):  # diagnostics of every shard trained on
        for seed, record in enumerate(seeds[name]):
            for r in record["rounds"]:
                steps.inspect(f"{name.replace('+', '_')}_seed{seed}_round{r['round']}", r["shard"])

    summary = summarize(seeds, before)
    plot_round_rewards({n: mean_rounds([s["rounds"] for s in seeds[n]], "correct_frac") for n in variants(args)},
                       run / "rewards.png", key="correct_frac")
    steps.plot("curves", [seeds[n][0]["run_dir"] for n in names], CURVES)
    results = {
        "recipe": "cpu_replication", "dry_run": args.dry_run, "model": args.model, "scorer": args.scorer,
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "task_seed": TASK_SEED, "data": data,
        "initial": {"accuracy": before["value"], "accuracy_se": before["se"], "eval": before},
        "variants": summary, "seeds": seeds, "step_seconds": steps.seconds,
        "wall_seconds": steps.elapsed(),
    }
    rows = [["initial model", "-", "-", fmt(before["value"], before["se"]), "-", "-", "-"]]
    rows += [[n, s["sample_every"], "yes" if s["humanline"] else "no", fmt(s["accuracy"], s["accuracy_se"]),
              fmt(s["last_round_sample_accuracy"]), s["completions_generated"], f"{s['train_seconds']:.0f}"]
             for n, s in summary.items()]
    write_results(run, results, "CPU replication: held-out accuracy on two-digit arithmetic (greedy)",
                  ["variant", "sample every (steps)", "humanline", f"accuracy (mean ± se, {args.seeds} seeds)",
                   "last-round sample accuracy", "completions / run", "train s / run"], rows,
                  notes=f"Model `{args.model}`; {before['count']} held-out problems; {args.steps} steps of "
                        f"{args.prompts_per_step * args.n} completions; reward {args.reward} ({args.scorer.rsplit(':', 1)[1]}). "
                        "Accuracy before: one greedy evaluation (deterministic). Curves: rewards.png, curves.png."
                        + (" DRY RUN: tiny random model, numbers are meaningless." if args.dry_run else ""))
    print(run)
    return run


def finish(steps: Steps, args, run_dir: Path, tag: str, data: dict, eval_flags: list, rounds: list[dict],
           shard: str | None = None) -> dict:
    """Evaluate a finished run, drop its intermediate checkpoints; its per-seed record."""
    result = steps.evaluate(tag, final_checkpoint(run_dir), data["test"], "math", *eval_flags)
    if not args.keep_checkpoints:
        prune_checkpoints(run_dir)
    return {"run_dir": str(run_dir), "accuracy": result["value"], "accuracy_se": result["se"], "rounds": rounds,
            "shards": [r["shard"] for r in rounds] or [shard], "completions_generated": sum(r["completions"] for r in rounds),
            "train_seconds": steps.seconds[f"train-{tag}"], "eval": result}


def summarize(seeds: dict[str, list[dict]], before: dict) -> dict:
    """Per variant: accuracy mean +/- se over seeds, change from before, completions, wall time."""
    out = {}
    for name, runs in seeds.items():
        accuracy, se = mean_se([r["accuracy"] for r in runs])
        every = json.loads((Path(runs[0]["run_dir"]) / "settings.json").read_text())
        out[name] = {
            "sample_every": every["online"]["refresh_every"] or "once", "humanline": every["humanline"]["sync"],
            "accuracy": accuracy, "accuracy_se": se, "accuracy_change": accuracy - before["value"],
            "per_seed_accuracy": [r["accuracy"] for r in runs],
            "last_round_sample_accuracy": mean_se([r["rounds"][-1]["correct_frac"] for r in runs])[0] if runs[0]["rounds"] else None,
            "completions_generated": sum(r["completions_generated"] for r in runs) // len(runs),
            "train_seconds": mean_se([r["train_seconds"] for r in runs])[0],
            "train_seconds_per_seed": [r["train_seconds"] for r in runs],
        }
    return out


if __name__ == "__main__":
    cli(main)
