"""Sampling n completions per prompt on CPU: the transformers backend (each prompt prefilled
once, its key/value cache repeated for its samples) vs transformers' own batched ``generate``
with every (prompt, sample) row run in full, as ``num_return_sequences`` does.

The embedded SmolLM2-135M-Instruct in float32; the replication's round shape: two-digit
arithmetic prompts with the short system turn, 8 samples each, 16 new tokens, temperature 0.7,
top-p 1, the same per-row seeded sampler in both; 1 prompt (an online round) and 16 prompts (a
stale round). Alternating contenders, median of ``--rounds`` after one warm-up each; the texts
of both are compared (the same seeds must give the same samples).

    python benchmarks/bench_prefill.py --threads 2

Writes ``benchmarks/results/prefill.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "prefill.json"
SAMPLES, NEW_TOKENS = 8, 16


def full_rows_generate(backend, prompts, seeds, params) -> list[str]:
    """The peer: every (prompt, sample) row left-padded and run through ``generate`` in full."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from humanline_data.backends import prompt_token_ids
    from humanline_data.backends.transformers_backend import SeededSampler, left_pad

    ids = prompt_token_ids(backend.tokenizer, prompts)
    rows = [(ids[i], s) for i in range(len(prompts)) for s in seeds[i]]
    input_ids, mask = left_pad([toks for toks, _ in rows], backend.pad_id)
    width = input_ids.shape[1]
    sampler = SeededSampler([s for _, s in rows], params, backend.eos_ids)
    with torch.inference_mode():
        out = backend.model.generate(input_ids=input_ids, attention_mask=mask, logits_processor=LogitsProcessorList([sampler]),
                                     generation_config=GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False,
                                                                        eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id))
    return [backend._sample(out[r, width:].tolist(), 0.0).text for r in range(len(rows))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    from humanline_data.backends import SamplingParams, load_backend
    from humanline_data.models import EMBEDDED_MODEL, resolve_model
    from pipelines import arithmetic

    torch.set_num_threads(args.threads)
    backend = load_backend("transformers", resolve_model(EMBEDDED_MODEL))
    problems = arithmetic.splits(16, 0)[0]
    params = SamplingParams(n=SAMPLES, temperature=0.7, top_p=1.0, max_new_tokens=NEW_TOKENS)
    contenders = {
        "backend (prompt prefilled once)": lambda p, s: [x.text for xs in backend.generate(p, s, params) for x in xs],
        "transformers generate, every row in full": lambda p, s: full_rows_generate(backend, p, s, params),
    }
    rows = []
    for count in (1, 16):
        prompts = [problem["prompt"] for problem in problems[:count]]
        seeds = [[1000 * i + j for j in range(SAMPLES)] for i in range(count)]
        seconds = {name: [] for name in contenders}
        texts = {}
        for _ in range(args.rounds + 1):
            for name, run in contenders.items():
                started = time.perf_counter()
                texts[name] = run(prompts, seeds)
                seconds[name].append(time.perf_counter() - started)
        median = {name: sorted(s[1:])[len(s[1:]) // 2] for name, s in seconds.items()}
        ours, peer = median.values()
        same = len(set(map(tuple, texts.values()))) == 1
        rows.append(dict(prompts=count, completions=count * SAMPLES, seconds=seconds, median=median,
                         speedup=peer / ours, same_texts=same))
    RESULTS.write_text(json.dumps(dict(date=str(date.today()), threads=args.threads, rounds=args.rounds,
                                       machine={"cpus": os.cpu_count(), "platform": platform.platform(),
                                                "load_avg_1m": os.getloadavg()[0]},
                                       samples_per_prompt=SAMPLES, max_new_tokens=NEW_TOKENS, results=rows), indent=2) + "\n")
    print("| prompts x samples | backend s | transformers generate, rows in full s | speed-up | same texts |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        ours, peer = r["median"].values()
        print(f"| {r['prompts']} x {SAMPLES} | {ours:.2f} | {peer:.2f} | {r['speedup']:.2f}x | {r['same_texts']} |")


if __name__ == "__main__":
    main()
