"""The example accelerate configs load with accelerate's own config reader and launch parser."""

from __future__ import annotations

from pathlib import Path

from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _launch_args(name: str):
    argv = ["--config_file", str(CONFIGS / name), "-m", "humanline_train.cli", "--shards", "data/shards"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args


def test_fsdp_config_is_fsdp2_full_shard_transformer_wrap_env():
    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert config.distributed_type == "FSDP"
    env = prepare_multi_gpu_env(_launch_args("fsdp.yaml"))
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "2"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_deepspeed_config_is_zero2_with_clipping():
    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.distributed_type == "DEEPSPEED"
    assert config.deepspeed_config["zero_stage"] == 2
    assert config.deepspeed_config["gradient_clipping"] == 1.0
    args = _launch_args("deepspeed_zero2.yaml")
    assert args.use_deepspeed and args.zero_stage == 2 and args.num_processes == 8
