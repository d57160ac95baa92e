"""Shared-prompt forward vs every row run whole, in ``completion_logprobs`` (forward + backward).

Two batches on the embedded model (float32, 2 threads, length groups of <= 256 padded tokens):
  grpo-group  one GRPO group: a GSM8K train problem with 8 completions (its own worked answer and
              the answers of the next 7 problems), i.e. one prompt repeated 8 times
  dpo-pairs   bench_train_step's first DPO micro-batch: 4 pairs, each prompt repeated twice
The two settings alternate for 5 rounds per batch; round 1 is warm-up; medians are reported.

    flock /tmp/humanline-heavy.lock python benchmarks/bench_shared_prompt.py

Writes ``benchmarks/results/shared_prompt.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench_train_step import DATA, FORWARD_TOKENS, MAX_LENGTH, PAIRS_PER_STEP, ROOT, THREADS, computed_tokens, load_pairs, pad_rows

GSM8K = DATA.parents[1] / "gsm8k" / "train.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "shared_prompt.json"
GROUP = 8
ROUNDS = 5


def group_rows(tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of one GRPO group of GROUP completions of the first GSM8K problem."""
    items = [json.loads(line) for line in GSM8K.read_text().splitlines()[:GROUP]]
    text = tokenizer.apply_chat_template([{"role": "user", "content": items[0]["question"]}],
                                         add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False).input_ids
    completions = [tokenizer(i["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for i in items]
    return [(prompt, c[: MAX_LENGTH - len(prompt)]) for c in completions]


def pair_rows(tokenizer) -> list[tuple[list[int], list[int]]]:
    pairs = load_pairs(tokenizer, PAIRS_PER_STEP)
    return [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [(p["prompt_ids"], p["rejected_ids"]) for p in pairs]


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from humanline_data.models import resolve_model
    from humanline_train.logprobs import completion_logprobs

    torch.set_num_threads(THREADS)
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    rows = []
    for name, batch_rows in (("grpo-group", group_rows(tokenizer)), ("dpo-pairs", pair_rows(tokenizer))):
        batch = pad_rows(batch_rows, tokenizer.pad_token_id)
        seconds = {True: [], False: []}
        for _ in range(ROUNDS):
            for share in (True, False):
                started = time.perf_counter()
                completion_logprobs(model, *batch, forward_tokens=FORWARD_TOKENS, share_prompts=share).sum().backward()
                model.zero_grad(set_to_none=True)
                seconds[share].append(time.perf_counter() - started)
        median = {share: sorted(s[1:])[len(s[1:]) // 2] for share, s in seconds.items()}
        rows.append(dict(batch=name, rows=len(batch_rows), tokens=int(batch[1].sum()),
                         tokens_run_shared=computed_tokens(*batch, True), seconds_shared=seconds[True],
                         seconds_rows=seconds[False], median_shared=median[True], median_rows=median[False],
                         speedup=median[False] / median[True]))
    RESULTS.write_text(json.dumps(dict(threads=THREADS, forward_tokens=FORWARD_TOKENS, rounds=ROUNDS, batches=rows),
                                  indent=2) + "\n")
    print("| batch | rows | tokens | tokens run (shared) | s rows whole | s shared | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['rows']} | {r['tokens']} | {r['tokens_run_shared']} | {r['median_rows']:.2f} "
              f"| {r['median_shared']:.2f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
