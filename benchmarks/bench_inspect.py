"""Benchmark: ``humanline-data inspect`` diagnostics over a 10M-row scored version.

Data: synthetic scored rows, 1.25M prompts x 8 samples (benchmarks/synthetic_scored.py) with
*short* texts to keep generation quick: completions 40-160 characters, one ~70-character user
message per prompt. The report (checksum verification, rows/prompts, reward and length
distributions with exact quantiles, counts per source/split, duplicate completions by hash,
empty and truncated completions, lineage) runs in a fresh subprocess; its wall seconds and peak
RSS (``ru_maxrss`` of the child) are recorded in benchmarks/results/inspect.json.
Run: ``flock /tmp/humanline-heavy.lock python benchmarks/bench_inspect.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic_scored import write_synthetic_scored

RESULTS = Path(__file__).resolve().parent / "results"
CHILD = """
import json, sys, time
from humanline_data.inspect import diagnostics
start = time.perf_counter()
report = diagnostics(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "rows": report["rows"], "prompts": report["prompts"],
                  "duplicates": report["duplicates"], "truncated": report["truncated"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1_250_000)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as tmp:
        start = time.perf_counter()
        scored = write_synthetic_scored(Path(tmp) / "scored", args.prompts, args.samples, (40, 160), 50)
        generate_s = time.perf_counter() - start
        parquet_mb = sum(p.stat().st_size for p in scored.glob("*.parquet")) / 1e6
        child = subprocess.run([sys.executable, "-c", CHILD, str(scored)], capture_output=True, text=True, check=True)
    report = json.loads(child.stdout.splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    result = {
        "rows": report["rows"], "prompts": report["prompts"], "completion_chars": [40, 160],
        "input_parquet_mb": round(parquet_mb, 1), "generate_seconds": round(generate_s, 1),
        "diagnostics_seconds": round(report["seconds"], 1), "rows_per_s": round(report["rows"] / report["seconds"]),
        "peak_rss_mb": round(peak_mb), "report_excerpt": {k: report[k] for k in ("duplicates", "truncated")},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inspect.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| rows | Parquet MB | diagnostics s | rows/s | peak RSS MB |\n|---:|---:|---:|---:|---:|")
    print(f"| {report['rows']:,} | {parquet_mb:,.0f} | {report['seconds']:.1f} | "
          f"{result['rows_per_s']:,} | {peak_mb:,.0f} |")


if __name__ == "__main__":
    main()
