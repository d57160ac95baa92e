#!/usr/bin/env bash
# Commands run by the recipe, in order.
set -euo pipefail
humanline-data import /work/runs/replication3-pilot/task/train.jsonl --format prompts --split train --out /work/runs/replication3-pilot/data/train
humanline-data import /work/runs/replication3-pilot/task/test.jsonl --format prompts --split test --out /work/runs/replication3-pilot/data/test
humanline-data inspect /work/runs/replication3-pilot/data/train/v1 > inspect_train.txt
humanline-data inspect /work/runs/replication3-pilot/data/test/v1 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts /work/runs/replication3-pilot/data/test/v1 --scorer math --work /work/runs/replication3-pilot/evals/initial --out /work/runs/replication3-pilot/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 64
humanline-train --config /work/runs/replication3-pilot/configs/train-stale64-lr0.0001-seed0.yaml --out /work/runs/replication3-pilot/runs/stale64-lr0.0001-seed0
humanline-train export /work/runs/replication3-pilot/runs/stale64-lr0.0001-seed0 --step 128 --merge --out /work/runs/replication3-pilot/runs/stale64-lr0.0001-seed0/final-model
humanline-train eval --model /work/runs/replication3-pilot/runs/stale64-lr0.0001-seed0/final-model --prompts /work/runs/replication3-pilot/data/test/v1 --scorer math --work /work/runs/replication3-pilot/evals/stale64-lr0.0001-seed0 --out /work/runs/replication3-pilot/evals/stale64-lr0.0001-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 64
humanline-data inspect /work/runs/replication3-pilot/runs/stale64-lr0.0001-seed0/shards/groups/v1 > inspect_stale64-lr0.0001_seed0_round0.txt
humanline-train --config /work/runs/replication3-pilot/configs/train-stale64-lr0.0004-seed0.yaml --out /work/runs/replication3-pilot/runs/stale64-lr0.0004-seed0
humanline-train export /work/runs/replication3-pilot/runs/stale64-lr0.0004-seed0 --step 128 --merge --out /work/runs/replication3-pilot/runs/stale64-lr0.0004-seed0/final-model
humanline-train eval --model /work/runs/replication3-pilot/runs/stale64-lr0.0004-seed0/final-model --prompts /work/runs/replication3-pilot/data/test/v1 --scorer math --work /work/runs/replication3-pilot/evals/stale64-lr0.0004-seed0 --out /work/runs/replication3-pilot/evals/stale64-lr0.0004-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 64
humanline-data inspect /work/runs/replication3-pilot/runs/stale64-lr0.0004-seed0/shards/groups/v1 > inspect_stale64-lr0.0004_seed0_round0.txt
humanline-train --config /work/runs/replication3-pilot/configs/train-online-lr0.0004-seed0.yaml --out /work/runs/replication3-pilot/runs/online-lr0.0004-seed0
humanline-train export /work/runs/replication3-pilot/runs/online-lr0.0004-seed0 --step 128 --merge --out /work/runs/replication3-pilot/runs/online-lr0.0004-seed0/final-model
humanline-train eval --model /work/runs/replication3-pilot/runs/online-lr0.0004-seed0/final-model --prompts /work/runs/replication3-pilot/data/test/v1 --scorer math --work /work/runs/replication3-pilot/evals/online-lr0.0004-seed0 --out /work/runs/replication3-pilot/evals/online-lr0.0004-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 64
humanline-data inspect /work/runs/replication3-pilot/runs/online-lr0.0004-seed0/shards/groups/v1 > inspect_online-lr0.0004_seed0_round0.txt
