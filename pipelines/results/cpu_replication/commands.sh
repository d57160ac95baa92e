#!/usr/bin/env bash
# Commands run by the recipe, in order.
set -euo pipefail
humanline-data import runs/cpu-replication/task/arithmetic_train.jsonl --format prompts --split train --out runs/cpu-replication/data/train
humanline-data import runs/cpu-replication/task/arithmetic_test.jsonl --format prompts --split test --out runs/cpu-replication/data/test
humanline-data inspect runs/cpu-replication/data/train/v1 > inspect_train.txt
humanline-data inspect runs/cpu-replication/data/test/v1 > inspect_test.txt
humanline-train eval --model smollm2-135m-instruct --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/initial --out runs/cpu-replication/evals/initial.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 0 --refresh-every 1 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 2 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --no-humanline --out runs/cpu-replication/runs/online-seed0
humanline-train eval --model runs/cpu-replication/runs/online-seed0/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/online-seed0 --out runs/cpu-replication/evals/online-seed0.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 0 --refresh-every 16 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 32 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --no-humanline --out runs/cpu-replication/runs/stale-seed0
humanline-train eval --model runs/cpu-replication/runs/stale-seed0/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale-seed0 --out runs/cpu-replication/evals/stale-seed0.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 0 --refresh-every 16 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 32 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --sync-k 4 --log-eps-p -1.5 --log-eps-r 1.5 --out runs/cpu-replication/runs/stale-humanline-seed0
humanline-train eval --model runs/cpu-replication/runs/stale-humanline-seed0/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale-humanline-seed0 --out runs/cpu-replication/evals/stale-humanline-seed0.json --n 1 --temperature 0 --max-new-tokens 48
humanline-data pair /work/repl/runs/cpu-replication/runs/stale-seed0/shards/scored/v1 --mode pairs --out runs/cpu-replication/data/dpo_pairs
humanline-data inspect runs/cpu-replication/data/dpo_pairs/v1 > inspect_dpo_pairs_seed0.txt
humanline-train --loss dpo --model smollm2-135m-instruct --shards runs/cpu-replication/data/dpo_pairs/v1 --max-steps 16 --epochs 16 --batch-size 2 --lr 1e-05 --beta 0.1 --max-length 256 --max-grad-norm 1.0 --sync-k 4 --log-eps-p -1.5 --log-eps-r 1.5 --seed 0 --out runs/cpu-replication/runs/dpo-humanline-seed0
humanline-train eval --model runs/cpu-replication/runs/dpo-humanline-seed0/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/dpo-humanline-seed0 --out runs/cpu-replication/evals/dpo-humanline-seed0.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 1 --refresh-every 1 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 2 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --no-humanline --out runs/cpu-replication/runs/online-seed1
humanline-train eval --model runs/cpu-replication/runs/online-seed1/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/online-seed1 --out runs/cpu-replication/evals/online-seed1.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 1 --refresh-every 16 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 32 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --no-humanline --out runs/cpu-replication/runs/stale-seed1
humanline-train eval --model runs/cpu-replication/runs/stale-seed1/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale-seed1 --out runs/cpu-replication/evals/stale-seed1.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 1 --refresh-every 16 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 32 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --sync-k 4 --log-eps-p -1.5 --log-eps-r 1.5 --out runs/cpu-replication/runs/stale-humanline-seed1
humanline-train eval --model runs/cpu-replication/runs/stale-humanline-seed1/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale-humanline-seed1 --out runs/cpu-replication/evals/stale-humanline-seed1.json --n 1 --temperature 0 --max-new-tokens 48
humanline-data pair /work/repl/runs/cpu-replication/runs/stale-seed1/shards/scored/v1 --mode pairs --out runs/cpu-replication/data/dpo_pairs
humanline-data inspect runs/cpu-replication/data/dpo_pairs/v2 > inspect_dpo_pairs_seed1.txt
humanline-train --loss dpo --model smollm2-135m-instruct --shards runs/cpu-replication/data/dpo_pairs/v2 --max-steps 16 --epochs 16 --batch-size 2 --lr 1e-05 --beta 0.1 --max-length 256 --max-grad-norm 1.0 --sync-k 4 --log-eps-p -1.5 --log-eps-r 1.5 --seed 1 --out runs/cpu-replication/runs/dpo-humanline-seed1
humanline-train eval --model runs/cpu-replication/runs/dpo-humanline-seed1/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/dpo-humanline-seed1 --out runs/cpu-replication/evals/dpo-humanline-seed1.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 2 --refresh-every 1 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 2 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --no-humanline --out runs/cpu-replication/runs/online-seed2
humanline-train eval --model runs/cpu-replication/runs/online-seed2/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/online-seed2 --out runs/cpu-replication/evals/online-seed2.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 2 --refresh-every 16 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 32 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --no-humanline --out runs/cpu-replication/runs/stale-seed2
humanline-train eval --model runs/cpu-replication/runs/stale-seed2/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale-seed2 --out runs/cpu-replication/evals/stale-seed2.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train --loss grpo --model smollm2-135m-instruct --max-steps 16 --batch-size 8 --grad-accum 2 --lr 1e-05 --max-grad-norm 1.0 --eps-low 0.2 --eps-high 0.2 --beta-kl 0.0001 --max-length 256 --seed 2 --refresh-every 16 --prompts runs/cpu-replication/data/train/v1 --scorer python:/work/repl/pipelines/rewards.py:correct_kept --pair-mode groups --refresh-prompts 32 --samples 8 --temperature 0.7 --top-p 1.0 --max-new-tokens 48 --sync-k 4 --log-eps-p -1.5 --log-eps-r 1.5 --out runs/cpu-replication/runs/stale-humanline-seed2
humanline-train eval --model runs/cpu-replication/runs/stale-humanline-seed2/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/stale-humanline-seed2 --out runs/cpu-replication/evals/stale-humanline-seed2.json --n 1 --temperature 0 --max-new-tokens 48
humanline-data pair /work/repl/runs/cpu-replication/runs/stale-seed2/shards/scored/v1 --mode pairs --out runs/cpu-replication/data/dpo_pairs
humanline-data inspect runs/cpu-replication/data/dpo_pairs/v3 > inspect_dpo_pairs_seed2.txt
humanline-train --loss dpo --model smollm2-135m-instruct --shards runs/cpu-replication/data/dpo_pairs/v3 --max-steps 16 --epochs 16 --batch-size 2 --lr 1e-05 --beta 0.1 --max-length 256 --max-grad-norm 1.0 --sync-k 4 --log-eps-p -1.5 --log-eps-r 1.5 --seed 2 --out runs/cpu-replication/runs/dpo-humanline-seed2
humanline-train eval --model runs/cpu-replication/runs/dpo-humanline-seed2/checkpoints/step-16 --prompts runs/cpu-replication/data/test/v1 --scorer math --work runs/cpu-replication/evals/dpo-humanline-seed2 --out runs/cpu-replication/evals/dpo-humanline-seed2.json --n 1 --temperature 0 --max-new-tokens 48
humanline-train plot runs/cpu-replication/runs/online-seed0 runs/cpu-replication/runs/stale-seed0 runs/cpu-replication/runs/stale-humanline-seed0 runs/cpu-replication/runs/dpo-humanline-seed0 --out runs/cpu-replication/curves.png --metrics loss,kl,unclamped_frac,clip_frac,grad_norm,advantage
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v1 > inspect_online_seed0_round0.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v2 > inspect_online_seed0_round1.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v3 > inspect_online_seed0_round2.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v4 > inspect_online_seed0_round3.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v5 > inspect_online_seed0_round4.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v6 > inspect_online_seed0_round5.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v7 > inspect_online_seed0_round6.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v8 > inspect_online_seed0_round7.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v9 > inspect_online_seed0_round8.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v10 > inspect_online_seed0_round9.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v11 > inspect_online_seed0_round10.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v12 > inspect_online_seed0_round11.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v13 > inspect_online_seed0_round12.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v14 > inspect_online_seed0_round13.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v15 > inspect_online_seed0_round14.txt
humanline-data inspect runs/cpu-replication/runs/online-seed0/shards/groups/v16 > inspect_online_seed0_round15.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v1 > inspect_online_seed1_round0.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v2 > inspect_online_seed1_round1.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v3 > inspect_online_seed1_round2.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v4 > inspect_online_seed1_round3.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v5 > inspect_online_seed1_round4.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v6 > inspect_online_seed1_round5.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v7 > inspect_online_seed1_round6.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v8 > inspect_online_seed1_round7.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v9 > inspect_online_seed1_round8.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v10 > inspect_online_seed1_round9.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v11 > inspect_online_seed1_round10.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v12 > inspect_online_seed1_round11.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v13 > inspect_online_seed1_round12.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v14 > inspect_online_seed1_round13.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v15 > inspect_online_seed1_round14.txt
humanline-data inspect runs/cpu-replication/runs/online-seed1/shards/groups/v16 > inspect_online_seed1_round15.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v1 > inspect_online_seed2_round0.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v2 > inspect_online_seed2_round1.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v3 > inspect_online_seed2_round2.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v4 > inspect_online_seed2_round3.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v5 > inspect_online_seed2_round4.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v6 > inspect_online_seed2_round5.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v7 > inspect_online_seed2_round6.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v8 > inspect_online_seed2_round7.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v9 > inspect_online_seed2_round8.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v10 > inspect_online_seed2_round9.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v11 > inspect_online_seed2_round10.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v12 > inspect_online_seed2_round11.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v13 > inspect_online_seed2_round12.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v14 > inspect_online_seed2_round13.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v15 > inspect_online_seed2_round14.txt
humanline-data inspect runs/cpu-replication/runs/online-seed2/shards/groups/v16 > inspect_online_seed2_round15.txt
humanline-data inspect runs/cpu-replication/runs/stale-seed0/shards/groups/v1 > inspect_stale_seed0_round0.txt
humanline-data inspect runs/cpu-replication/runs/stale-seed1/shards/groups/v1 > inspect_stale_seed1_round0.txt
humanline-data inspect runs/cpu-replication/runs/stale-seed2/shards/groups/v1 > inspect_stale_seed2_round0.txt
humanline-data inspect runs/cpu-replication/runs/stale-humanline-seed0/shards/groups/v1 > inspect_stale_humanline_seed0_round0.txt
humanline-data inspect runs/cpu-replication/runs/stale-humanline-seed1/shards/groups/v1 > inspect_stale_humanline_seed1_round0.txt
humanline-data inspect runs/cpu-replication/runs/stale-humanline-seed2/shards/groups/v1 > inspect_stale_humanline_seed2_round0.txt
