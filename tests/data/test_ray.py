"""The ``ray`` executor: on a real local 2-CPU Ray cluster (started once for this module),
generate and score write the same version, row for row, as the local executor (generate: run
locally with the actors' torch thread count, see :func:`actor_threads`); a killed Ray run
resumes; a worker's error is one line; bad executor flags are refused before anything runs."""

from __future__ import annotations

import contextlib
import functools
import re
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from test_generate import FAST, cli_generate_args, gsm8k_prompts, run_cli
from test_score import USER_SCORER, _gsm8k_items, _math_items, _swap_answers, error_line, write_input

from humanline_data import executors
from humanline_data.backends import GenerationError, SamplingParams
from humanline_data.errors import HumanlineError
from humanline_data.executor_settings import Executor
from humanline_data.generate import ChunkSampler, generate
from humanline_data.ray_executor import pool_size
from humanline_data.scorers import score
from humanline_data.scorers.math_verifier import MathVerifier
from humanline_data.store import list_versions, open_version

RAY = Executor("ray", actors=2)


@contextlib.contextmanager
def actor_threads(executor: Executor = RAY):
    """Run the block with the torch thread count of ``executor``'s actors. Sampling rounds
    differently with another thread count (``logprob_sum`` in the 6th digit, README "Scaling
    out"), so a local run compared row for row with the actors' must use their count, not torch's
    default (the machine's cores). Ray's rule (``ray._private.utils.set_omp_num_threads_if_unset``):
    an actor inherits OMP_NUM_THREADS when it is set, else gets floor(its CPUs), at least 1."""
    default = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(math.floor(executor.num_cpus_per_actor), 1)))
    try:
        yield
    finally:
        torch.set_num_threads(default)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'humanline[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def same_version(a: Path, b: Path, differing_stats: tuple[str, ...] = ("seconds", "rows_per_s")) -> None:
    """Both versions hold the same rows in the same order, and the same params and stats
    (apart from ``differing_stats``); only the producer's executor differs."""
    va, vb = open_version(a), open_version(b)
    assert va.read().equals(vb.read())
    assert va.manifest["params"] == vb.manifest["params"]
    assert {k: v for k, v in va.manifest["stats"].items() if k not in differing_stats} == {
        k: v for k, v in vb.manifest["stats"].items() if k not in differing_stats
    }
    assert va.manifest["parents"] == vb.manifest["parents"]
    pa_, pb = dict(va.manifest["producer"]), dict(vb.manifest["producer"])
    assert (pa_.pop("executor")["name"], pb.pop("executor")["name"]) == ("local", "ray")
    assert pa_ == pb


def test_score_math_on_ray_equals_local(ray_cluster, shared_data, tmp_path):
    items = _math_items(shared_data, n_train=40, seed=2)[:40] + _swap_answers(_gsm8k_items(shared_data, n=20))
    inp = write_input(tmp_path / "c", items)
    local = score(inp, tmp_path / "local", "math", batch_size=8, format_weight=0.5)
    on_ray = score(inp, tmp_path / "ray", "math", batch_size=8, format_weight=0.5, executor=RAY)
    same_version(local, on_ray)
    rewards = open_version(on_ray).read(columns=["reward"]).column("reward").to_pylist()
    assert sum(r >= 1.0 for r in rewards) >= 38  # the 40 own answers verify, the swapped ones mostly not
    assert open_version(on_ray).manifest["producer"]["executor"]["num_cpus_per_actor"] == 1.0


def test_worker_error_on_ray_is_one_line_and_writes_nothing(ray_cluster, tmp_path):
    inp = write_input(tmp_path / "c", [{"prompt": "a", "completion": "first"}, {"prompt": "b", "completion": "second"}])
    out = tmp_path / "s"
    good = score(inp, out, f"python:{USER_SCORER}:length_reward", executor=RAY)
    result = run_cli("score", inp, "--scorer", f"python:{USER_SCORER}:not_a_float", "--out", out,
                     "--executor", "ray", "--actors", "1")
    assert re.fullmatch(
        rf"error: python scorer python:{re.escape(str(USER_SCORER))}:not_a_float: returned 'good' \(str\), "
        r"expected a float, at row \(prompt_id [0-9a-f]{16}, sample_idx 0\)", error_line(result))
    result = run_cli("score", inp, "--scorer", f"python:{USER_SCORER}:nan_on_second_row", "--out", out,
                     "--executor", "ray", "--batch-size", "1")
    assert error_line(result).startswith("error: row 1 (prompt_id ")
    assert list_versions(out) == [good]
    assert open_version(good).read(columns=["reward"]).column("reward").to_pylist() == [0.05, 0.06]


def test_worker_that_cannot_start_fails_the_run_with_its_error(ray_cluster, tiny_model):
    """A node whose model differs from the driver's (here: the driver's hash is made up)."""
    sampler = functools.partial(ChunkSampler.load, str(tiny_model), "0" * 16, "transformers", SamplingParams(), {})
    pieces = [(k, pa.table({"prompt_id": [f"p{k}"]})) for k in range(2)]
    with pytest.raises(GenerationError, match=r"has content hash [0-9a-f]{16}, the driver's has 0{16}; every worker"):
        list(executors.run(RAY, sampler, pieces))


def test_math_timeouts_hold_off_the_main_thread():
    """Ray Data calls a worker from a thread, where signal-based timeouts cannot fire; the math
    scorer then verifies in a process, so an answer sympy would chew on for ages still times out."""
    rows = [{"completion": "The answer is $(x+1)^{100000}$.", "answer": "1"},
            {"completion": "#### 7", "answer": "7"}]
    verifier, out = MathVerifier(), {}
    worker = threading.Thread(target=lambda: out.update(results=verifier(rows)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(60)
    verifier.close()
    assert not worker.is_alive(), "verification off the main thread ran without its timeout"
    assert out["results"] == [(0.0, {"correct": 0.0, "format": 1.0}), (1.0, {"correct": 1.0, "format": 1.0})]
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_generate_embedded_model_on_ray_equals_local(ray_cluster, shared_data, embedded_model, tmp_path):
    prompts = gsm8k_prompts(shared_data, tmp_path, count=4)
    opts = dict(n=2, max_new_tokens=8, temperature=0.7, top_p=0.95, seed=0, backend="transformers", batch_size=1)
    with actor_threads():
        local = generate(prompts, tmp_path / "local", "smollm2-135m-instruct", **opts)
    on_ray = generate(prompts, tmp_path / "ray", "smollm2-135m-instruct", executor=RAY, **opts)
    same_version(local, on_ray)
    assert open_version(on_ray).read().num_rows == 8 - open_version(on_ray).manifest["stats"]["empty_completions"]
    assert "transformers" in open_version(on_ray).manifest["producer"]["versions"]


@pytest.mark.slow  # a Ray driver in a subprocess, killed, then the run again: ~60 s on 2 shared cores
def test_killed_ray_generate_resumes_to_the_local_result(ray_cluster, shared_data, tiny_model, tmp_path):
    prompts = gsm8k_prompts(shared_data, tmp_path, count=8)
    out = tmp_path / "resumed"
    opts = {**FAST, "batch_size": 1, "max_new_tokens": 16}
    args = [sys.executable, "-c", "from humanline_data.cli import main; main()",
            *cli_generate_args(prompts, out, tiny_model, **opts), "--executor", "ray", "--actors", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(out.glob(".partial-*/chunk-*.parquet"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(out.glob(".partial-*/chunk-*.parquet")))
    assert 2 <= written < 8, "the kill must land mid-run"
    assert list_versions(out) == []

    resumed = generate(prompts, out, tiny_model, executor=RAY, **opts)  # the same job, run again
    assert open_version(resumed).manifest["stats"]["resumed_chunks"] == written
    with actor_threads():
        local = generate(prompts, tmp_path / "local", tiny_model, **opts)
    same_version(local, resumed, differing_stats=("resumed_chunks",))
    assert not list(out.glob(".partial-*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--actors", "2"], "error: --actors applies to --executor ray only"),
        (["--num-gpus-per-actor", "1"], "error: --num-gpus-per-actor applies to --executor ray only"),
        (["--executor", "ray", "--actors", "0"], "error: --actors must be >= 1, got 0"),
        (["--executor", "ray", "--num-cpus-per-actor", "-1"], "error: --num-cpus-per-actor must be >= 0, got -1"),
    ],
)
def test_bad_executor_flags_are_one_line_errors(tmp_path, flags, message):
    inp = write_input(tmp_path / "c", [{"prompt": "a", "completion": "#### 1", "answer": "1"}])
    done = score(inp, tmp_path / "s", "math")
    for command in (["score", inp, "--scorer", "math"], ["generate", inp, "--model", "smollm2-135m-instruct"]):
        result = run_cli(*command, "--out", tmp_path / "s", *flags)
        assert error_line(result) == message
    assert list_versions(tmp_path / "s") == [done]


def test_pool_size_fits_the_cluster():
    cluster = {"CPU": 8.0, "GPU": 2.0}
    assert pool_size(Executor("ray"), 100, cluster) == 8
    assert pool_size(Executor("ray"), 3, cluster) == 3  # never more actors than pieces
    assert pool_size(Executor("ray", num_gpus_per_actor=1), 100, cluster) == 2
    assert pool_size(Executor("ray", num_cpus_per_actor=0, num_gpus_per_actor=0.5), 100, cluster) == 4
    assert pool_size(Executor("ray", actors=5, num_gpus_per_actor=1), 100, cluster) == 5  # asked for: waits
    with pytest.raises(HumanlineError, match=r"has 8 CPUs and 0 GPUs, less than one actor needs \(1 CPUs, 1 GPUs\)"):
        pool_size(Executor("ray", num_gpus_per_actor=1), 100, {"CPU": 8.0})
