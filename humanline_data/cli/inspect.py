"""``humanline-data inspect``: the diagnostics report of a version, or SQL over its DuckDB views."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Iterator

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from humanline_data.inspect import diagnostics, query_batches

BAR_WIDTH = 40  # characters of the longest histogram bar
TABLE_ROWS = 1000  # rows shown by --format table (csv and json print all, streamed)


@click.command("inspect")
@click.argument("inp", type=click.Path(path_type=Path))
@click.option("--sql", help="Query over views `data` (this version) and `v1`, `v2`, ... (the dataset's versions).")
@click.option("--unsafe-sql", is_flag=True,
              help="Give --sql DuckDB's full access (other files, COPY TO, ATTACH, extensions); "
                   "by default it reads only this dataset's versions and writes nothing.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table: rich text; csv: header + rows; json: the report object, or one JSON object per result row.")
def inspect(inp: Path, sql: str | None, unsafe_sql: bool, fmt: str) -> None:
    """Report on the version INP (a version dir or dataset dir = latest), or run --sql over it."""
    if sql is None:
        if unsafe_sql:
            raise click.UsageError("--unsafe-sql applies to --sql only")
        if fmt == "csv":
            raise click.UsageError("--format csv needs --sql (the report is table or json)")
        report = diagnostics(inp)
        if fmt == "json":
            click.echo(json.dumps(report, indent=2, default=str))
        else:
            _print_report(report)
    else:
        with query_batches(inp, sql, unsafe=unsafe_sql) as (schema, batches):
            _print_rows(schema, batches, fmt)


def _print_rows(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str) -> None:
    """Print the result rows as they stream in; ``table`` stops reading after the rows it shows."""
    rows = (row for batch in batches for row in zip(*(column.to_pylist() for column in batch.columns)))
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(dict(zip(schema.names, row)), default=str, ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(schema.names)
        writer.writerows(map(_cells, rows))
    else:
        shown = list(itertools.islice(rows, TABLE_ROWS + 1))
        table = Table(*schema.names)
        for row in shown[:TABLE_ROWS]:
            table.add_row(*_cells(row))
        Console().print(table)
        if len(shown) > TABLE_ROWS:
            click.echo(f"... more rows not shown (the first {TABLE_ROWS} are; use --format csv or json for all)")


def _cells(row: tuple) -> list[str]:
    """A result row's values as text: null as empty, lists and structs as JSON."""
    return ["" if v is None else json.dumps(v, default=str, ensure_ascii=False) if isinstance(v, (list, dict)) else str(v)
            for v in row]


def _print_report(report: dict) -> None:
    console = Console()
    console.print(f"[bold]{report['version']}[/bold]  kind {report['kind']}  rows {report['rows']}  "
                  f"prompts {report['prompts']}")
    if report["by_source"]:
        sources = Table(*report["by_source"][0].keys(), title="rows by source")
        for row in report["by_source"]:
            sources.add_row(*(str(v) for v in row.values()))
        console.print(sources)
    stats = Table("column", "count", "min", "p25", "median", "p75", "max", "mean", "std", title="distributions")
    for name, values in report["distributions"].items():
        stats.add_row(name, *(_number(v) for v in values.values()))
    console.print(stats)
    if report.get("margin_histogram"):
        most = max(b["count"] for b in report["margin_histogram"]) or 1
        console.print("margin histogram")
        for i, b in enumerate(report["margin_histogram"], start=1):
            bar = "#" * round(BAR_WIDTH * b["count"] / most)
            close = "]" if i == len(report["margin_histogram"]) else ")"
            console.print(f"  [{b['low']:8.3f}, {b['high']:8.3f}{close}  {bar} {b['count']}", highlight=False)
    facts = {"duplicates": ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["duplicates"].items()) or "-",
             "empty completions": report["empty_completions"]}
    if "truncated" in report:
        facts["truncated (finish_reason=length)"] = (f"{report['truncated']['count']} "
                                                     f"({_number(report['truncated']['fraction'])})")
    for key in ("length_bias_rate", "desirable_fraction"):
        if key in report:
            facts[key.replace("_", " ")] = _number(report[key])
    for key, value in facts.items():
        console.print(f"{key}: {value}", highlight=False)
    lineage = Table("depth", "kind", "path", "command", "status", title="lineage")
    for entry in report["lineage"]:
        lineage.add_row(str(entry["depth"]), entry["kind"] or "?", entry["path"], entry["command"] or "", entry["status"])
    console.print(lineage)


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


COMMANDS = [inspect]
