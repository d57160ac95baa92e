"""``humanline-data pair``: pairs / groups / unpaired rows from a scored version."""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.pair import MIN_GROUP_SIZE, MODES, THRESHOLD, build
from humanline_data.store import read_manifest


@click.command("pair")
@click.argument("inp", type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(MODES), default="pairs", show_default=True,
              help="pairs (DPO), groups (GRPO, with advantages) or unpaired (KTO).")
@click.option("--threshold", type=float, default=THRESHOLD, show_default=True,
              help="pairs/unpaired: keep a prompt when max - min reward exceeds this.")
@click.option("--min-group-size", type=int, default=MIN_GROUP_SIZE, show_default=True,
              help="groups: drop prompts with fewer scored samples.")
@click.option("--keep-flat", is_flag=True, help="groups: keep groups whose rewards are all equal.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="<root>/<name> to write the next version of.")
def pair(inp: Path, mode: str, threshold: float, min_group_size: int, keep_flat: bool, out: Path) -> None:
    """Build training rows from the scored version INP (a version dir or dataset dir = latest)."""
    path = build(inp, out, mode=mode, threshold=threshold, min_group_size=min_group_size, keep_flat=keep_flat)
    stats = read_manifest(path)["stats"]
    dropped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in stats["dropped"].items())
    click.echo(
        f"{mode}: kept {stats['kept_prompts']} of {stats['prompts']} prompts "
        f"({stats['output_rows']} rows); dropped {dropped}",
        err=True,
    )
    click.echo(str(path))


COMMANDS = [pair]
