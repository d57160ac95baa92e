"""``humanline-data gc``: remove what dead writers left in datasets (``.tmp-*`` folders)."""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.errors import HumanlineError
from humanline_data.store import collect_garbage


@click.command("gc")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
def gc(datasets: tuple[Path, ...]) -> None:
    """Remove the temporary folders of killed writers in DATASETS (<root>/<name>); folders of
    writers still running are kept. Prints each folder removed and the total freed."""
    total = count = 0
    for dataset in datasets:
        if not dataset.is_dir():
            raise HumanlineError(f"{dataset}: not a dataset folder")
        for path, size in collect_garbage(dataset):
            click.echo(f"removed {path} ({size} bytes)")
            total, count = total + size, count + 1
    click.echo(f"freed {total} bytes in {count} temporary folders")


COMMANDS = [gc]
