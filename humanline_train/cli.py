"""``humanline-train``: train (the default command), plus ``plot``, ``eval`` and ``export``.

``humanline-train --shards S --loss dpo --model M --out RUN_DIR`` trains (same as
``humanline-train train ...``) and prints RUN_DIR as the last line of stdout. Subcommands of
other modules are registered from their ``COMMANDS`` lists.
"""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.errors import HumanlineError, OneLineErrorGroup
from humanline_train import checkpoint, objectives, settings


class _DefaultTrainGroup(OneLineErrorGroup):
    """Routes arguments that name no subcommand to ``train``; HumanlineErrors print as one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultTrainGroup)
@click.version_option(package_name="humanline")
def main() -> None:
    """Train DPO/KTO/GRPO (offline, online, humanline) from versioned shards; plot; evaluate; export."""


@main.command("train")
@click.option("--loss", type=click.Choice(objectives.names()), help="Objective (required for a new run).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (new; must not exist or be empty).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in RUN_DIR with its own settings (flags given must match them).")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="YAML settings (settings.json's shape or flat flag names); flags override.")
@click.option("--no-humanline", "no_humanline", is_flag=True, default=None, help="No sync, no clipping: the plain objective.")
@settings.click_options
def train_command(loss: str | None, out: Path | None, resume_dir: Path | None, config_file: Path | None, **flags) -> None:
    """Train a policy; write RUN_DIR (metrics.jsonl, checkpoints/step-N) and print its path."""
    from humanline_train.trainer import train

    ctx = click.get_current_context()
    given = {k: v for k, v in {"loss": loss, **flags}.items()
             if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    if given.pop("no_humanline", False):
        given.update(sync=False, clip=False)
    values = settings.load_config_file(config_file, given.get("loss")) if config_file else {}
    out = out or values.pop("out", None)  # a flag wins over the file's output_dir / out
    values.pop("out", None)
    if resume_dir is None and out is None:
        raise HumanlineError("--out RUN_DIR is required (or --resume RUN_DIR)")
    if resume_dir is not None and out is not None and Path(out).resolve() != Path(resume_dir).resolve():
        raise HumanlineError(f"--out {out} and --resume {resume_dir} name different run directories")
    if resume_dir is not None:
        values = {**settings.flatten(checkpoint.read_settings(resume_dir)), **values}
    values.update(given)
    if "shards" in given:
        values["shards"] = str(Path(given["shards"]).resolve())
    if "loss" not in values:
        raise HumanlineError("--loss is required for a new run")
    config = settings.TrainConfig.from_flat(out=str(resume_dir or out), resume=resume_dir is not None, **values)
    click.echo(str(train(config)))


def _register() -> None:
    from humanline_train import evaluate, export, plot

    for module in (plot, evaluate, export):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
