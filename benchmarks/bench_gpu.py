"""Training at GPU scale: ``humanline-train`` vs TRL 1.16 DPOTrainer / KTOTrainer on the same batches.

    python benchmarks/bench_gpu.py prepare --out DATA            # pairs that fit, imported (needs polars/duckdb)
    python benchmarks/bench_gpu.py run --shards DATA/pairs --out OUT   # the measurement (one GPU, <= ~8 min)
    python benchmarks/bench_gpu.py run --out OUT --tiny --device cpu --precision fp32   # CPU smoke, ~1 min

``run`` prepares the data itself when ``--shards`` is not given. It builds a random-weight Llama
(seed 0; ``--size 1b``: hidden 2048, 16 layers, 32/8 heads, MLP 8192, ~1.07B parameters) with the
embedded model's tokenizer (``tests/fixtures/smollm2_tokenizer``, SmolLM2's, with its chat
template), then runs each contender in its own process (this script's ``ours`` / ``trl``
subcommands) under one time budget:

  ours-dpo-offline   humanline-train --loss dpo --no-humanline: cached reference, computed once
                     before step 1 (outside the step times; inside the process wall time)
  ours-dpo-humanline humanline-train --loss dpo: humanline, lookahead reference, k = 1
  ours-kto           humanline-train --loss kto: the pairs split into desirable / undesirable; humanline
  ours-grpo          humanline-train --loss grpo: each pair a group of 2 (advantages +1 / -1); humanline
  trl-dpo / trl-kto  TRL DPOTrainer / KTOTrainer, separate reference model, sequential sampler over
                     the rows of our loader's micro-batches in our order (same examples per step)

Ours runs as users run it: the ``humanline-train`` click CLI with flags (``--precision`` passed
through), in-process in the ``ours`` subcommand so that peak memory is the trainer's own. TRL
gets ``bf16=True`` under ``bf16-mixed`` (float32 weights, bf16 autocast), bf16 weights too under
``bf16``. TRL 1.16 has no working padding-free path: ``DPOConfig.padding_free`` warns and falls
back to padding, ``KTOConfig`` has none; so TRL runs padded.

Data: the pairs of ``../shared/data/preferences/chat_pairs_demo.json`` whose prompt (chat
template + generation prompt) + longer completion + EOS fit ``--max-length`` tokens, in file
order, so neither trainer truncates, imported with ``humanline-data import --format sharegpt``.

Per contender (steps 2..N measured; step 1 is warm-up): s/step (mean, median), tokens/s
(non-padding tokens of every row of the step, KTO's KL rows included, a repeated prompt counted
every time: the same count for every contender), peak memory (``torch.cuda.max_memory_allocated``
in the contender's process; on CPU peak RSS), the first losses, and
MFU = (6 + 2 * ref) * params * tokens/s / ``--peak-flops`` (989e12: H200 dense bf16), where ref = 1
when the step also runs a reference forward of its tokens (lookahead k = 1 and TRL's reference
model; 0 for the cached reference) and params counts every parameter once (tied embeddings once).
Writes OUT/bench_gpu.json and OUT/log.txt and prints a markdown table.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT.parent / "shared" / "data" / "preferences" / "chat_pairs_demo.json"
TOKENIZER = ROOT / "tests" / "fixtures" / "smollm2_tokenizer"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
SEED = 0
SIZES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
# (name, loss, runner, extra humanline-train flags, reference forward inside the step)
CONTENDERS = [
    ("ours-dpo-humanline", "dpo", "ours", [], True),
    ("trl-dpo", "dpo", "trl", [], True),
    ("ours-dpo-offline", "dpo", "ours", ["--no-humanline"], False),
    ("ours-kto", "kto", "ours", [], True),
    ("trl-kto", "kto", "trl", [], True),
    ("ours-grpo", "grpo", "ours", [], True),
]
MIN_SECONDS = 45  # a contender is skipped when less of the budget is left


# ---- data -----------------------------------------------------------------------------------------


def fitting_pairs(tokenizer, max_length: int) -> list[dict]:
    """The sharegpt records of PAIRS whose prompt + longer completion + EOS fit max_length tokens."""
    keep = []
    for record in json.loads(PAIRS.read_text()):
        messages = [{"role": ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        completion = max(len(tokenizer(record[k]["value"], add_special_tokens=False).input_ids) for k in ("chosen", "rejected"))
        if len(prompt["input_ids"]) + completion + 1 <= max_length:
            keep.append(record)
    return keep


def prepare(out: Path, max_length: int) -> Path:
    """Import the pairs that fit into out/pairs with the project's CLI; return that dataset dir."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    source = out / "chat_pairs_fit_train.json"
    source.write_text(json.dumps(fitting_pairs(AutoTokenizer.from_pretrained(TOKENIZER), max_length)))
    subprocess.run([sys.executable, "-c", "from humanline_data.cli import main; main(prog_name='humanline-data')",
                    "import", str(source), "--format", "sharegpt", "--out", str(out / "pairs")],
                   check=True, env=child_env(os.environ.get("CUDA_VISIBLE_DEVICES")))
    return out / "pairs"


def replay_batches(shards: Path, loss: str, tokenizer, batch_size: int, max_length: int, count: int):
    """(prompt ids, completion ids) of every row of the first ``count`` micro-batches that
    humanline-train (seed 0, one process) trains on, in its row order."""
    from humanline_train.batches import ShardLoader

    loader = ShardLoader(str(shards), loss, tokenizer, batch_size=batch_size, max_length=max_length, seed=SEED)
    batches = []
    for batch, _ in zip(loader, range(count)):
        rows = []
        for ids, attention, completion in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(),
                                              batch.completion_mask.tolist()):
            rows.append((ids[: completion.index(True)], ids[completion.index(True) : sum(attention)]))
        batches.append(rows)
    return batches


def trl_rows(shards: Path, loss: str, tokenizer, batch_size: int, max_length: int, steps: int) -> list[dict]:
    """TRL dataset rows (text) of our micro-batches in our order: DPO rows [chosen..., rejected...]
    -> {prompt, chosen, rejected}; KTO rows [example..., KL...] -> {prompt, completion, label}
    (TRL makes its own KL rows), the label looked up from the source pair."""

    def text(ids: list[int]) -> str:
        ids = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids  # TRL appends EOS itself
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    labels = {}
    for record in json.loads((shards.parent / "chat_pairs_fit_train.json").read_text()):
        labels.setdefault(record["chosen"]["value"], True)
        labels.setdefault(record["rejected"]["value"], False)
    rows = []
    for batch in replay_batches(shards, loss, tokenizer, batch_size, max_length, steps):
        half = len(batch) // 2
        for (prompt, first), (_, second) in zip(batch[:half], batch[half:]):
            if loss == "dpo":
                rows.append({"prompt": text(prompt), "chosen": text(first), "rejected": text(second)})
            else:
                rows.append({"prompt": text(prompt), "completion": text(first), "label": labels[text(first)]})
    return rows


# ---- model ----------------------------------------------------------------------------------------


def make_model(out: Path, size: str, device: str) -> int:
    """Save a random-weight Llama (seed 0) + the embedded model's tokenizer at ``out``; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, **SIZES[size])
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return sum(p.numel() for p in model.parameters())


# ---- contenders (each in its own process) ----------------------------------------------------------


def peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_ours(memory_out: Path, cli_args: list[str]) -> None:
    """humanline-train CLI_ARGS in this process; the peak memory goes to memory_out at exit."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    atexit.register(lambda: memory_out.write_text(json.dumps(peak_memory())))
    from humanline_train.cli import main

    main(args=cli_args, prog_name="humanline-train")


def run_trl(args) -> None:
    """TRL's trainer of ``args.loss`` on ``args.rows`` for ``args.steps`` steps; result JSON to ``args.out``."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    bf16 = args.precision in ("bf16-mixed", "bf16") or (args.precision == "auto" and cuda)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    models = [AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype) for _ in range(2)]  # policy, reference
    times: list[float] = []
    tokens: list[int] = []

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            synchronize()
            times.append(time.perf_counter() - self.started)

    Trainer, Config = (trl.DPOTrainer, trl.DPOConfig) if args.loss == "dpo" else (trl.KTOTrainer, trl.KTOConfig)

    class Counting(Trainer):
        def training_step(self, model, inputs, *rest, **kwargs):
            tokens.append(sum(int(v.sum()) for k, v in inputs.items() if k.endswith("attention_mask")))
            return super().training_step(model, inputs, *rest, **kwargs)

    loss_settings = {"beta": 0.1} if args.loss == "dpo" else {"beta": 0.1, "desirable_weight": 1.1, "undesirable_weight": 1.0}
    config = Config(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, learning_rate=5e-6, lr_scheduler_type="constant", weight_decay=0.01,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-5, max_grad_norm=1.0, optim="adamw_torch", bf16=bf16,
        gradient_checkpointing=False, use_cpu=not cuda, report_to=[], save_strategy="no", logging_steps=1,
        dataloader_num_workers=0, max_length=args.max_length, train_sampling_strategy="sequential", seed=SEED,
        disable_tqdm=True, **loss_settings,
    )
    rows = json.loads(Path(args.rows).read_text())
    trainer = Counting(model=models[0], ref_model=models[1], args=config, train_dataset=Dataset.from_list(rows),
                       processing_class=AutoTokenizer.from_pretrained(args.model), callbacks=[Clock()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    Path(args.out).write_text(json.dumps({"trl": trl.__version__, "bf16": bf16, "weights": str(dtype),
                                          "attn_implementation": models[0].config._attn_implementation,
                                          "seconds": times, "tokens": tokens, "losses": losses, **peak_memory()}))


# ---- driver ---------------------------------------------------------------------------------------


def child_env(cuda_visible: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    return env


def run_child(command: list[str], env: dict, timeout: float, log) -> tuple[int, float]:
    """Run ``command`` in its own session, output to ``log``; (exit status, seconds); killed at ``timeout``."""
    started = time.perf_counter()
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        status = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        status = -9
    log.write(f"[exit {status}]\n")
    log.flush()
    return status, time.perf_counter() - started


def summary(seconds: list[float], tokens: list[int], losses: list, flops_per_token: float, peak_flops: float) -> dict:
    """Step figures over steps 2..N (step 1 is warm-up)."""
    measured, measured_tokens = seconds[1:], tokens[1:]
    if not measured:
        return {}
    tokens_per_s = sum(measured_tokens) / sum(measured)
    return {"measured_steps": len(measured), "s_per_step": statistics.mean(measured),
            "median_s_per_step": statistics.median(measured), "tokens_per_step": statistics.mean(measured_tokens),
            "tokens_per_s": tokens_per_s, "mfu": flops_per_token * tokens_per_s / peak_flops,
            "first_losses": losses[:4]}


def measure(args) -> None:
    import torch
    from transformers import AutoTokenizer

    started = time.perf_counter()
    out = args.out.resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cuda_visible = "" if args.device == "cpu" else None
    env = dict(child_env(cuda_visible), HUMANLINE_CACHE=str(work / "cache"), HF_HOME=str(work / "hf"))
    log = open(out / "log.txt", "w")
    shards = args.shards.resolve() if args.shards else prepare(work / "data", args.max_length)
    device = "cuda" if args.device == "cuda" else "cpu"
    model = work / f"model-{args.size}"
    params = make_model(model, args.size, device)
    tokenizer = AutoTokenizer.from_pretrained(model)
    results = []
    for name, loss, runner, flags, reference_in_step in CONTENDERS:
        if args.only and name not in args.only.split(","):
            continue
        left = args.budget - (time.perf_counter() - started)
        row = {"contender": name, "loss": loss}
        if left < MIN_SECONDS:
            results.append({**row, "status": f"skipped: {left:.0f} s of the budget left"})
            continue
        result_file = work / f"{name}.json"
        if runner == "ours":
            run_dir = work / "runs" / name
            command = [sys.executable, __file__, "ours", "--memory-out", str(result_file), "--",
                       "--shards", str(shards), "--loss", loss, "--model", str(model), "--out", str(run_dir),
                       "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                       "--max-steps", str(args.steps), *(["--precision", args.precision] if args.precision else []),
                       "--layout", args.layout, *flags]
        else:
            rows_file = work / f"trl-rows-{loss}.json"
            rows_file.write_text(json.dumps(trl_rows(shards, loss, tokenizer, args.batch_size, args.max_length, args.steps)))
            command = [sys.executable, __file__, "trl", "--loss", loss, "--model", str(model), "--rows", str(rows_file),
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--max-length", str(args.max_length), "--precision", args.precision or "auto", "--out", str(result_file)]
        status, wall = run_child(command, env, left, log)
        row.update(status="ok" if status == 0 else f"failed (exit {status}; see log.txt)", wall_s=wall,
                   command=" ".join(command[1:]).replace(str(ROOT) + "/", ""))
        try:
            if runner == "ours":
                steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                seconds, tokens, losses = ([s[k] for s in steps]
                                           for k in ("train/perf/seconds_step", "train/perf/tokens", "train/loss"))
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the end-of-run checkpoint: disk
                row.update(json.loads(result_file.read_text()))  # peak memory
            else:
                trl_result = json.loads(result_file.read_text())
                seconds, tokens, losses = trl_result.pop("seconds"), trl_result.pop("tokens"), trl_result.pop("losses")
                row.update(trl_result)
            row.update(seconds=seconds, tokens=tokens, losses=losses, reference_in_step=reference_in_step,
                       **summary(seconds, tokens, losses, (6 + 2 * reference_in_step) * params, args.peak_flops))
        except (OSError, ValueError, KeyError) as err:
            row["status"] = f"failed: no results ({err}; see log.txt)"
        results.append(row)
    report = {
        "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "versions": versions(), "model": {"size": args.size, "params": params, **SIZES[args.size]},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "command"},
        "pairs": str(shards), "wall_s": time.perf_counter() - started, "contenders": results,
    }
    (out / "bench_gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def table(report: dict) -> str:
    lines = [f"{report['date']}, {report['device']}, {report['model']['params'] / 1e6:,.1f}M parameters, "
             f"precision {report['settings']['precision']}",
             "| contender | s/step | tokens/s | peak GiB | MFU | first losses |", "|---|---:|---:|---:|---:|---|"]
    for r in report["contenders"]:
        if "s_per_step" not in r:
            lines.append(f"| {r['contender']} | {r['status']} | | | | |")
            continue
        peak = r.get("peak_gpu_gib", r.get("peak_rss_gib"))
        losses = ", ".join("-" if x is None else f"{x:.4f}" for x in r["first_losses"])
        lines.append(f"| {r['contender']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:,.0f} | {peak:.2f} "
                     f"| {100 * r['mfu']:.1f}% | {losses} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="import the pairs that fit --max-length into OUT/pairs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-length", type=int, default=1024)
    r = sub.add_parser("run", help="the measurement")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--shards", type=Path, help="a dataset made by `prepare` (default: prepare one under OUT/work)")
    r.add_argument("--size", choices=SIZES, default="1b")
    r.add_argument("--tiny", action="store_true", help="CPU smoke settings: --size tiny, 3 steps of 2 pairs, 256 tokens")
    r.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    r.add_argument("--precision", default="bf16-mixed", help="passed to humanline-train; TRL: bf16 unless fp32 ('' passes none)")
    r.add_argument("--layout", choices=("padded", "packed"), default="packed", help="passed to humanline-train")
    r.add_argument("--steps", type=int, default=8)
    r.add_argument("--batch-size", type=int, default=8, help="pairs (DPO) / examples (KTO, GRPO) per step")
    r.add_argument("--max-length", type=int, default=1024)
    r.add_argument("--peak-flops", type=float, default=989e12, help="the card's dense bf16 peak, FLOP/s")
    r.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    r.add_argument("--only", default="", help="comma-separated contender names (default: all)")
    o = sub.add_parser("ours", help="(internal) humanline-train ARGS in-process, peak memory to --memory-out")
    o.add_argument("--memory-out", type=Path, required=True)
    o.add_argument("cli_args", nargs=argparse.REMAINDER)
    t = sub.add_parser("trl", help="(internal) one TRL contender")
    for flag in ("--loss", "--model", "--rows", "--precision", "--out"):
        t.add_argument(flag, required=True)
    for flag in ("--steps", "--batch-size", "--max-length"):
        t.add_argument(flag, type=int, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        print(prepare(args.out, args.max_length))
    elif args.command == "run":
        if args.tiny:
            args.size, args.steps, args.batch_size, args.max_length = "tiny", 3, 2, 256
        measure(args)
    elif args.command == "ours":
        run_ours(args.memory_out, args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args)
    else:
        run_trl(args)


if __name__ == "__main__":
    main()
