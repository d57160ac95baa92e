"""Fuzz ``humanline-train`` (hypothesis): generated flag values and ``--config`` files (our keys,
TRL's, unknown ones; every YAML kind of value) on a tiny model and shard.

Every case ends in exit 0 with a run of at most two steps, or in exactly one ``error:`` line (the
last of stderr) and exit 2; never a traceback; nothing is written outside the run directory
(and the reference cache), and the shard stays byte-identical.
"""

from __future__ import annotations

import math
import os

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from real_shards import pair_rows, write
from humanline_train.cli import main
from humanline_train.trl_config import RENAMED

CASES = int(__import__("os").environ.get("FUZZ_TRAIN_CASES", 30))

numbers = st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2, 0.5, 1e-3, 1e30, -0.0, float("nan"), float("inf")]))
words = st.one_of(st.text(max_size=8), st.sampled_from(["", " ", "none", "tensorboard", "cosine", "fp32", "bf16",
                                                        "packed", "copy", "all-linear", "q_proj", "1e-3", "true"]))
scalars = st.one_of(st.none(), st.booleans(), numbers, words)
yaml_values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(words, scalars, max_size=2))

# flags whose value is a number or a word; --max-steps is set to at most 2 unless it is the one fuzzed
VALUED = ["--batch-size", "--grad-accum", "--max-length", "--epochs", "--seed", "--lr", "--max-grad-norm", "--warmup",
          "--lr-scheduler", "--sync-k", "--log-eps-p", "--log-eps-r", "--reference", "--precision", "--layout",
          "--lora-r", "--lora-alpha", "--lora-dropout", "--lora-target-modules", "--beta", "--save-every",
          "--keep-last", "--logging-steps", "--report-to", "--desirable-weight", "--eps-low", "--gamma", "--loss",
          "--samples", "--temperature", "--top-p", "--max-new-tokens", "--scorer", "--refresh-every"]
SWITCHES = ["--no-humanline", "--no-sync", "--no-clip", "--gradient-checkpointing", "--drop-last", "--refresh-async"]
OUR_KEYS = ["lr", "batch_size", "max_steps", "beta", "sync_k", "log_eps_p", "precision", "lora_r", "warmup",
            "lr_scheduler", "humanline", "keep_last", "report_to", "grad_accum", "max_length", "loss", "out", "model"]
flag_args = st.lists(st.tuples(st.sampled_from(VALUED), st.one_of(numbers, words)), max_size=3)
switches = st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True)
config_files = st.one_of(st.none(), st.dictionaries(st.sampled_from(OUR_KEYS + sorted(RENAMED) + ["optimizer", "data",
                                                                                                  "padding_free", "x"]),
                                                    yaml_values, max_size=4))


def _text(value) -> str:
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)


def _tree(root):
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def pairs(shared_data, tmp_path_factory):
    return write(tmp_path_factory.mktemp("shards") / "pairs", "pairs", pair_rows(shared_data, 6))


@settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)
@given(flags=flag_args, on=switches, config=config_files, steps=st.sampled_from([None, 1, 2, 0, -1]))
def test_any_flags_and_config_end_in_a_run_or_one_error_line(pairs, tiny_model, tmp_path_factory, flags, on, config,
                                                             steps):
    base = tmp_path_factory.mktemp("case")
    run = base / "run"
    argv = ["--shards", str(pairs), "--loss", "dpo", "--model", str(tiny_model), "--batch-size", "2", "--max-length", "64"]
    argv += ["--max-steps", str(steps)] if steps is not None else ["--max-steps", "2"]
    for flag, value in flags:
        argv += [flag, _text(value)]
    argv += on
    if config is not None:
        config = {k: v for k, v in config.items() if k not in ("max_steps", "out", "model", "output_dir",
                                                                "model_name_or_path")}
        (base / "run.yaml").write_text(yaml.safe_dump(config))
        argv += ["--config", str(base / "run.yaml")]
    shard_before = _tree(pairs)
    outside = {k: v for k, v in _tree(base).items() if not k.startswith("run")}
    result = CliRunner().invoke(main, [*argv, "--out", str(run)], env={"HUMANLINE_CACHE": str(base / "cache")})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (argv, result.output)
    assert "Traceback" not in result.stderr, argv
    if result.exit_code == 0:
        assert len((run / "metrics.jsonl").read_text().splitlines()) <= 2, argv
    else:
        errors = [line for line in lines if line.startswith("error: ")]
        assert result.exit_code == 2 and len(errors) == 1 and lines[-1] == errors[0], (argv, result.output)
    assert _tree(pairs) == shard_before
    after = {k: v for k, v in _tree(base).items() if not k.startswith(("run", "cache"))}
    assert after == outside, argv
