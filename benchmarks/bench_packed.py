"""Packed (padding-free) vs padded forward + backward of ``completion_logprobs``, on CPU.

The two batches of ``bench_shared_prompt.py`` (one GRPO group of 8 completions on one prompt;
4 DPO pairs), embedded model, float32, 2 threads, sdpa attention, four settings:
  rows          padded, every row run whole, length groups of <= 256 padded tokens
  shared        padded, each distinct prompt run once through a KV cache (the default), same groups
  packed        layout="packed": the whole batch in one padding-free row, each prompt once
  packed-256    layout="packed" with packed rows of <= 256 tokens (a family is never split)
The settings alternate for ROUNDS rounds per batch; round 1 is warm-up; the table shows the fastest
of the other rounds (the least disturbed on a shared machine), the JSON every time and the median.

    flock /tmp/humanline-heavy.lock python benchmarks/bench_packed.py

Writes ``benchmarks/results/packed.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import os
import sys
import time

from bench_shared_prompt import group_rows, pair_rows
from bench_train_step import FORWARD_TOKENS, ROOT, THREADS, pad_rows

RESULTS = ROOT / "benchmarks" / "results" / "packed.json"
ROUNDS = 4
SETTINGS = {
    "rows": dict(layout="padded", share_prompts=False, forward_tokens=FORWARD_TOKENS),
    "shared": dict(layout="padded", share_prompts=True, forward_tokens=FORWARD_TOKENS),
    "packed": dict(layout="packed", forward_tokens=None),
    "packed-256": dict(layout="packed", forward_tokens=FORWARD_TOKENS),
}


def packed_tokens(ids, attention, completion) -> int:
    """Length of the packed row(s): each distinct prompt once + every completion token."""
    prompts = {tuple(row[: int(a.sum() - c.sum())]) for row, a, c in zip(ids.tolist(), attention, completion)}
    return sum(len(p) for p in prompts) + int(completion.sum())


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from humanline_data.models import resolve_model
    from humanline_train.logprobs import completion_logprobs

    torch.set_num_threads(THREADS)
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").train()
    rows = []
    for name, batch_rows in (("grpo-group", group_rows(tokenizer)), ("dpo-pairs", pair_rows(tokenizer))):
        batch = pad_rows(batch_rows, tokenizer.pad_token_id)
        seconds: dict[str, list[float]] = {s: [] for s in SETTINGS}
        for _ in range(ROUNDS):
            for setting, kwargs in SETTINGS.items():
                started = time.perf_counter()
                completion_logprobs(model, *batch, **kwargs).sum().backward()
                model.zero_grad(set_to_none=True)
                seconds[setting].append(time.perf_counter() - started)
                print(f"{name} {setting}: {seconds[setting][-1]:.2f} s", file=sys.stderr, flush=True)
        median = {s: sorted(v[1:])[len(v[1:]) // 2] for s, v in seconds.items()}
        fastest = {s: min(v[1:]) for s, v in seconds.items()}
        rows.append(dict(batch=name, rows=len(batch_rows), padded_tokens=batch[0].numel(),
                         tokens=int(batch[1].sum()), packed_tokens=packed_tokens(*batch), seconds=seconds,
                         median=median, fastest=fastest))
    RESULTS.write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d"), threads=THREADS, load_average=os.getloadavg(),
                                       forward_tokens=FORWARD_TOKENS, rounds=ROUNDS, batches=rows), indent=2) + "\n")
    print("| batch | padded / real / packed tokens | " + " | ".join(f"s {s}" for s in SETTINGS) + " |")
    print("|---|---|" + "---:|" * len(SETTINGS))
    for r in rows:
        print(f"| {r['batch']} | {r['padded_tokens']} / {r['tokens']} / {r['packed_tokens']} | "
              + " | ".join(f"{r['fastest'][s]:.2f}" for s in SETTINGS) + " |")


if __name__ == "__main__":
    main()
