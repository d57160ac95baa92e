"""Math reasoning testbed (the paper's second): GRPO with a math verifier, sampling every step
(online) vs 64x less often, with and without humanline; pass@1 on MATH500.

    python pipelines/math_reasoning.py --out runs/math --model <Qwen2.5-1.5B-Instruct folder>  # GPU
    python pipelines/math_reasoning.py --out runs/math-dry --dry-run                           # CPU, ~1 min

Chain (commands listed in ``RUN_DIR/commands.sh``):

1. import MATH train (12K problems, ``--format math``) and MATH500 test;
2. three GRPO runs, each an online ``humanline-train`` run whose rounds sample
   ``refresh_every * prompts_per_step`` prompts with the current policy (8 generations each),
   score them (correctness weight 8 + format weight 1, ``pipelines/rewards.py``) and keep the
   groups with a reward spread:

   ============  ==================  ======================================================
   online        sample every step    plain GRPO, reference = the policy at each refresh
   offline       every 64 steps       plain GRPO against the policy of the last refresh
   humanline     every 64 steps       + humanline sync every 16 steps and clip [-1.5, 1.5]
   ============  ==================  ======================================================

   All three see the same number of completions (256 per step);
3. pass@1 of the initial and the trained models on MATH500 (greedy, math verifier).

Outputs in RUN_DIR: ``results.json``, ``results.md``, ``curves.png`` (training metrics),
``rewards.png`` (mean correctness of each round's samples), ``inspect_<dataset>.txt``,
``data/``, ``runs/<variant>/`` (with each round's shards under ``shards/``), ``evals/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from humanline_train.checkpoint import prune  # noqa: E402
from pipelines.common import (  # noqa: E402
    SHARED_DATA, Steps, add_common_flags, cli, start, fmt, plot_round_rewards, round_rewards, write_results,
)

REWARDS = Path(__file__).resolve().parent / "rewards.py"
# method.md §8, math (Qwen2.5-1.5B-Instruct, MATH train 12K, MATH500).
LR = 1e-6
GENERATIONS = 8
TEMPERATURE = 0.7
TOP_P = 1.0  # not fixed by method.md §8: open-r1/TRL's default
MAX_COMPLETION = 2048
STEPS = 1600
COMPLETIONS_PER_STEP = 256
OFFLINE_SAMPLE_EVERY = 64  # "64x less frequent sampling"
HUMANLINE_SYNC_K = 16  # method.md §8: 12-25 (every step collapsed the reward)
LOG_EPS_P, LOG_EPS_R = -1.5, 1.5
GRPO_EPS = 0.2
GRPO_BETA_KL = 1e-4
MAX_GRAD_NORM = 1.0
MAX_PROMPT_TOKENS = 1024  # not fixed by method.md §8: room for the prompt in --max-length
CURVES = ["train/loss", "train/kl", "train/humanline/unclamped_frac", "train/clip_ratio/region_mean", "train/grad_norm",
          "train/grpo/advantage"]

# --dry-run: sizes only; sampling every 1 vs 4 steps stands for 1 vs 64.
DRY_SIZES = dict(train_size=16, n=2, max_new_tokens=16, steps=4, prompts_per_step=2, stale_every=4, sync_k=2,
                 eval_size=5, max_length=256)


def add_grpo_flags(p: argparse.ArgumentParser, lr: float, n: int, max_new_tokens: int, max_length: int,
                   sync_k: int, eps: float, beta_kl: float) -> None:
    """The GRPO flags shared with cpu_replication (defaults given by the caller)."""
    p.add_argument("--model", help="Initial policy (local folder). Default: the embedded model; dry run: a tiny random one.")
    p.add_argument("--n", type=int, default=n, help="Generations per prompt.")
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--top-p", type=float, default=TOP_P)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--eps", type=float, default=eps, help="GRPO ratio clip (symmetric).")
    p.add_argument("--beta-kl", type=float, default=beta_kl)
    p.add_argument("--max-grad-norm", type=float, default=MAX_GRAD_NORM)
    p.add_argument("--max-length", type=int, default=max_length)
    p.add_argument("--micro-batch", type=int,
                   help="Completions per micro-batch (default: --n, one group; grad accumulation fills the step). "
                        "A round keeps only groups with a reward spread, so a round's shard can hold fewer "
                        "completions than a step; it must hold at least one micro-batch.")
    p.add_argument("--sync-k", type=int, default=sync_k, help="Humanline sync every K steps.")
    p.add_argument("--log-eps-p", type=float, default=LOG_EPS_P)
    p.add_argument("--log-eps-r", type=float, default=LOG_EPS_R)
    p.add_argument("--keep-checkpoints", action="store_true", help="Keep every refresh checkpoint (default: final only).")


def grpo_settings(args, prompts, scorer: str, refresh_every: int, humanline: bool, seed: int) -> dict:
    """``humanline-train`` flags of one online GRPO run: every ``refresh_every`` steps a round of
    ``refresh_every * prompts_per_step`` prompts x ``n`` samples; ``prompts_per_step * n``
    completions per optimizer step."""
    batch = args.prompts_per_step * args.n
    micro = min(args.micro_batch or args.n, batch)
    if batch % micro:
        sys.exit(f"error: --micro-batch {micro} does not divide the {batch} completions of a step")
    settings = {
        "loss": "grpo", "model": args.model, "max_steps": args.steps, "batch_size": micro, "grad_accum": batch // micro,
        "lr": args.lr, "max_grad_norm": args.max_grad_norm, "eps_low": args.eps, "eps_high": args.eps,
        "beta_kl": args.beta_kl, "max_length": args.max_length, "seed": seed, "refresh_every": refresh_every,
        "prompts": prompts, "scorer": scorer, "pair_mode": "groups", "refresh_prompts": refresh_every * args.prompts_per_step,
        "samples": args.n, "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
    }
    if humanline:
        return {**settings, "sync_k": args.sync_k, "log_eps_p": args.log_eps_p, "log_eps_r": args.log_eps_r}
    return {**settings, "sync": False, "clip": False}


def apply_dry_sizes(parser: argparse.ArgumentParser, args, sizes: dict) -> None:
    """Replace every size flag the user left at its default by its dry-run value."""
    for key, value in sizes.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    add_grpo_flags(p, LR, GENERATIONS, MAX_COMPLETION, MAX_PROMPT_TOKENS + MAX_COMPLETION, HUMANLINE_SYNC_K,
                   GRPO_EPS, GRPO_BETA_KL)
    p.add_argument("--train-file", type=Path, default=SHARED_DATA / "math" / "train.jsonl")
    p.add_argument("--test-file", type=Path, default=SHARED_DATA / "math" / "math500_test.jsonl")
    p.add_argument("--train-size", type=int, help="Use the first N training problems (default: all).")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--prompts-per-step", type=int, default=COMPLETIONS_PER_STEP // GENERATIONS)
    p.add_argument("--stale-every", type=int, default=OFFLINE_SAMPLE_EVERY, help="Steps between samplings (offline, humanline).")
    p.add_argument("--eval-size", type=int, help="MATH500 problems to evaluate (default: all 500).")
    p.add_argument("--scorer", help="Training reward (default: correctness x8 + format, pipelines/rewards.py).")
    args = p.parse_args(argv)
    if args.dry_run:
        apply_dry_sizes(p, args, DRY_SIZES)
    function = "dry_run_reward" if args.dry_run else "correct_and_format"
    args.scorer = args.scorer or f"python:{REWARDS}:{function}"
    return args


def variants(args) -> dict[str, tuple[int, bool]]:
    """name -> (refresh interval in steps, humanline)."""
    return {"online": (1, False), "offline": (args.stale_every, False), "humanline": (args.stale_every, True)}


def import_math(steps: Steps, args, data_dir: Path) -> dict:
    """Import the train and test problems; save their diagnostics."""
    train_limit = ["--limit", args.train_size] if args.train_size else []
    eval_limit = ["--limit", args.eval_size] if args.eval_size else []
    data = {
        "train": steps.data("import-train", "import", args.train_file, "--format", "math", "--split", "train",
                            *train_limit, "--out", data_dir / "train"),
        "test": steps.data("import-test", "import", args.test_file, "--format", "math", "--split", "test",
                           *eval_limit, "--out", data_dir / "test"),
    }
    for name, version in data.items():
        steps.inspect(name, version)
    return data


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = args.out
    steps = start(args)
    data = import_math(steps, args, run / "data")
    eval_flags = ["--n", 1, "--temperature", 0, "--max-new-tokens", args.max_new_tokens, "--seed", args.seed]
    before = steps.evaluate("initial", args.model, data["test"], "math", *eval_flags)

    runs: dict[str, dict] = {}
    for name, (refresh_every, humanline) in variants(args).items():
        run_dir = Path(steps.train(f"train-{name}", grpo_settings(args, data["train"], args.scorer, refresh_every,
                                                                  humanline, args.seed), run / "runs" / name,
                                   keep_checkpoints=args.keep_checkpoints))
        result = steps.evaluate(name, steps.final_model(name, run_dir), data["test"], "math", *eval_flags)
        if not args.keep_checkpoints:
            prune(run_dir, keep_last=1)
        rounds = round_rewards(run_dir)
        for i, r in enumerate(rounds[:2]):
            steps.inspect(f"{name}_round{i}", r["shard"])
        runs[name] = {
            "refresh_every": refresh_every, "humanline": humanline, "run_dir": str(run_dir),
            "pass_at_1": result["value"], "pass_at_1_se": result["se"], "rounds": rounds,
            "completions_generated": sum(r["completions"] for r in rounds),
            "train_seconds": steps.seconds[f"train-{name}"], "eval": result,
        }
    steps.plot("curves", [r["run_dir"] for r in runs.values()], CURVES)
    plot_round_rewards({k: r["rounds"] for k, r in runs.items()}, run / "rewards.png")

    results = {
        "recipe": "math_reasoning", "dry_run": args.dry_run, "model": args.model, "scorer": args.scorer,
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "data": data,
        "initial": {"pass_at_1": before["value"], "pass_at_1_se": before["se"], "eval": before},
        "runs": runs, "step_seconds": steps.seconds, "wall_seconds": steps.elapsed(),
    }
    rows = [["initial model", "-", "-", fmt(before["value"], before["se"]), "-", "-"]]
    rows += [[name, r["refresh_every"], "yes" if r["humanline"] else "no", fmt(r["pass_at_1"], r["pass_at_1_se"]),
              r["completions_generated"], f"{r['train_seconds']:.0f}"] for name, r in runs.items()]
    write_results(run, results, "Math reasoning: GRPO pass@1 on MATH500 (greedy)",
                  ["variant", "sample every (steps)", "humanline", "pass@1", "completions", "train s"], rows,
                  notes=f"Model `{args.model}`, {before['count']} MATH500 problems. Curves: curves.png, rewards.png."
                        + (" DRY RUN: tiny random model, numbers are meaningless." if args.dry_run else ""))
    print(run)
    return run


if __name__ == "__main__":
    cli(main)
