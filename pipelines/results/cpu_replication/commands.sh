#!/usr/bin/env bash
# Commands run by the recipe, in order.
set -euo pipefail
humanline-data import /work/runs/cpu-replication/task/train.jsonl --format prompts --split train --out /work/runs/cpu-replication/data/train
humanline-data import /work/runs/cpu-replication/task/test.jsonl --format prompts --split test --out /work/runs/cpu-replication/data/test
humanline-data inspect /work/runs/cpu-replication/data/train/v1 > inspect_train.txt
humanline-data inspect /work/runs/cpu-replication/data/test/v1 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts /work/runs/cpu-replication/data/test/v1 --scorer math --work /work/runs/cpu-replication/evals/initial --out /work/runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config /work/runs/cpu-replication/configs/train-online-seed0.yaml --out /work/runs/cpu-replication/runs/online-seed0
humanline-train eval --model /work/runs/cpu-replication/runs/online-seed0/checkpoints/step-128 --prompts /work/runs/cpu-replication/data/test/v1 --scorer math --work /work/runs/cpu-replication/evals/online-seed0 --out /work/runs/cpu-replication/evals/online-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect /work/runs/cpu-replication/runs/online-seed0/shards/groups/v1 > inspect_online_seed0_round0.txt
humanline-train --config /work/runs/cpu-replication/configs/train-online-seed1.yaml --out /work/runs/cpu-replication/runs/online-seed1
humanline-data import /work/runs/cpu-replication/task/train.jsonl --format prompts --split train --out /work/runs/cpu-replication/data/train
humanline-data import /work/runs/cpu-replication/task/test.jsonl --format prompts --split test --out /work/runs/cpu-replication/data/test
humanline-data inspect /work/runs/cpu-replication/data/train/v2 > inspect_train.txt
humanline-data inspect /work/runs/cpu-replication/data/test/v2 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts /work/runs/cpu-replication/data/test/v2 --scorer math --work /work/runs/cpu-replication/evals/initial --out /work/runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data import /work/runs/cpu-replication/task/train.jsonl --format prompts --split train --out /work/runs/cpu-replication/data/train
humanline-data import /work/runs/cpu-replication/task/test.jsonl --format prompts --split test --out /work/runs/cpu-replication/data/test
humanline-data inspect /work/runs/cpu-replication/data/train/v3 > inspect_train.txt
humanline-data inspect /work/runs/cpu-replication/data/test/v3 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts /work/runs/cpu-replication/data/test/v3 --scorer math --work /work/runs/cpu-replication/evals/initial --out /work/runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16
humanline-train --config /work/runs/cpu-replication/configs/train-stale16-seed0.yaml --out /work/runs/cpu-replication/runs/stale16-seed0
humanline-train eval --model /work/runs/cpu-replication/runs/stale16-seed0/checkpoints/step-128 --prompts /work/runs/cpu-replication/data/test/v3 --scorer math --work /work/runs/cpu-replication/evals/stale16-seed0 --out /work/runs/cpu-replication/evals/stale16-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect /work/runs/cpu-replication/runs/stale16-seed0/shards/groups/v1 > inspect_stale16_seed0_round0.txt
humanline-train --config /work/runs/cpu-replication/configs/train-stale16-humanline-k4-seed0.yaml --out /work/runs/cpu-replication/runs/stale16-humanline-k4-seed0
humanline-train eval --model /work/runs/cpu-replication/runs/stale16-humanline-k4-seed0/checkpoints/step-128 --prompts /work/runs/cpu-replication/data/test/v3 --scorer math --work /work/runs/cpu-replication/evals/stale16-humanline-k4-seed0 --out /work/runs/cpu-replication/evals/stale16-humanline-k4-seed0.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data inspect /work/runs/cpu-replication/runs/stale16-humanline-k4-seed0/shards/groups/v1 > inspect_stale16-humanline-k4_seed0_round0.txt
humanline-train --config /work/runs/cpu-replication/configs/train-stale16-humanline-k1-seed0.yaml --out /work/runs/cpu-replication/runs/stale16-humanline-k1-seed0
humanline-data import /work/runs/cpu-replication/task/train.jsonl --format prompts --split train --out /work/runs/cpu-replication/data/train
humanline-data import /work/runs/cpu-replication/task/test.jsonl --format prompts --split test --out /work/runs/cpu-replication/data/test
humanline-data inspect /work/runs/cpu-replication/data/train/v4 > inspect_train.txt
humanline-data inspect /work/runs/cpu-replication/data/test/v4 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts /work/runs/cpu-replication/data/test/v4 --scorer math --work /work/runs/cpu-replication/evals/initial --out /work/runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16
humanline-data import /work/runs/cpu-replication/task/train.jsonl --format prompts --split train --out /work/runs/cpu-replication/data/train
humanline-data import /work/runs/cpu-replication/task/test.jsonl --format prompts --split test --out /work/runs/cpu-replication/data/test
humanline-data inspect /work/runs/cpu-replication/data/train/v5 > inspect_train.txt
humanline-data inspect /work/runs/cpu-replication/data/test/v5 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts /work/runs/cpu-replication/data/test/v5 --scorer math --work /work/runs/cpu-replication/evals/initial --out /work/runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 16
