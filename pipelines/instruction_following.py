"""Instruction following testbed (the paper's first): DPO, KTO and GRPO, offline vs online, with
and without humanline, judged by win rate against AlpacaEval's baseline answers.

    python pipelines/instruction_following.py --out runs/if --model <Llama-3-8B-Instruct folder> \\
        --reward-model <ArmoRM folder> --prompts-file ultrafeedback_prompts.jsonl     # GPU
    python pipelines/instruction_following.py --out runs/if-dry --dry-run             # CPU, ~5 min

Chain (every step a ``humanline-data`` / ``humanline-train`` command, listed in
``RUN_DIR/commands.sh``):

1. prompts: ``--prompts-file`` (a prompts-kind file: prompt | messages | instruction), or
   ``--prompts-hub NAME`` through the ``datasets`` library (only where a hub is reachable), or,
   for ``--dry-run``, the single-turn prompts of ``shared/data/preferences/chat_pairs_demo.json``;
2. generate ``--n`` samples per prompt with the initial policy (vLLM when importable) at
   temperature 0.7, top-p 0.95; score them with the reward model (``rm:<folder>``);
3. pair (highest vs lowest reward, gap > 0.01): ``pairs`` for DPO and GRPO (a pair is a group
   of two), ``unpaired`` (the pairs split) for KTO;
4. for each loss and each variant of method.md §4 (offline, online = refresh every 32 steps,
   offline+humanline, online+humanline): ``humanline-train``; online rounds sample
   ``--refresh-prompts`` prompts of the same prompt set with the current policy;
5. evaluate the initial model and every trained model: greedy answers to the AlpacaEval
   instructions, win rate (and length-controlled win rate) against the GPT-4 Turbo baseline
   answers, both scored by the reward model.

Outputs in RUN_DIR: ``results.json``, ``results.md`` (a table), ``curves_<loss>.png``
(training curves of the four variants), ``inspect_<dataset>.txt`` (diagnostics of every shard
used), ``data/`` (the versions), ``runs/<loss>-<variant>/`` (trainer run directories),
``evals/`` and ``logs/``. Defaults are method.md §8's; sizes for a dry run are shrunk, the
hyperparameters are not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from humanline_train import objectives  # noqa: E402
from humanline_train.checkpoint import prune, read_refreshes  # noqa: E402
from pipelines.common import SHARED_DATA, add_common_flags, cli, start, fmt, write_results  # noqa: E402

# method.md §8, instruction following (Llama-3-8B-Instruct, UltraFeedback-ArmoRM, AlpacaEval 2).
SAMPLES_PER_PROMPT = 8
TEMPERATURE = 0.7
TOP_P = 0.95
PAIR_THRESHOLD = 0.01
LR_OFFLINE = 5e-6
LR_ONLINE = 2.5e-6
BATCH = {"dpo": 32, "kto": 64, "grpo": 64}  # pairs (DPO) / examples (KTO) / completions (GRPO)
TRAIN_EXAMPLES = {"dpo": 10_000, "kto": 20_000, "grpo": 20_000}  # 1 epoch
MAX_GRAD_NORM = 1.0
WARMUP = 0.1
MAX_LENGTH = 2048
BETA = 0.1
KTO_DESIRABLE_WEIGHT = 1.1
KTO_UNDESIRABLE_WEIGHT = 1.0
GRPO_EPS = 0.15
GRPO_BETA_KL = 0.01
LOG_EPS_P, LOG_EPS_R = -1.5, 1.5
SYNC_K = 1
REFRESH_EVERY = 32  # online: steps between refreshes
REFRESH_PROMPTS = 1024  # method.md §6: prompts per online round
# Not fixed by method.md §8: the longest sampled answer, and the evaluation's sampling (greedy).
MAX_NEW_TOKENS = 1024
UF_HUB = "princeton-nlp/llama3-ultrafeedback-armorm"

LOSSES = ("dpo", "kto", "grpo")
VARIANTS = ("offline", "online", "offline+humanline", "online+humanline")
SHARD_FOR_LOSS = {"dpo": "pairs", "kto": "unpaired", "grpo": "pairs"}  # GRPO: a pair is a group of two
CURVES = ["train/loss", "train/rewards/margins", "train/rewards/accuracies", "train/kl", "train/humanline/unclamped_frac",
          "train/clip_ratio/region_mean", "train/kto/reference_point", "train/grad_norm"]

# --dry-run: sizes only (a tiny random policy and reward model, a dozen prompts, two steps).
DRY_SIZES = dict(prompts=12, n=2, max_new_tokens=16, steps=2, batch={"dpo": 2, "kto": 4, "grpo": 4},
                 refresh_every=1, refresh_prompts=12, eval_size=4, max_length=256)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("--model", help="Initial policy (local folder). Default: the embedded model; dry run: a tiny random one.")
    p.add_argument("--reward-model", help="Reward model folder (ArmoRM at full scale), used as rm:<folder>.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompts-file", type=Path, help="Local training prompts (JSON/JSONL/Parquet: prompt | messages | instruction).")
    src.add_argument("--prompts-hub", default=None, help=f"Hub dataset with a 'prompt' column (needs `datasets`), e.g. {UF_HUB}.")
    p.add_argument("--prompts-split", default="train")
    p.add_argument("--prompts", type=int, help="Use the first N training prompts (default: all; dry run 12).")
    p.add_argument("--n", type=int, default=SAMPLES_PER_PROMPT, help="Samples per prompt.")
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--top-p", type=float, default=TOP_P)
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--threshold", type=float, default=PAIR_THRESHOLD, help="Reward gap a pair needs.")
    p.add_argument("--losses", default=",".join(LOSSES), help="Comma-separated subset of dpo,kto,grpo.")
    p.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--steps", type=int, help="Optimizer steps per run (default: method.md §8's examples / batch, 1 epoch).")
    p.add_argument("--micro-batch", type=int, default=None, help="Examples per micro-batch (grad accumulation fills the batch).")
    p.add_argument("--lr-offline", type=float, default=LR_OFFLINE)
    p.add_argument("--lr-online", type=float, default=LR_ONLINE)
    p.add_argument("--max-grad-norm", type=float, default=MAX_GRAD_NORM)
    p.add_argument("--max-length", type=int, default=MAX_LENGTH)
    p.add_argument("--beta", type=float, default=BETA)
    p.add_argument("--sync-k", type=int, default=SYNC_K)
    p.add_argument("--log-eps-p", type=float, default=LOG_EPS_P)
    p.add_argument("--log-eps-r", type=float, default=LOG_EPS_R)
    p.add_argument("--refresh-every", type=int, default=REFRESH_EVERY)
    p.add_argument("--refresh-prompts", type=int, default=REFRESH_PROMPTS)
    p.add_argument("--eval-size", type=int, help="AlpacaEval instructions to answer (default: all 805).")
    p.add_argument("--eval-max-new-tokens", type=int, help="Default: --max-new-tokens.")
    p.add_argument("--lora-r", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--keep-checkpoints", action="store_true", help="Keep every refresh checkpoint (default: final only).")
    args = p.parse_args(argv)
    args.losses = _subset(p, args.losses, LOSSES, "--losses")
    args.variants = _subset(p, args.variants, VARIANTS, "--variants")
    args.batch = dict(BATCH)
    if args.dry_run:
        for key, value in DRY_SIZES.items():
            if key == "batch" or getattr(args, key, None) in (None, p.get_default(key)):
                setattr(args, key, value)
    elif args.reward_model is None:
        p.error("--reward-model is required (ArmoRM at full scale), except with --dry-run")
    if args.dry_run and (args.model is None) != (args.reward_model is None):
        p.error("--dry-run builds both a tiny policy and a tiny reward model; pass both or neither")
    return args


def _subset(parser, text: str, allowed: tuple, flag: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in allowed]
    if bad or not chosen:
        parser.error(f"{flag}: expected a subset of {','.join(allowed)}, got {text!r}")
    return chosen


def hub_prompts_file(name: str, split: str, limit: int | None, folder: Path) -> Path:
    """Download a hub dataset's ``prompt`` column with ``datasets`` into a JSONL file."""
    try:
        import datasets
    except ImportError:
        sys.exit("error: --prompts-hub needs the `datasets` library (pip install datasets) and a reachable hub; "
                 "or pass --prompts-file with a local copy")
    rows = datasets.load_dataset(name, split=split)
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return write_jsonl(folder / f"{name.replace('/', '__')}-{split}.jsonl", ({"prompt": r["prompt"]} for r in rows))


def demo_prompts_file(folder: Path) -> Path:
    """Single-turn user prompts of chat_pairs_demo.json (an UltraFeedback-like mix) as JSONL."""
    records = json.loads((SHARED_DATA / "preferences" / "chat_pairs_demo.json").read_text())
    turns = ({"prompt": r["conversations"][0]["value"]} for r in records if len(r["conversations"]) == 1)
    return write_jsonl(folder / "chat_pairs_demo_prompts.jsonl", turns)


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def train_settings(args, loss: str, variant: str, data: dict, scorer: str) -> dict:
    """``humanline-train`` settings of one (loss, variant) run (flat flag names)."""
    online = variant.startswith("online")
    batch = args.batch[loss]
    micro = min(args.micro_batch or batch, batch)
    steps = args.steps or TRAIN_EXAMPLES[loss] // batch
    objective = {"beta": args.beta, "desirable_weight": KTO_DESIRABLE_WEIGHT, "undesirable_weight": KTO_UNDESIRABLE_WEIGHT,
                 "eps_low": GRPO_EPS, "eps_high": GRPO_EPS, "beta_kl": GRPO_BETA_KL}
    settings = {
        "loss": loss, "model": args.model, "max_steps": steps, "epochs": 1, "batch_size": micro,
        "grad_accum": batch // micro, "lr": args.lr_online if online else args.lr_offline,
        "max_grad_norm": args.max_grad_norm, "warmup": WARMUP, "max_length": args.max_length, "seed": args.seed,
        "lora_r": args.lora_r, "gradient_checkpointing": bool(args.gradient_checkpointing),
        **{k: v for k, v in objective.items() if k in objectives.get(loss).setting_names()},
    }
    if variant.endswith("humanline"):
        settings.update(sync_k=args.sync_k, log_eps_p=args.log_eps_p, log_eps_r=args.log_eps_r)
    else:
        settings.update(sync=False, clip=False)
    if online:
        settings.update(refresh_every=args.refresh_every, prompts=data["prompts"], scorer=scorer,
                        pair_mode=SHARD_FOR_LOSS[loss], refresh_prompts=args.refresh_prompts, samples=args.n,
                        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    else:
        settings["shards"] = data[SHARD_FOR_LOSS[loss]]
    return settings


def shards_used(run_dir: Path, offline_shard: str | None) -> list[str]:
    """The shard versions a run trained on: the offline shard, or each online round's."""
    rounds = read_refreshes(run_dir)
    return [shard for _, shard in sorted(rounds.items())] if rounds else [offline_shard]


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = args.out
    steps = start(args)
    scorer = f"rm:{Path(args.reward_model).resolve()}"
    data_dir = run / "data"

    if args.prompts_file:
        source, fmt_name = args.prompts_file, "auto"
    elif args.prompts_hub:
        source, fmt_name = hub_prompts_file(args.prompts_hub, args.prompts_split, args.prompts, run / "downloads"), "prompts"
    else:
        source, fmt_name = demo_prompts_file(run / "downloads"), "prompts"
    limit = ["--limit", args.prompts] if args.prompts else []
    data = {"prompts": steps.data("import-prompts", "import", source, "--format", fmt_name, "--split", "train",
                                  *limit, "--out", data_dir / "prompts")}
    alpaca = SHARED_DATA / "alpaca_eval"
    eval_limit = ["--limit", args.eval_size] if args.eval_size else []
    data["eval_prompts"] = steps.data("import-eval", "import", alpaca / "eval_instructions.json", "--format", "alpaca",
                                      "--split", "test", *eval_limit, "--out", data_dir / "eval_prompts")
    data["baseline"] = steps.data("import-baseline", "import", alpaca / "gpt4_1106_preview_outputs.json",
                                  "--format", "completions", "--split", "test", *eval_limit, "--out", data_dir / "baseline")
    data["completions"] = steps.data(
        "generate", "generate", data["prompts"], "--model", args.model, "--n", args.n, "--temperature", args.temperature,
        "--top-p", args.top_p, "--max-new-tokens", args.max_new_tokens, "--seed", args.seed, "--out", data_dir / "completions",
    )
    data["scored"] = steps.data("score", "score", data["completions"], "--scorer", scorer, "--out", data_dir / "scored")
    for mode in ("pairs", "unpaired"):
        data[mode] = steps.data(f"pair-{mode}", "pair", data["scored"], "--mode", mode, "--threshold", args.threshold,
                                "--out", data_dir / mode)
    for name in ("prompts", "completions", "scored", "pairs", "unpaired", "eval_prompts", "baseline"):
        steps.inspect(name, data[name])

    eval_flags = ["--n", 1, "--temperature", 0, "--max-new-tokens", args.eval_max_new_tokens or args.max_new_tokens,
                  "--baseline", data["baseline"], "--seed", args.seed]
    before = steps.evaluate("initial", args.model, data["eval_prompts"], scorer, *eval_flags)
    runs: dict[str, dict] = {}
    for loss in args.losses:
        for variant in args.variants:
            name = f"{loss}-{variant.replace('+', '-')}"
            run_dir = Path(steps.train(f"train-{name}", train_settings(args, loss, variant, data, scorer),
                                       run / "runs" / name, keep_checkpoints=args.keep_checkpoints))
            result = steps.evaluate(name, steps.final_model(name, run_dir), data["eval_prompts"], scorer, *eval_flags)
            if not args.keep_checkpoints:
                prune(run_dir, keep_last=1)
            runs[name] = {
                "loss": loss, "variant": variant, "run_dir": str(run_dir),
                "shards": shards_used(run_dir, None if variant.startswith("online") else data[SHARD_FOR_LOSS[loss]]),
                "win_rate": result["value"], "win_rate_se": result["se"],
                "lc_win_rate": result["length_controlled"]["value"], "lc_win_rate_se": result["length_controlled"]["se"],
                "train_seconds": steps.seconds[f"train-{name}"], "eval": result,
            }
        steps.plot(f"curves_{loss}", [runs[f"{loss}-{v.replace('+', '-')}"]["run_dir"] for v in args.variants], CURVES)

    results = {
        "recipe": "instruction_following", "dry_run": args.dry_run, "model": args.model, "reward_model": args.reward_model,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "data": data, "initial": {"win_rate": before["value"], "win_rate_se": before["se"],
                                  "lc_win_rate": before["length_controlled"]["value"], "eval": before},
        "runs": runs, "step_seconds": steps.seconds, "wall_seconds": steps.elapsed(),
    }
    rows = [["initial model", "-", fmt(before["value"], before["se"]),
             fmt(before["length_controlled"]["value"], before["length_controlled"]["se"]), "-"]]
    rows += [[r["loss"], r["variant"], fmt(r["win_rate"], r["win_rate_se"]), fmt(r["lc_win_rate"], r["lc_win_rate_se"]),
              f"{r['train_seconds']:.0f}"] for r in runs.values()]
    write_results(run, results, "Instruction following: win rate vs AlpacaEval GPT-4 Turbo (judge: reward model)",
                  ["loss", "variant", "win rate", "LC win rate", "train s"], rows,
                  notes=f"Model `{args.model}`, reward model `{args.reward_model}`, "
                        f"{before['count']} AlpacaEval instructions, greedy answers. Curves: curves_<loss>.png."
                        + (" DRY RUN: tiny random models, numbers are meaningless." if args.dry_run else ""))
    print(run)
    return run


if __name__ == "__main__":
    cli(main)
