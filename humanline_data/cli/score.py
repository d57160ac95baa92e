"""``humanline-data score``: reward every completion with a verifier, a reward model or a function."""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.cli.executor_options import executor_options


@click.command("score")
@click.argument("inp", metavar="IN", type=click.Path(path_type=Path))
@click.option("--scorer", required=True, metavar="SPEC",
              help="math | rm:<model folder> | python:<module or file.py>:<function>")
@click.option("--batch-size", default=16, show_default=True, type=int, help="Rows per scorer call.")
@click.option("--format-weight", default=0.0, show_default=True, type=float,
              help="math only: weight of the final-answer-marker component added to the reward.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="math only: processes that verify answers in parallel (per actor under --executor ray).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dataset <root>/<name>.")
@executor_options
def score(inp: Path, scorer: str, batch_size: int, format_weight: float, workers: int, out: Path, executor) -> None:
    """Score the completions (or re-score the scored rows) of IN; write kind scored to --out."""
    from humanline_data.scorers import score as run

    click.echo(run(inp, out, scorer, batch_size=batch_size, format_weight=format_weight,
                   workers=workers, executor=executor))


COMMANDS = [score]
