"""``humanline-data gc``: remove what dead writers left in datasets (``.tmp-*`` folders)."""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.errors import HumanlineError
from humanline_data.store import collect_garbage, is_dataset


@click.command("gc")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
def gc(datasets: tuple[Path, ...]) -> None:
    """Remove the temporary folders of killed writers in DATASETS (<root>/<name>); folders of
    writers still running, and anything not marked as a humanline-data temporary folder, are
    kept. A folder that is not a dataset is refused before anything is removed. Prints each
    folder removed and the total freed."""
    for dataset in datasets:
        if not dataset.is_dir() or not is_dataset(dataset):
            raise HumanlineError(
                f"{dataset}: not a dataset folder (no versions and no temporary folders of humanline-data); nothing removed"
            )
    total = count = 0
    for dataset in datasets:
        for path, size in collect_garbage(dataset):
            click.echo(f"removed {path} ({size} bytes)")
            total, count = total + size, count + 1
    click.echo(f"freed {total} bytes in {count} temporary folders")


COMMANDS = [gc]
