#!/usr/bin/env bash
# benchmarks/bench_gpu.py on a GPU machine without network; results in $OUT (bench_gpu.json, log.txt, gpu.txt).
#
# Prepared beforehand on a machine with the project's full environment (README, "Training at GPU scale"),
# then carried along (benchmarks/out/ is git-ignored):
#   benchmarks/out/gpu/data     python benchmarks/bench_gpu.py prepare --out benchmarks/out/gpu/data
#   benchmarks/out/gpu/wheels   trl 1.16.0 and what the GPU image lacks (datasets, dill, multiprocess, xxhash):
#                               pip download --no-deps --only-binary=:all: --python-version 3.1X
#                               --platform manylinux2014_x86_64 -d benchmarks/out/gpu/wheels NAME==VERSION ...
# The GPU image has torch, transformers, accelerate, peft, pyarrow, click and rich (no pip needed: wheels are
# unpacked). Extra arguments go to `bench_gpu.py run` (e.g. --only ours-dpo-humanline,trl-dpo --steps 6).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the results folder}"
site=$(mktemp -d)
tag=$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')
for wheel in benchmarks/out/gpu/wheels/*.whl; do
    case "$wheel" in
        *-py3-none-any.whl|*-py${tag}-none-any.whl|*-cp${tag}-cp${tag}-*.whl) python3 -m zipfile -e "$wheel" "$site" ;;
    esac
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
PYTHONPATH="$PWD:$site" python3 benchmarks/bench_gpu.py run --shards benchmarks/out/gpu/data/pairs --out "$OUT" "$@"
