"""``humanline-data import``: outside data -> the next version of a dataset (see importers)."""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.formats import FORMATS
from humanline_data.importers import import_sources
from humanline_data.store import read_manifest


@click.command("import")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="auto", show_default=True,
              help=f"Source format: {', '.join(FORMATS)} (auto: from the columns of each file's first record).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset to write: <root>/<name>.")
@click.option("--split", default=None, help="Split of prompts/completions (default: from the record or file name).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Read at most N records in all.")
@click.option("--skip-invalid", is_flag=True, help="Skip records that break the contract (counted in stats).")
def import_(sources: tuple[Path, ...], fmt: str, out: Path, split: str | None, limit: int | None,
            skip_invalid: bool) -> None:
    """Import SOURCES (JSON, JSON lines, .gz, Parquet, or dataset versions) into OUT/vN."""
    version = import_sources(list(sources), out, fmt=fmt, split=split, limit=limit, skip_invalid=skip_invalid)
    manifest = read_manifest(version)
    stats = manifest["stats"]
    skipped = ", ".join(f"{k} {v}" for k, v in stats["skipped"].items()) or "none"
    click.echo(f"imported {stats['rows_written']} {manifest['kind']} rows of {stats['rows_read']} read; skipped: {skipped}")
    click.echo(str(version))


COMMANDS = [import_]
