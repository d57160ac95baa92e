"""``humanline-data``: one click command per stage; each parses flags, calls its stage
function, and prints the path of the version it wrote as the last line of stdout."""

from __future__ import annotations

import click

from humanline_data.errors import OneLineErrorGroup


@click.group(cls=OneLineErrorGroup)
@click.version_option(package_name="humanline")
def main() -> None:
    """Curate alignment data into versioned Parquet shards (data/<name>/vN/)."""


def _register() -> None:
    from humanline_data.cli import export, gc, generate, inspect, ingest, pair, score, versions

    for module in (ingest, generate, score, pair, inspect, versions, export, gc):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
