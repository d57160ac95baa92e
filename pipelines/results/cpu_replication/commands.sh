#!/usr/bin/env bash
# Commands run by the recipe, in order.
set -euo pipefail
humanline-data import runs/cpu-replication/task/train.jsonl --format prompts --split train --out runs/cpu-replication/data/train
humanline-data import runs/cpu-replication/task/test.jsonl --format prompts --split test --out runs/cpu-replication/data/test
humanline-data inspect runs/cpu-replication/data/train/v1 > inspect_train.txt
humanline-data inspect runs/cpu-replication/data/test/v1 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/initial --out runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-seed0.yaml --out runs/cpu-replication/runs/stale16-seed0
humanline-train --config runs/cpu-replication/configs/train-online-seed0.yaml --out runs/cpu-replication/runs/online-seed0
humanline-train eval --model runs/cpu-replication/runs/stale16-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-seed0 --out runs/cpu-replication/evals/stale16-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect runs/cpu-replication/runs/stale16-seed0/shards/groups/v1 > inspect_stale16_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k1-seed0.yaml --out runs/cpu-replication/runs/stale16-humanline-k1-seed0
humanline-train eval --model runs/cpu-replication/runs/online-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/online-seed0 --out runs/cpu-replication/evals/online-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v1 > inspect_online_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k4-seed0.yaml --out runs/cpu-replication/runs/stale16-humanline-k4-seed0
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k1-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k1-seed0 --out runs/cpu-replication/evals/stale16-humanline-k1-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect runs/cpu-replication/runs/stale16-humanline-k1-seed0/shards/groups/v1 > inspect_stale16-humanline-k1_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k16-seed0.yaml --out runs/cpu-replication/runs/stale16-humanline-k16-seed0
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k4-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k4-seed0 --out runs/cpu-replication/evals/stale16-humanline-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect runs/cpu-replication/runs/stale16-humanline-k4-seed0/shards/groups/v1 > inspect_stale16-humanline-k4_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-offline-seed0.yaml --out runs/cpu-replication/runs/offline-seed0
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k16-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k16-seed0 --out runs/cpu-replication/evals/stale16-humanline-k16-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect runs/cpu-replication/runs/stale16-humanline-k16-seed0/shards/groups/v1 > inspect_stale16-humanline-k16_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-online-seed1.yaml --out runs/cpu-replication/runs/online-seed1
humanline-train eval --model runs/cpu-replication/runs/offline-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/offline-seed0 --out runs/cpu-replication/evals/offline-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect runs/cpu-replication/runs/offline-seed0/shards/groups/v1 > inspect_offline_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-stale16-seed1.yaml --out runs/cpu-replication/runs/stale16-seed1
humanline-train eval --model runs/cpu-replication/runs/online-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/online-seed1 --out runs/cpu-replication/evals/online-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/stale16-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-seed1 --out runs/cpu-replication/evals/stale16-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k1-seed1.yaml --out runs/cpu-replication/runs/stale16-humanline-k1-seed1
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k4-seed1.yaml --out runs/cpu-replication/runs/stale16-humanline-k4-seed1
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k4-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k4-seed1 --out runs/cpu-replication/evals/stale16-humanline-k4-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k1-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k1-seed1 --out runs/cpu-replication/evals/stale16-humanline-k1-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k16-seed1.yaml --out runs/cpu-replication/runs/stale16-humanline-k16-seed1
humanline-train --config runs/cpu-replication/configs/train-offline-seed1.yaml --out runs/cpu-replication/runs/offline-seed1
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k16-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k16-seed1 --out runs/cpu-replication/evals/stale16-humanline-k16-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-online-seed2.yaml --out runs/cpu-replication/runs/online-seed2
humanline-train eval --model runs/cpu-replication/runs/offline-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/offline-seed1 --out runs/cpu-replication/evals/offline-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-seed2.yaml --out runs/cpu-replication/runs/stale16-seed2
humanline-train eval --model runs/cpu-replication/runs/online-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/online-seed2 --out runs/cpu-replication/evals/online-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/stale16-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-seed2 --out runs/cpu-replication/evals/stale16-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k1-seed2.yaml --out runs/cpu-replication/runs/stale16-humanline-k1-seed2
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k4-seed2.yaml --out runs/cpu-replication/runs/stale16-humanline-k4-seed2
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k1-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k1-seed2 --out runs/cpu-replication/evals/stale16-humanline-k1-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k4-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k4-seed2 --out runs/cpu-replication/evals/stale16-humanline-k4-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-humanline-k16-seed2.yaml --out runs/cpu-replication/runs/stale16-humanline-k16-seed2
humanline-train --config runs/cpu-replication/configs/train-offline-seed2.yaml --out runs/cpu-replication/runs/offline-seed2
humanline-train eval --model runs/cpu-replication/runs/stale16-humanline-k16-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-humanline-k16-seed2 --out runs/cpu-replication/evals/stale16-humanline-k16-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/offline-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/offline-seed2 --out runs/cpu-replication/evals/offline-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-sync-only-k4-seed0.yaml --out runs/cpu-replication/runs/stale16-sync-only-k4-seed0
humanline-train --config runs/cpu-replication/configs/train-stale16-clip-only-seed0.yaml --out runs/cpu-replication/runs/stale16-clip-only-seed0
humanline-train eval --model runs/cpu-replication/runs/stale16-sync-only-k4-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-sync-only-k4-seed0 --out runs/cpu-replication/evals/stale16-sync-only-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/stale16-clip-only-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-clip-only-seed0 --out runs/cpu-replication/evals/stale16-clip-only-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect runs/cpu-replication/runs/stale16-sync-only-k4-seed0/shards/groups/v1 > inspect_stale16-sync-only-k4_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-stale16-sync-only-k4-seed1.yaml --out runs/cpu-replication/runs/stale16-sync-only-k4-seed1
humanline-data inspect runs/cpu-replication/runs/stale16-clip-only-seed0/shards/groups/v1 > inspect_stale16-clip-only_seed0_round0.txt
humanline-train --config runs/cpu-replication/configs/train-stale16-clip-only-seed1.yaml --out runs/cpu-replication/runs/stale16-clip-only-seed1
humanline-train eval --model runs/cpu-replication/runs/stale16-sync-only-k4-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-sync-only-k4-seed1 --out runs/cpu-replication/evals/stale16-sync-only-k4-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/stale16-clip-only-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-clip-only-seed1 --out runs/cpu-replication/evals/stale16-clip-only-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-stale16-sync-only-k4-seed2.yaml --out runs/cpu-replication/runs/stale16-sync-only-k4-seed2
humanline-train --config runs/cpu-replication/configs/train-stale16-clip-only-seed2.yaml --out runs/cpu-replication/runs/stale16-clip-only-seed2
humanline-train eval --model runs/cpu-replication/runs/stale16-clip-only-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-clip-only-seed2 --out runs/cpu-replication/evals/stale16-clip-only-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/stale16-sync-only-k4-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale16-sync-only-k4-seed2 --out runs/cpu-replication/evals/stale16-sync-only-k4-seed2.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data import runs/cpu-replication/task/train.jsonl --format prompts --split train --out runs/cpu-replication/data/train
humanline-data import runs/cpu-replication/task/test.jsonl --format prompts --split test --out runs/cpu-replication/data/test
humanline-data inspect runs/cpu-replication/data/train/v2 > inspect_train.txt
humanline-data inspect runs/cpu-replication/data/test/v2 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts runs/cpu-replication/data/test/v2 --scorer math --work runs/cpu-replication/evals/initial --out runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-offline-humanline-k4-seed0.yaml --out runs/cpu-replication/runs/offline-humanline-k4-seed0
humanline-train --config runs/cpu-replication/configs/train-offline-humanline-k4-seed1.yaml --out runs/cpu-replication/runs/offline-humanline-k4-seed1
humanline-train eval --model runs/cpu-replication/runs/offline-humanline-k4-seed1/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v2 --scorer math --work runs/cpu-replication/evals/offline-humanline-k4-seed1 --out runs/cpu-replication/evals/offline-humanline-k4-seed1.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train eval --model runs/cpu-replication/runs/offline-humanline-k4-seed0/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v2 --scorer math --work runs/cpu-replication/evals/offline-humanline-k4-seed0 --out runs/cpu-replication/evals/offline-humanline-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config runs/cpu-replication/configs/train-offline-humanline-k4-seed2.yaml --out runs/cpu-replication/runs/offline-humanline-k4-seed2
humanline-data inspect runs/cpu-replication/runs/offline-humanline-k4-seed0/shards/groups/v1 > inspect_offline-humanline-k4_seed0_round0.txt
humanline-train eval --model runs/cpu-replication/runs/offline-humanline-k4-seed2/checkpoints/step-128 --prompts runs/cpu-replication/data/test/v2 --scorer math --work runs/cpu-replication/evals/offline-humanline-k4-seed2 --out runs/cpu-replication/evals/offline-humanline-k4-seed2.json --n 1 --temperature 0 --max-new-tokens 16
