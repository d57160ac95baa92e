#!/usr/bin/env bash
# benchmarks/bench_gpu.py on a GPU machine without network; results in $OUT (bench_gpu.json, log.txt).
#
# Prepared on a machine with the project's full environment (README, "Training at GPU scale"):
#   benchmarks/out/gpu/data/pairs   python benchmarks/bench_gpu.py prepare --out benchmarks/out/gpu/data
#   benchmarks/out/gpu/wheels       trl 1.16.0 and the deps the GPU image lacks (datasets, dill, multiprocess,
#                                   xxhash), pip download --no-deps --only-binary=:all: for its Python
# The GPU image has torch, transformers, accelerate, peft, pyarrow, click and rich.
# Extra arguments go to `bench_gpu.py run` (e.g. --only ours-dpo-humanline,trl-dpo --steps 6).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the results folder}"
site=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --target "$site" --find-links benchmarks/out/gpu/wheels \
    trl datasets dill multiprocess xxhash
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
PYTHONPATH="$PWD:$site" python3 benchmarks/bench_gpu.py run --shards benchmarks/out/gpu/data/pairs --out "$OUT" "$@"
