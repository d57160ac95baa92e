#!/usr/bin/env bash
# The main job, end to end on the embedded default (SmolLM2-135M-Instruct, bundled GSM8K slice, CPU):
#   import -> generate -> score (math verifier) -> pair -> inspect -> eval before
#   -> humanline DPO on the shards -> eval after.
# Everything lands under $RUN (default runs/main). Sizes can be shrunk with the env vars below.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
RUN="${RUN:-runs/main}"
PROMPTS="${PROMPTS:-24}"        # training prompts taken from the bundled slice
SAMPLES="${SAMPLES:-4}"         # completions per prompt
EVAL="${EVAL:-40}"              # held-out problems for pass@1
STEPS="${STEPS:-12}"            # optimizer steps of humanline DPO
MAXTOK="${MAXTOK:-128}"         # max new tokens when sampling
FORMAT_W="${FORMAT_W:-0.5}"     # weight of the final-answer-format reward component
MODEL=smollm2-135m-instruct
DATA="$RUN/data"
mkdir -p "$RUN"
BUNDLED="$(python -c 'from humanline_data import bundled; print(bundled.path("gsm8k_train.jsonl"))')"
HELDOUT="$(python -c 'from humanline_data import bundled; print(bundled.path("gsm8k_test.jsonl"))')"

step() { echo; echo "== $*" >&2; }
last() { tail -n 1; }

step "import bundled GSM8K slices"
TRAIN_P=$(humanline-data import "$BUNDLED" --format gsm8k --split train --limit "$PROMPTS" --out "$DATA/prompts" | last)
TEST_P=$(humanline-data import "$HELDOUT" --format gsm8k --split test --limit "$EVAL" --out "$DATA/heldout" | last)

step "generate $SAMPLES samples per prompt with $MODEL"
COMP=$(humanline-data generate "$TRAIN_P" --model "$MODEL" --n "$SAMPLES" --temperature 0.7 --top-p 0.95 \
  --max-new-tokens "$MAXTOK" --seed 0 --out "$DATA/completions" | last)

step "score: math-verified correctness (1.0) + $FORMAT_W x explicit final-answer format"
SCORED=$(humanline-data score "$COMP" --scorer math --format-weight "$FORMAT_W" --out "$DATA/scored" | last)

step "build pairs (threshold 0.01)"
PAIRS=$(humanline-data pair "$SCORED" --mode pairs --threshold 0.01 --out "$DATA/pairs" | last)

step "inspect"
humanline-data inspect "$SCORED" | tee "$RUN/inspect_scored.txt" >&2
humanline-data inspect "$PAIRS" | tee "$RUN/inspect_pairs.txt" >&2

step "held-out pass@1 before training"
humanline-train eval --model "$MODEL" --prompts "$TEST_P" --scorer math --max-new-tokens "$MAXTOK" \
  --out "$RUN/eval_before.json" >&2

step "train humanline DPO ($STEPS steps, sync every step, clip [-1.5, 1.5])"
TRAIN=$(humanline-train --shards "$PAIRS" --loss dpo --model "$MODEL" --out "$RUN/train" --sync-k 1 \
  --max-steps "$STEPS" --batch-size "${BATCH:-2}" --lr "${LR:-5e-6}" --max-length 512 --seed 0 | last)
FINAL=$(ls -d "$TRAIN"/checkpoints/step-* | sort -V | tail -n 1)

step "held-out pass@1 after training"
humanline-train eval --model "$FINAL" --prompts "$TEST_P" --scorer math --max-new-tokens "$MAXTOK" \
  --out "$RUN/eval_after.json" >&2
humanline-train plot "$TRAIN" --out "$RUN/train_curves.png" >&2
python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
b, a = (json.load(open(f"{run}/eval_{w}.json")) for w in ("before", "after"))
print(f"held-out pass@1 on {b['count']} problems: before {b['value']:.3f} ± {b['se']:.3f}, "
      f"after {a['value']:.3f} ± {a['se']:.3f}")
PY
echo "$RUN"
