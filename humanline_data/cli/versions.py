"""``humanline-data versions``: list a dataset's versions with kinds, counts and lineage."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from humanline_data.errors import CorruptVersionError, HumanlineError
from humanline_data.store import list_versions, verify


@click.command("versions")
@click.argument("dataset", type=click.Path(path_type=Path))
def versions(dataset: Path) -> None:
    """List versions of DATASET (<root>/<name>) with kind, rows, creation time and parents;
    a folder whose manifest is missing, malformed or names another version, or whose parts'
    footers disagree with its kind or rows, is listed as broken (checksums are not computed)."""
    found = list_versions(dataset)
    if not found:
        raise HumanlineError(f"{dataset}: no versions")
    table = Table("version", "kind", "rows", "created_at", "parents")
    for path in found:
        try:
            m = verify(path, checksums=False)
        except CorruptVersionError as err:
            table.add_row(path.name, "broken", "-", "-", str(err))
            continue
        parents = ", ".join(f"{Path(p['path']).parent.name}/v{p.get('version')} ({p.get('kind')})" for p in m["parents"])
        table.add_row(path.name, m["kind"], str(m["rows"]), str(m.get("created_at", "-")), parents or "-")
    Console().print(table)


COMMANDS = [versions]
