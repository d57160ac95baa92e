"""``humanline-train``: train (the default command), plus ``plot`` and ``eval``.

``humanline-train --shards S --loss dpo --model M --out RUN_DIR`` trains (same as
``humanline-train train ...``) and prints RUN_DIR as the last line of stdout. Subcommands of
other modules are registered from their ``COMMANDS`` lists.
"""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.cli import _Group
from humanline_data.errors import HumanlineError
from humanline_data.models import EMBEDDED_MODEL


class _DefaultTrainGroup(_Group):
    """Routes arguments that name no subcommand to ``train``; HumanlineErrors print as one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultTrainGroup)
@click.version_option(package_name="humanline")
def main() -> None:
    """Train DPO/KTO/GRPO (offline, online, humanline) from versioned shards; plot; evaluate."""


@main.command("train")
@click.option("--shards", help="Shard version or dataset dir (latest version): pairs, unpaired or groups.")
@click.option("--loss", type=click.Choice(["dpo", "kto", "grpo"]), required=True)
@click.option("--model", default=EMBEDDED_MODEL, show_default=True, help="Embedded model name or local HF folder.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (new; must not exist or be empty).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Continue the run in RUN_DIR.")
@click.option("--reference", type=click.Choice(["lookahead", "copy"]), default="lookahead", show_default=True)
@click.option("--sync-k", type=int, default=1, show_default=True, help="Humanline sync every K optimizer steps.")
@click.option("--log-eps-p", type=float, default=-1.5, show_default=True)
@click.option("--log-eps-r", type=float, default=1.5, show_default=True)
@click.option("--no-humanline", is_flag=True, help="No sync, no clipping: the plain objective.")
@click.option("--max-steps", type=int)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per micro-batch per process.")
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=5e-6, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True)
@click.option("--warmup", type=float, default=0.1, show_default=True, help="< 1: fraction of the steps; >= 1: steps.")
@click.option("--max-length", type=int, default=2048, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--beta", type=float, default=0.1, show_default=True)
@click.option("--desirable-weight", type=float, default=1.1, show_default=True, help="KTO w_D.")
@click.option("--undesirable-weight", type=float, default=1.0, show_default=True, help="KTO w_U.")
@click.option("--eps-low", type=float, default=0.2, show_default=True, help="GRPO ratio clip below.")
@click.option("--eps-high", type=float, default=0.2, show_default=True, help="GRPO ratio clip above.")
@click.option("--beta-kl", type=float, default=0.01, show_default=True, help="GRPO k3 KL weight.")
@click.option("--lora-r", type=int, default=0, show_default=True, help="LoRA rank (0: full fine-tuning).")
@click.option("--gradient-checkpointing", is_flag=True)
@click.option("--save-every", type=int, default=0, show_default=True, help="Checkpoint every N steps (0: end only).")
@click.option("--refresh-every", type=int, help="Online: new shard sampled from the policy every R steps.")
@click.option("--prompts", help="Online: prompts dataset to sample from.")
@click.option("--scorer", help="Online: scorer spec (math, rm:<model>, python:<module>:<function>).")
@click.option("--pair-mode", type=click.Choice(["pairs", "groups", "unpaired"]))
@click.option("--refresh-async", is_flag=True, help="Online: sample the next shard while training (staleness 1).")
@click.option("--refresh-prompts", type=int, default=1024, show_default=True, help="Online: prompts per round.")
@click.option("--samples", type=int, default=8, show_default=True, help="Online: completions per prompt.")
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
def train_command(resume_dir: Path | None, out: Path | None, no_humanline: bool, **options) -> None:
    """Train a policy; write RUN_DIR (metrics.jsonl, checkpoints/step-N) and print its path."""
    from humanline_train.trainer import TrainConfig, train

    if resume_dir is None and out is None:
        raise HumanlineError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if resume_dir is not None and out is not None and Path(out).resolve() != Path(resume_dir).resolve():
        raise HumanlineError(f"--out {out} and --resume {resume_dir} name different run directories")
    run_dir = resume_dir or out
    if options["shards"]:
        options["shards"] = str(Path(options["shards"]).resolve())
    config = TrainConfig(out=str(run_dir), humanline=not no_humanline, resume=resume_dir is not None, **options)
    click.echo(str(train(config)))


def _register() -> None:
    from humanline_train import evaluate, plot

    for module in (plot, evaluate):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
