"""``humanline-data``: one click command per stage; each parses flags, calls its stage
function, and prints the path of the version it wrote as the last line of stdout."""

from __future__ import annotations

import sys

import click

from humanline_data.errors import HumanlineError


class _Group(click.Group):
    """Turns a :class:`HumanlineError` or a usage error into ``error: <one line>`` on stderr and
    exit status 2 (click's own usage errors would print three lines)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:  # --help, --version
            sys.exit(done.exit_code)
        except click.ClickException as err:
            click.echo(f"error: {' '.join(err.format_message().split())}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HumanlineError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="humanline")
def main() -> None:
    """Curate alignment data into versioned Parquet shards (data/<name>/vN/)."""


def _register() -> None:
    from humanline_data.cli import gc, generate, inspect, ingest, pair, score, versions

    for module in (ingest, generate, score, pair, inspect, versions, gc):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
