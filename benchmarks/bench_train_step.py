"""One training step, side by side: TRL 1.16 DPOTrainer/KTOTrainer vs humanline's losses + logprobs.

Setup (same for every contender): the embedded model (SmolLM2-135M-Instruct) in float32 on CPU
with 2 threads, 4 pairs = 8 sequences per step (KTO: the 8 split rows + 8 mismatched KL rows),
max length 256, the pairs of ../shared/data/preferences/chat_pairs_demo.json that fit, in file
order, the same batches for every contender. AdamW (lr 5e-6, eps 1e-5, wd 0.01), max grad norm 1,
beta 0.1. Step 1 is warm-up and not measured.

Contenders (each in its own subprocess, so peak RSS is its own; with the embedded model the whole
run holds ``/tmp/humanline-heavy.lock``, so no other heavy job runs meanwhile):
  trl-dpo            TRL DPOTrainer with a separate reference model
  dpo-offline        completion_logprobs + dpo_loss + backward + AdamW, live reference copy (2nd model, no grad);
                     each pair's prompt runs once for chosen and rejected (share_prompts, the default)
  dpo-offline-rows   the same with every row run whole (share_prompts=False) in length-sorted groups of
                     <= 256 padded tokens (forward_tokens=256: on CPU, padding is wasted compute)
  humanline-lookahead  one model: reference log-probs of the NEXT batch computed before optimizer.step; clip
  humanline-copy     second model, load_state_dict(policy) before optimizer.step; clip
  trl-kto            TRL KTOTrainer with a separate reference model
  kto-offline        completion_logprobs + kto_kl_rewards + kto_loss, live reference copy

Usage: python benchmarks/bench_train_step.py [--steps 4] [--contenders a,b]
Writes benchmarks/results/train_step.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "preferences" / "chat_pairs_demo.json"
RESULTS = ROOT / "benchmarks" / "results" / "train_step.json"
LOCK = "/tmp/humanline-heavy.lock"
THREADS = 2
PAIRS_PER_STEP = 4
MAX_LENGTH = 256
BETA = 0.1
CLIP = (-1.5, 1.5)
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
FORWARD_TOKENS = MAX_LENGTH
CONTENDERS = [
    "trl-dpo", "dpo-offline", "dpo-offline-rows", "humanline-lookahead", "humanline-copy", "trl-kto", "kto-offline"
]


# ---- data (identical for every contender) -------------------------------------------------------


def load_pairs(tokenizer, n_pairs: int) -> list[dict]:
    """The first ``n_pairs`` pairs whose prompt + longer completion fit in MAX_LENGTH tokens."""
    pairs = []
    for ex in json.loads(DATA.read_text()):
        messages = [{"role": ROLES[m["from"]], "content": m["value"]} for m in ex["conversations"]]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
        chosen, rejected = ex["chosen"]["value"], ex["rejected"]["value"]
        chosen_ids = tokenizer(chosen, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rejected_ids = tokenizer(rejected, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) <= MAX_LENGTH:
            pairs.append(
                dict(messages=messages, chosen=chosen, rejected=rejected, prompt_ids=prompt_ids,
                     chosen_ids=chosen_ids, rejected_ids=rejected_ids)
            )
        if len(pairs) == n_pairs:
            return pairs
    raise SystemExit(f"only {len(pairs)} pairs fit in {MAX_LENGTH} tokens; need {n_pairs}")


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """(prompt ids, completion ids) rows -> right-padded input_ids, attention_mask, completion_mask [R, T]."""
    import torch

    T = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), T, dtype=torch.long)
    completion = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention[i, : len(p) + len(c)] = 1
        completion[i, len(p) : len(p) + len(c)] = True
    return ids, attention, completion


def unpaired_rows(pairs: list[dict]) -> list[tuple[list[int], list[int], bool]]:
    """KTO rows from pairs: chosen (desirable), rejected (undesirable), pair by pair."""
    rows = []
    for p in pairs:
        rows += [(p["prompt_ids"], p["chosen_ids"], True), (p["prompt_ids"], p["rejected_ids"], False)]
    return rows


# ---- contenders ---------------------------------------------------------------------------------


def _load_model(path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    return model


def _optimizer(model):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=5e-6, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01)


def computed_tokens(ids, attention, completion, share: bool) -> int:
    """Tokens the transformer actually runs for these rows: a repeated prompt counts once when shared."""
    from humanline_train.logprobs import _prompt_families

    families = _prompt_families(ids, attention, completion) if share else None
    if families is None:
        return int(attention.sum())
    prompt_lengths = attention.sum(-1) - completion.sum(-1)
    return int(sum(prompt_lengths[f[0]] for f in families) + completion.sum())


def run_ours_dpo(path, tokenizer, pairs, steps: int, mode: str, share: bool) -> dict:
    """mode: offline (live copy reference), lookahead (humanline, one model), copy (humanline, state-dict copy);
    share: run each pair's prompt once (share_prompts)."""
    import functools

    import torch

    from humanline_train import logprobs
    from humanline_train.losses import dpo_loss

    completion_logprobs = functools.partial(
        logprobs.completion_logprobs, forward_tokens=FORWARD_TOKENS, share_prompts=share
    )

    B = PAIRS_PER_STEP
    batches = []
    for k in range(steps + 1):  # one more: the lookahead of the last step
        chunk = pairs[k * B : (k + 1) * B]
        rows = [(p["prompt_ids"], p["chosen_ids"]) for p in chunk] + [(p["prompt_ids"], p["rejected_ids"]) for p in chunk]
        batches.append(pad_rows(rows, tokenizer.pad_token_id))
    model = _load_model(path)
    model.train()
    ref_model = None if mode == "lookahead" else _load_model(path).eval()
    opt = _optimizer(model)
    clip = None if mode == "offline" else CLIP
    cached_ref = {}
    times, cpu, tokens, losses, computed, ref_tokens = [], [], [], [], [], []
    for step in range(steps):
        ids, attention, completion = batches[step]
        t0, c0 = time.perf_counter(), time.process_time()
        logps = completion_logprobs(model, ids, attention, completion)
        if ref_model is not None:
            with torch.no_grad():
                ref = completion_logprobs(ref_model, ids, attention, completion)
        else:  # step 1: the reference is the initial policy itself
            ref = cached_ref.pop(step, None)
            ref = logps.detach() if ref is None else ref
        loss, _ = dpo_loss(logps[:B], ref[:B], completion[:B], logps[B:], ref[B:], completion[B:], beta=BETA, clip=clip)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if mode == "lookahead":
            with torch.no_grad():
                cached_ref[step + 1] = completion_logprobs(model, *batches[step + 1])
            ref_tokens.append(computed_tokens(*batches[step + 1], share))
        else:
            ref_tokens.append(computed_tokens(ids, attention, completion, share))
        if mode == "copy":
            ref_model.load_state_dict(model.state_dict())
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        tokens.append(int(attention.sum()))
        computed.append(computed_tokens(ids, attention, completion, share))
        losses.append(float(loss))
    params = sum(p.numel() for p in model.parameters())
    flops = [6 * params * t + 2 * params * r for t, r in zip(computed, ref_tokens)]
    return dict(times=times, cpu=cpu, tokens=tokens, losses=losses, flops=flops, params=params)


def run_ours_kto(path, tokenizer, pairs, steps: int) -> dict:
    import torch

    import functools

    from humanline_train import logprobs
    from humanline_train.losses import kto_kl_rewards, kto_loss

    completion_logprobs = functools.partial(logprobs.completion_logprobs, forward_tokens=FORWARD_TOKENS)

    rows = unpaired_rows(pairs)
    n = 2 * PAIRS_PER_STEP
    model = _load_model(path)
    model.train()
    ref_model = _load_model(path).eval()
    opt = _optimizer(model)
    times, cpu, tokens, losses, flops = [], [], [], [], []
    params = sum(p.numel() for p in model.parameters())
    for step in range(steps):
        chunk = rows[step * n : (step + 1) * n]
        examples = [(p, c) for p, c, _ in chunk]
        mismatched = [(chunk[i][0], chunk[(i + 1) % n][1]) for i in range(n)]
        desirable = torch.tensor([d for _, _, d in chunk])
        ids, attention, completion = pad_rows(examples, tokenizer.pad_token_id)
        kl_ids, kl_attention, kl_completion = pad_rows(mismatched, tokenizer.pad_token_id)
        both = pad_rows(examples + mismatched, tokenizer.pad_token_id)
        t0, c0 = time.perf_counter(), time.process_time()
        logps = completion_logprobs(model, ids, attention, completion)
        with torch.no_grad():
            kl_logps = completion_logprobs(model, kl_ids, kl_attention, kl_completion)
            ref = completion_logprobs(ref_model, *both)
        T, T_kl = ids.shape[1], kl_ids.shape[1]
        kl_rewards = kto_kl_rewards(kl_logps, ref[n:, :T_kl], kl_completion)
        z = kl_rewards.mean().clamp(min=0)
        loss, _ = kto_loss(logps, ref[:n, :T], completion, desirable, z, beta=BETA, desirable_weight=1.0,
                           undesirable_weight=1.0)  # TRL KTOConfig's weights, as trl-kto runs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        tokens.append(int(attention.sum()))
        losses.append(float(loss))
        run = computed_tokens(ids, attention, completion, True)
        flops.append(6 * params * run + 2 * params * computed_tokens(kl_ids, kl_attention, kl_completion, True)
                     + 2 * params * computed_tokens(*both, True))
    return dict(times=times, cpu=cpu, tokens=tokens, losses=losses, flops=flops, params=params)


class _StepClock:
    """TrainerCallback timing each optimizer step (on_step_begin -> on_step_end)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.times, self.cpu, self._t0 = [], [], None

            def on_step_begin(self, args, state, control, **kw):
                self._t0 = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                self.times.append(time.perf_counter() - self._t0[0])
                self.cpu.append(time.process_time() - self._t0[1])

        return Clock()


def run_trl(path, tokenizer, pairs, steps: int, loss: str) -> dict:
    import torch
    from datasets import Dataset

    import trl

    n = steps * PAIRS_PER_STEP
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=steps, learning_rate=5e-6,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, adam_epsilon=1e-5, max_grad_norm=1.0,
        optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=1, dataloader_num_workers=0, max_length=MAX_LENGTH, beta=BETA,
        train_sampling_strategy="sequential", seed=0, disable_tqdm=True,
    )
    assistant = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    if loss == "dpo":
        data = [dict(prompt=p["messages"], chosen=assistant(p["chosen"]), rejected=assistant(p["rejected"]))
                for p in pairs[:n]]
        args = trl.DPOConfig(per_device_train_batch_size=PAIRS_PER_STEP, **common)
        Trainer = trl.DPOTrainer
    else:
        data = []
        for p in pairs[:n]:
            data += [dict(prompt=p["messages"], completion=assistant(p["chosen"]), label=True),
                     dict(prompt=p["messages"], completion=assistant(p["rejected"]), label=False)]
        args = trl.KTOConfig(per_device_train_batch_size=2 * PAIRS_PER_STEP, **common)
        Trainer = trl.KTOTrainer

    tokens = []

    class Counting(Trainer):
        def training_step(self, model, inputs, *a, **kw):
            tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *a, **kw)

    model, ref_model = _load_model(path), _load_model(path)
    clock = _StepClock()
    trainer = Counting(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(data),
                       processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    params = sum(p.numel() for p in model.parameters())
    if loss == "dpo":
        flops = [8 * params * t for t in tokens]  # train fwd+bwd + reference forward
    else:  # + KL rows (policy no-grad, reference); their token count equals the examples' (a permutation)
        flops = [6 * params * t + 2 * params * t + 2 * params * 2 * t for t in tokens]
    return dict(times=clock.times, cpu=clock.cpu, tokens=tokens, losses=losses, flops=flops, params=params)


def run_contender(name: str, steps: int, model: str) -> dict:
    import torch
    from transformers import AutoTokenizer

    from humanline_data.models import resolve_model

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = load_pairs(tokenizer, (steps + 1) * PAIRS_PER_STEP)
    if name == "trl-dpo":
        out = run_trl(path, tokenizer, pairs, steps, "dpo")
    elif name == "trl-kto":
        out = run_trl(path, tokenizer, pairs, steps, "kto")
    elif name == "kto-offline":
        out = run_ours_kto(path, tokenizer, pairs, steps)
    elif name == "dpo-offline-rows":
        out = run_ours_dpo(path, tokenizer, pairs, steps, "offline", share=False)
    else:
        out = run_ours_dpo(path, tokenizer, pairs, steps, name.split("-")[-1], share=True)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def matmul_peak_flops(n: int = 2048, reps: int = 8) -> float:
    """Best-of-3 fp32 FLOP/s of an n x n matmul with THREADS threads."""
    import torch

    torch.set_num_threads(THREADS)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


# ---- driver -------------------------------------------------------------------------------------


def _child(args) -> dict:
    cmd = [sys.executable, __file__, "--child", args, "--steps", str(STEPS), "--model", MODEL]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{args} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["loadavg_at_start"] = load
    return result


def summarise(name: str, raw: dict, peak: float) -> dict:
    times, tokens, flops = raw["times"][1:], raw["tokens"][1:], raw["flops"][1:]  # step 1 is warm-up
    s = sum(times) / len(times)
    return dict(
        contender=name, s_per_step=s, median_s_per_step=sorted(times)[len(times) // 2],
        cpu_s_per_step=sum(raw["cpu"][1:]) / len(times), step_times=raw["times"], step_cpu_times=raw["cpu"], tokens_per_step=sum(tokens) / len(tokens),
        tokens_per_s=sum(tokens) / sum(times), peak_rss_gib=raw["peak_rss_gib"],
        mfu=sum(flops) / sum(times) / peak, losses=raw["losses"], params=raw["params"],
        loadavg_at_start=raw["loadavg_at_start"],
    )


def main() -> None:
    global STEPS, MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per contender, the first one is warm-up")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--model", default=MODEL, help="model name or folder (a tiny one for a smoke run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    STEPS, MODEL = args.steps, args.model
    if args.child == "matmul":
        print("RESULT " + json.dumps(dict(flops=matmul_peak_flops())))
        return
    if args.child:
        print("RESULT " + json.dumps(run_contender(args.child, args.steps, args.model)))
        return

    if MODEL == "smollm2-135m-instruct":  # heavy: the whole run holds the shared machine's lock
        lock = open(LOCK, "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
    peak = _child("matmul")["flops"]
    rows = {}
    for name in args.contenders.split(","):
        rows[name] = summarise(name, _child(name), peak)
        print(f"{name}: {rows[name]['s_per_step']:.2f} s/step", file=sys.stderr, flush=True)
    ratios = {}
    if {"trl-dpo", "dpo-offline"} <= rows.keys():
        ratios["dpo_tokens_per_s_vs_trl"] = rows["dpo-offline"]["tokens_per_s"] / rows["trl-dpo"]["tokens_per_s"]
        ratios["dpo_peak_rss_vs_trl"] = rows["dpo-offline"]["peak_rss_gib"] / rows["trl-dpo"]["peak_rss_gib"]
    if {"trl-dpo", "dpo-offline-rows"} <= rows.keys():
        ratios["dpo_rows_tokens_per_s_vs_trl"] = (
            rows["dpo-offline-rows"]["tokens_per_s"] / rows["trl-dpo"]["tokens_per_s"]
        )
        ratios["dpo_rows_peak_rss_vs_trl"] = rows["dpo-offline-rows"]["peak_rss_gib"] / rows["trl-dpo"]["peak_rss_gib"]
    if {"trl-kto", "kto-offline"} <= rows.keys():
        ratios["kto_tokens_per_s_vs_trl"] = rows["kto-offline"]["tokens_per_s"] / rows["trl-kto"]["tokens_per_s"]
        ratios["kto_peak_rss_vs_trl"] = rows["kto-offline"]["peak_rss_gib"] / rows["trl-kto"]["peak_rss_gib"]
    for mode in ("lookahead", "copy"):
        if {f"humanline-{mode}", "dpo-offline"} <= rows.keys():
            for key in ("s_per_step", "median_s_per_step", "cpu_s_per_step"):
                ratios[f"humanline_{mode}_over_offline_{key}"] = (
                    rows[f"humanline-{mode}"][key] / rows["dpo-offline"][key]
                )
    result = dict(
        setup=dict(model=MODEL, dtype="float32", threads=THREADS, pairs_per_step=PAIRS_PER_STEP,
                   max_length=MAX_LENGTH, forward_tokens=FORWARD_TOKENS, steps=args.steps, measured_steps=args.steps - 1,
                   data=str(DATA.relative_to(ROOT.parent)), matmul_peak_gflops=peak / 1e9,
                   cpus=os.cpu_count(), torch_threads=THREADS),
        contenders=list(rows.values()), ratios=ratios,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"matmul fp32 peak: {peak / 1e9:.1f} GFLOP/s ({THREADS} threads)\n")
    print("| contender | s/step (mean) | s/step (median) | CPU s/step | tokens/step | tokens/s | peak RSS GiB | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['contender']} | {r['s_per_step']:.2f} | {r['median_s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} "
              f"| {r['tokens_per_step']:.0f} "
              f"| {r['tokens_per_s']:.1f} "
              f"| {r['peak_rss_gib']:.2f} | {100 * r['mfu']:.1f}% |")
    print()
    for k, v in ratios.items():
        print(f"- {k}: {v:.3f}")


STEPS, MODEL = 4, "smollm2-135m-instruct"

if __name__ == "__main__":
    main()
