#!/usr/bin/env bash
# Commands run by the recipe, in order.
set -euo pipefail
humanline-data import /work/runs/replication3/task/train.jsonl --format prompts --split train --out /work/runs/replication3/data/train
humanline-data import /work/runs/replication3/task/test.jsonl --format prompts --split test --out /work/runs/replication3/data/test
humanline-data inspect /work/runs/replication3/data/train/v1 > inspect_train.txt
humanline-data inspect /work/runs/replication3/data/test/v1 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/initial --out /work/runs/replication3/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-online-seed0.yaml --out /work/runs/replication3/runs/online-seed0
humanline-train --config /work/runs/replication3/configs/train-online-seed0.yaml --out /work/runs/replication3/runs/online-seed0 --resume /work/runs/replication3/runs/online-seed0
humanline-train --config /work/runs/replication3/configs/train-stale64-seed0.yaml --out /work/runs/replication3/runs/stale64-seed0
humanline-train export /work/runs/replication3/runs/stale64-seed0 --step 128 --merge --out /work/runs/replication3/runs/stale64-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-seed0 --out /work/runs/replication3/evals/stale64-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/online-seed0 --step 128 --merge --out /work/runs/replication3/runs/online-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/online-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/online-seed0 --out /work/runs/replication3/evals/online-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-data inspect /work/runs/replication3/runs/stale64-seed0/shards/groups/v1 > inspect_stale64_seed0_round0.txt
humanline-train --config /work/runs/replication3/configs/train-stale64-humanline-k1-seed0.yaml --out /work/runs/replication3/runs/stale64-humanline-k1-seed0
humanline-data inspect /work/runs/replication3/runs/online-seed0/shards/groups/v1 > inspect_online_seed0_round0.txt
humanline-train --config /work/runs/replication3/configs/train-stale64-humanline-k4-seed0.yaml --out /work/runs/replication3/runs/stale64-humanline-k4-seed0
humanline-train export /work/runs/replication3/runs/stale64-humanline-k1-seed0 --step 128 --merge --out /work/runs/replication3/runs/stale64-humanline-k1-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-humanline-k1-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-humanline-k1-seed0 --out /work/runs/replication3/evals/stale64-humanline-k1-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/stale64-humanline-k4-seed0 --step 128 --merge --out /work/runs/replication3/runs/stale64-humanline-k4-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-humanline-k4-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-humanline-k4-seed0 --out /work/runs/replication3/evals/stale64-humanline-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-stale64-humanline-k16-seed0.yaml --out /work/runs/replication3/runs/stale64-humanline-k16-seed0
humanline-train --config /work/runs/replication3/configs/train-offline-seed0.yaml --out /work/runs/replication3/runs/offline-seed0
humanline-train export /work/runs/replication3/runs/stale64-humanline-k16-seed0 --step 128 --merge --out /work/runs/replication3/runs/stale64-humanline-k16-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-humanline-k16-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-humanline-k16-seed0 --out /work/runs/replication3/evals/stale64-humanline-k16-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/offline-seed0 --step 128 --merge --out /work/runs/replication3/runs/offline-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-seed0 --out /work/runs/replication3/evals/offline-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-online-seed1.yaml --out /work/runs/replication3/runs/online-seed1
humanline-data inspect /work/runs/replication3/runs/offline-seed0/shards/groups/v1 > inspect_offline_seed0_round0.txt
humanline-train --config /work/runs/replication3/configs/train-stale64-seed1.yaml --out /work/runs/replication3/runs/stale64-seed1
humanline-train export /work/runs/replication3/runs/stale64-seed1 --step 128 --merge --out /work/runs/replication3/runs/stale64-seed1/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-seed1/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-seed1 --out /work/runs/replication3/evals/stale64-seed1.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/online-seed1 --step 128 --merge --out /work/runs/replication3/runs/online-seed1/final-model
humanline-train eval --model /work/runs/replication3/runs/online-seed1/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/online-seed1 --out /work/runs/replication3/evals/online-seed1.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-stale64-humanline-k1-seed1.yaml --out /work/runs/replication3/runs/stale64-humanline-k1-seed1
humanline-train --config /work/runs/replication3/configs/train-stale64-humanline-k4-seed1.yaml --out /work/runs/replication3/runs/stale64-humanline-k4-seed1
humanline-train export /work/runs/replication3/runs/stale64-humanline-k1-seed1 --step 128 --merge --out /work/runs/replication3/runs/stale64-humanline-k1-seed1/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-humanline-k1-seed1/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-humanline-k1-seed1 --out /work/runs/replication3/evals/stale64-humanline-k1-seed1.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/stale64-humanline-k4-seed1 --step 128 --merge --out /work/runs/replication3/runs/stale64-humanline-k4-seed1/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-humanline-k4-seed1/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-humanline-k4-seed1 --out /work/runs/replication3/evals/stale64-humanline-k4-seed1.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-stale64-humanline-k16-seed1.yaml --out /work/runs/replication3/runs/stale64-humanline-k16-seed1
humanline-train --config /work/runs/replication3/configs/train-offline-seed1.yaml --out /work/runs/replication3/runs/offline-seed1
humanline-train export /work/runs/replication3/runs/stale64-humanline-k16-seed1 --step 128 --merge --out /work/runs/replication3/runs/stale64-humanline-k16-seed1/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-humanline-k16-seed1/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-humanline-k16-seed1 --out /work/runs/replication3/evals/stale64-humanline-k16-seed1.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/offline-seed1 --step 128 --merge --out /work/runs/replication3/runs/offline-seed1/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-seed1/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-seed1 --out /work/runs/replication3/evals/offline-seed1.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-online-seed2.yaml --out /work/runs/replication3/runs/online-seed2
humanline-train --config /work/runs/replication3/configs/train-stale64-seed2.yaml --out /work/runs/replication3/runs/stale64-seed2
humanline-train export /work/runs/replication3/runs/stale64-seed2 --step 128 --merge --out /work/runs/replication3/runs/stale64-seed2/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-seed2/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-seed2 --out /work/runs/replication3/evals/stale64-seed2.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/online-seed2 --step 128 --merge --out /work/runs/replication3/runs/online-seed2/final-model
humanline-train eval --model /work/runs/replication3/runs/online-seed2/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/online-seed2 --out /work/runs/replication3/evals/online-seed2.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-offline-seed2.yaml --out /work/runs/replication3/runs/offline-seed2
humanline-train --config /work/runs/replication3/configs/train-online-seed3.yaml --out /work/runs/replication3/runs/online-seed3
humanline-train export /work/runs/replication3/runs/offline-seed2 --step 128 --merge --out /work/runs/replication3/runs/offline-seed2/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-seed2/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-seed2 --out /work/runs/replication3/evals/offline-seed2.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-stale64-seed3.yaml --out /work/runs/replication3/runs/stale64-seed3
humanline-train export /work/runs/replication3/runs/online-seed3 --step 128 --merge --out /work/runs/replication3/runs/online-seed3/final-model
humanline-train eval --model /work/runs/replication3/runs/online-seed3/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/online-seed3 --out /work/runs/replication3/evals/online-seed3.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-offline-seed3.yaml --out /work/runs/replication3/runs/offline-seed3
humanline-train export /work/runs/replication3/runs/stale64-seed3 --step 128 --merge --out /work/runs/replication3/runs/stale64-seed3/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-seed3/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-seed3 --out /work/runs/replication3/evals/stale64-seed3.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-online-seed4.yaml --out /work/runs/replication3/runs/online-seed4
humanline-train export /work/runs/replication3/runs/offline-seed3 --step 128 --merge --out /work/runs/replication3/runs/offline-seed3/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-seed3/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-seed3 --out /work/runs/replication3/evals/offline-seed3.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-stale64-seed4.yaml --out /work/runs/replication3/runs/stale64-seed4
humanline-train export /work/runs/replication3/runs/online-seed4 --step 128 --merge --out /work/runs/replication3/runs/online-seed4/final-model
humanline-train eval --model /work/runs/replication3/runs/online-seed4/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/online-seed4 --out /work/runs/replication3/evals/online-seed4.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/stale64-seed4 --step 128 --merge --out /work/runs/replication3/runs/stale64-seed4/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-seed4/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-seed4 --out /work/runs/replication3/evals/stale64-seed4.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-offline-seed4.yaml --out /work/runs/replication3/runs/offline-seed4
humanline-train export /work/runs/replication3/runs/offline-seed4 --step 128 --merge --out /work/runs/replication3/runs/offline-seed4/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-seed4/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-seed4 --out /work/runs/replication3/evals/offline-seed4.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-offline-humanline-k4-seed0.yaml --out /work/runs/replication3/runs/offline-humanline-k4-seed0
humanline-train --config /work/runs/replication3/configs/train-stale64-sync-only-k4-seed0.yaml --out /work/runs/replication3/runs/stale64-sync-only-k4-seed0
humanline-train --config /work/runs/replication3/configs/train-offline-humanline-k4-seed0.yaml --out /work/runs/replication3/runs/offline-humanline-k4-seed0 --resume /work/runs/replication3/runs/offline-humanline-k4-seed0
humanline-train --config /work/runs/replication3/configs/train-stale64-sync-only-k4-seed0.yaml --out /work/runs/replication3/runs/stale64-sync-only-k4-seed0 --resume /work/runs/replication3/runs/stale64-sync-only-k4-seed0
humanline-train export /work/runs/replication3/runs/offline-humanline-k4-seed0 --step 128 --merge --out /work/runs/replication3/runs/offline-humanline-k4-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-humanline-k4-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-humanline-k4-seed0 --out /work/runs/replication3/evals/offline-humanline-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/stale64-sync-only-k4-seed0 --step 128 --merge --out /work/runs/replication3/runs/stale64-sync-only-k4-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-sync-only-k4-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-sync-only-k4-seed0 --out /work/runs/replication3/evals/stale64-sync-only-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-stale64-clip-only-seed0.yaml --out /work/runs/replication3/runs/stale64-clip-only-seed0
humanline-train --config /work/runs/replication3/configs/train-offline-sync-only-k4-seed0.yaml --out /work/runs/replication3/runs/offline-sync-only-k4-seed0
humanline-train export /work/runs/replication3/runs/stale64-clip-only-seed0 --step 128 --merge --out /work/runs/replication3/runs/stale64-clip-only-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/stale64-clip-only-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/stale64-clip-only-seed0 --out /work/runs/replication3/evals/stale64-clip-only-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/offline-sync-only-k4-seed0 --step 128 --merge --out /work/runs/replication3/runs/offline-sync-only-k4-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-sync-only-k4-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-sync-only-k4-seed0 --out /work/runs/replication3/evals/offline-sync-only-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-offline-clip-only-seed0.yaml --out /work/runs/replication3/runs/offline-clip-only-seed0
humanline-train --config /work/runs/replication3/configs/train-offline-humanline-k4-seed1.yaml --out /work/runs/replication3/runs/offline-humanline-k4-seed1
humanline-train export /work/runs/replication3/runs/offline-clip-only-seed0 --step 128 --merge --out /work/runs/replication3/runs/offline-clip-only-seed0/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-clip-only-seed0/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-clip-only-seed0 --out /work/runs/replication3/evals/offline-clip-only-seed0.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train export /work/runs/replication3/runs/offline-humanline-k4-seed1 --step 128 --merge --out /work/runs/replication3/runs/offline-humanline-k4-seed1/final-model
humanline-train eval --model /work/runs/replication3/runs/offline-humanline-k4-seed1/final-model --prompts /work/runs/replication3/data/test/v1 --scorer math --work /work/runs/replication3/evals/offline-humanline-k4-seed1 --out /work/runs/replication3/evals/offline-humanline-k4-seed1.json --n 1 --temperature 0 --max-new-tokens 16 --batch-size 200
humanline-train --config /work/runs/replication3/configs/train-stale64-sync-only-k4-seed1.yaml --out /work/runs/replication3/runs/stale64-sync-only-k4-seed1
