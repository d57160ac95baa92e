"""Benchmark: ``humanline-data pair --mode pairs`` vs a per-row Python labeller.

Data: a synthetic scored version of 125k prompts x 8 samples (1M rows), completions 600-1500
characters of random words, one ~200-character user message per prompt (benchmarks/synthetic_scored.py).

Contenders, both reading the same Parquet version and writing their pairs to disk:

* ``humanline`` — :func:`humanline_data.pair.build` (verify checksums, polars selection, Arrow
  gather, schema validation, zstd Parquet version with manifest).
* ``per-row Python`` — the shape of the paper's original labelling script: iterate over rows in
  Python, collect a dict prompt -> list of samples, take max/min reward per prompt, apply the
  threshold, write JSONL. Measured twice: reading the same Parquet version (pyarrow batches,
  ``to_pylist``), and reading a JSONL export of it (the samples format the original scripts used).

Two more rows explain the figures: the floor any Parquet reader pays (verify the checksums and
decode the input columns, nothing else), and the pairing itself with the keys already in
memory: polars (``_select_pairs``) vs the same Python loop over rows.

Both outputs are checked to hold the same pairs. Wall and CPU seconds (``time.process_time``,
all threads) are recorded: on a shared machine CPU time is the steadier comparison. Results go to benchmarks/results/pair.json and
a markdown table is printed. Run: ``flock /tmp/humanline-heavy.lock python benchmarks/bench_pair.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.parquet as pq

import polars as pl

from humanline_data.pair import _INPUT_COLUMNS, THRESHOLD, _select_pairs, build
from humanline_data.store import open_version
from synthetic_scored import write_synthetic_scored

RESULTS = Path(__file__).resolve().parent / "results"


def parquet_rows(version: Path) -> Iterator[dict]:
    for part in sorted(version.glob("part-*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches():
            yield from batch.to_pylist()


def jsonl_rows(path: Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            yield json.loads(line)


def export_jsonl(version: Path, path: Path) -> None:
    with open(path, "w") as f:
        for row in parquet_rows(version):
            f.write(json.dumps(row) + "\n")


def pick_per_row(rows: Iterable[dict], threshold: float) -> Iterator[tuple[str, dict, dict]]:
    """(prompt_id, chosen, rejected) by a Python loop (ties: lowest sample_idx chosen, highest rejected)."""
    samples = defaultdict(list)
    for row in rows:
        samples[row["prompt_id"]].append(row)
    for prompt, group in samples.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda r: r["sample_idx"])
        chosen = max(group, key=lambda r: r["reward"])
        rejected = min(reversed(group), key=lambda r: r["reward"])
        if chosen["reward"] - rejected["reward"] > threshold:
            yield prompt, chosen, rejected


def label_per_row(rows: Iterable[dict], out: Path, threshold: float) -> int:
    """The per-row labeller: pick pairs with :func:`pick_per_row`, write them as JSONL; count."""
    kept = 0
    with open(out, "w") as f:
        for prompt, chosen, rejected in pick_per_row(rows, threshold):
            f.write(json.dumps({
                "prompt_id": prompt, "messages": chosen["messages"], "answer": chosen["answer"],
                "source": chosen["source"], "chosen": chosen["completion"], "rejected": rejected["completion"],
                "chosen_reward": chosen["reward"], "rejected_reward": rejected["reward"],
                "margin": chosen["reward"] - rejected["reward"], "metadata": chosen["metadata"],
            }) + "\n")
            kept += 1
    return kept


def same_pairs(version: Path, jsonl: Path) -> bool:
    ours = open_version(version).read(columns=["prompt_id", "chosen", "rejected"]).to_pylist()
    with open(jsonl) as f:
        theirs = [json.loads(line) for line in f]
    key = lambda r: (r["prompt_id"], r["chosen"], r["rejected"])  # noqa: E731
    return sorted(map(key, ours)) == sorted(map(key, theirs))


def timed(fn) -> tuple[object, dict]:
    """fn's value, and its wall and CPU seconds."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=125_000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    args = parser.parse_args()
    rows = args.prompts * args.samples
    with tempfile.TemporaryDirectory(prefix="bench-pair-") as tmp:
        tmp = Path(tmp)
        scored, generate = timed(lambda: write_synthetic_scored(tmp / "scored", args.prompts, args.samples, (600, 1500), 200))
        export_jsonl(scored, tmp / "scored.jsonl")
        ours, ours_t = timed(lambda: build(scored, tmp / "pairs", mode="pairs", threshold=args.threshold))
        kept, parquet_t = timed(lambda: label_per_row(parquet_rows(scored), tmp / "a.jsonl", args.threshold))
        assert same_pairs(ours, tmp / "a.jsonl"), "the labellers disagree"
        _, jsonl_t = timed(lambda: label_per_row(jsonl_rows(tmp / "scored.jsonl"), tmp / "b.jsonl", args.threshold))
        assert same_pairs(ours, tmp / "b.jsonl"), "the labellers disagree"
        keys = open_version(scored).read(columns=["prompt_id", "sample_idx", "reward"])
        key_rows = keys.to_pylist()
        frame = pl.from_arrow(keys).with_row_index("row")
        _, select_t = timed(lambda: _select_pairs(frame, args.threshold))
        _, loop_t = timed(lambda: sum(1 for _ in pick_per_row(key_rows, args.threshold)))
        del key_rows, frame
        _, decode_t = timed(lambda: open_version(scored).read(columns=_INPUT_COLUMNS).num_rows)
        input_mb = sum(p.stat().st_size for p in scored.glob("*.parquet")) / 1e6
        jsonl_mb = (tmp / "scored.jsonl").stat().st_size / 1e6
    contenders = {
        "humanline pair --mode pairs (Parquet in, Parquet version out)": ours_t,
        "per-row Python, Parquet in, JSONL out": parquet_t,
        "per-row Python, JSONL in, JSONL out": jsonl_t,
    }
    selection = {"polars": select_t, "python_loop": loop_t,
                 "speedup_wall": round(loop_t["wall_s"] / max(select_t["wall_s"], 1e-3), 1)}
    for t in contenders.values():
        t["rows_per_s"] = round(rows / t["wall_s"])
        t["speedup_wall"] = round(t["wall_s"] / ours_t["wall_s"], 1)
        t["speedup_cpu"] = round(t["cpu_s"] / ours_t["cpu_s"], 1)
    result = {
        "rows": rows, "prompts": args.prompts, "samples_per_prompt": args.samples, "threshold": args.threshold,
        "completion_chars": [600, 1500], "prompt_chars": 200, "input_parquet_mb": round(input_mb, 1),
        "input_jsonl_mb": round(jsonl_mb, 1), "pairs_kept": kept, "generate": generate, "contenders": contenders,
        "selection_only_in_memory": selection,
        "floor_verify_and_decode_input": decode_t,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pair.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{rows:,} scored rows ({args.prompts:,} prompts x {args.samples}), {kept:,} pairs kept\n")
    print("| labeller | wall s | CPU s | rows/s (wall) | humanline speed-up (wall / CPU) |\n|---|---:|---:|---:|---:|")
    for name, t in contenders.items():
        print(f"| {name} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} | {t['rows_per_s']:,} | "
              f"{t['speedup_wall']}x / {t['speedup_cpu']}x |")
    print(f"| floor: verify + decode the input Parquet (no pairing, no writing) | {decode_t['wall_s']:.1f} | "
          f"{decode_t['cpu_s']:.1f} | - | - |")
    print(f"| pairing only, keys in memory: polars vs Python loop | {select_t['wall_s']:.2f} vs "
          f"{loop_t['wall_s']:.2f} | {select_t['cpu_s']:.2f} vs {loop_t['cpu_s']:.2f} | - | {selection['speedup_wall']}x |")

if __name__ == "__main__":
    main()
