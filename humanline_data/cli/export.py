"""``humanline-data export``: a version -> one file for another trainer (see exporters, targets)."""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.targets import EXPORT_FORMATS


@click.command("export")
@click.argument("version", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(EXPORT_FORMATS),
              help="trl | openai | openrlhf (JSON lines), verl (Parquet), or this project's own columns "
                   "as jsonl / parquet.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The file to write; never overwritten, and not inside a dataset folder.")
def export(version: Path, fmt: str, out: Path) -> None:
    """Write VERSION (a version dir, or a dataset dir = its latest) as one file in --format at --out."""
    from humanline_data.exporters import export as run

    path, written = run(version, fmt, out)
    click.echo(f"exported {written} {fmt} records", err=True)
    click.echo(str(path))


COMMANDS = [export]
