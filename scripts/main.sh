#!/usr/bin/env bash
# The main job, end to end on the embedded default (SmolLM2-135M-Instruct, two-digit arithmetic, CPU):
#   generate the task -> import -> sample once with the initial model -> score (math verifier)
#   -> GRPO groups -> inspect -> eval before -> humanline GRPO on that stale shard -> eval after.
# Everything lands under $RUN (default runs/main); the gains, with unpaired and paired standard
# errors, in $RUN/results.json. Sizes can be shrunk with the env vars below.
# CONTROL=1 also trains the same stale groups without humanline (plain GRPO) and evaluates it.
# SEEDS="0 1 2" trains (and controls) once per training seed on the same stale groups; seed 0
# writes train/ and eval_after.json, seed N > 0 train-sN/ and eval_after-sN.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
RUN="${RUN:-runs/main}"
PROMPTS="${PROMPTS:-256}"       # training problems, sampled once
SAMPLES="${SAMPLES:-8}"         # completions per training problem (one GRPO group)
EVAL="${EVAL:-300}"             # held-out problems for greedy pass@1
EPOCHS="${EPOCHS:-1}"           # passes of humanline GRPO over the stale groups (BATCH completions a step)
MAXTOK="${MAXTOK:-16}"          # max new tokens when sampling and evaluating
SAMPLE_SEED="${SAMPLE_SEED:-0}" # seed of the sampling (another seed: another stale shard)
LR="${LR:-1e-4}"                # learning rate (LoRA r16); at 2e-4 a run collapsed to repeating a word
MODEL=smollm2-135m-instruct
DATA="$RUN/data"
mkdir -p "$RUN"

step() { echo; echo "== $*" >&2; }
last() { tail -n 1; }

step "arithmetic task: $EVAL held-out and $PROMPTS training problems (disjoint)"
python pipelines/arithmetic.py --test "$EVAL" --train "$PROMPTS" --out "$RUN/task" >&2
TRAIN_P=$(humanline-data import "$RUN/task/train.jsonl" --format prompts --split train --out "$DATA/prompts" | last)
TEST_P=$(humanline-data import "$RUN/task/test.jsonl" --format prompts --split test --out "$DATA/heldout" | last)

step "generate $SAMPLES samples per training problem with $MODEL (once: the stale shard)"
COMP=$(humanline-data generate "$TRAIN_P" --model "$MODEL" --n "$SAMPLES" --temperature 0.7 --top-p 0.95 \
  --max-new-tokens "$MAXTOK" --seed "$SAMPLE_SEED" --out "$DATA/completions" | last)

step "score: math-verified correctness"
SCORED=$(humanline-data score "$COMP" --scorer math --out "$DATA/scored" | last)

step "build GRPO groups (groups whose samples are all right or all wrong are dropped)"
GROUPED=$(humanline-data pair "$SCORED" --mode groups --out "$DATA/groups" | last)

step "inspect"
humanline-data inspect "$SCORED" | tee "$RUN/inspect_scored.txt" >&2
humanline-data inspect "$GROUPED" | tee "$RUN/inspect_groups.txt" >&2

evaluate() {  # greedy pass@1 of model $1 on the held-out problems into $RUN/eval_$2.json (outputs kept in eval_$2/)
  humanline-train eval --model "$1" --prompts "$TEST_P" --scorer math --max-new-tokens "$MAXTOK" \
    --work "$RUN/eval_$2" --out "$RUN/eval_$2.json" >&2
}
train() {  # GRPO on the stale groups into $RUN/$1 with the extra flags $2...; prints its final model (LoRA merged)
  local out="$RUN/$1"; shift
  humanline-train train --shards "$GROUPED" --loss grpo --model "$MODEL" --out "$out" --lora-r 16 --lr "$LR" \
    --epochs "$EPOCHS" --batch-size "${BATCH:-8}" --max-length 96 --seed "${SEED:-0}" "$@" >&2
  humanline-train export "$out" --merge --out "$out-final" | last
}
step "held-out pass@1 before training"
evaluate "$MODEL" before

for SEED in ${SEEDS:-0}; do
  S=$([ "$SEED" = 0 ] || echo "-s$SEED")
  step "train humanline GRPO, LoRA r16, seed $SEED ($EPOCHS epoch(s), sync every step, clip [-1.5, 1.5])"
  FINAL=$(train "train$S" --sync-k 1)
  step "held-out pass@1 after training (seed $SEED)"
  evaluate "$FINAL" "after$S"
  if [ "${CONTROL:-0}" = "1" ]; then
    step "control: the same stale groups and seed $SEED, plain GRPO (no sync, no clip)"
    evaluate "$(train "control$S" --no-humanline)" "control$S"
  fi
done
humanline-train plot "$RUN/train" --out "$RUN/train_curves.png" >&2
python pipelines/main_summary.py "$RUN" ${SEEDS:-0}  # also writes $RUN/results.json and results.md
echo "$RUN"
