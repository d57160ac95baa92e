"""DuckDB views over dataset versions, ad-hoc SQL, and the diagnostics report.

Views: ``data`` is the inspected version (its Parquet parts); the
versions of the same dataset are ``v1``, ``v2``, … for joins and comparisons. Every version a
query uses is verified against its manifest first (only the ``vN`` named in the SQL are opened).
DuckDB runs in memory and streams the parts, so reports over 10M rows stay in bounded memory.
A query's result is streamed too (:func:`query_batches`: record batches of
:data:`QUERY_BATCH_ROWS` rows), so printing the first rows of a huge result reads only those.

**Read-only user SQL.** For :func:`query` the views are handed to DuckDB as Arrow datasets,
then DuckDB's ``enable_external_access`` is turned off and its configuration locked: a query
can read those views and nothing else, and cannot write files (``COPY ... TO``), ``ATTACH``
databases, ``INSTALL``/``LOAD`` extensions or turn the setting back on. ``unsafe=True`` (the
CLI's ``--unsafe-sql``) leaves DuckDB's full file access on. The report's own SQL runs over
``read_parquet`` views (faster and leaner than Arrow scans: 1M rows 2.1-2.6 s / 0.5 GB peak
against 2.9-3.2 s / 0.75 GB). Spills go to a private temporary folder removed afterwards.

:func:`diagnostics` returns a JSON-ready dict; which sections it holds depends on the kind:

``rows``, ``prompts``            row count, distinct ``prompt_id``
``by_source``                    rows per source (and split, for kinds that have one)
``distributions``                per numeric column: count (non-null), min, p25, median, p75,
                                 max, mean, std (population): rewards, margin, advantages,
                                 text lengths in characters (``length(<column>)``), group sizes
``margin_histogram``             pairs: 10 equal-width bins from min to max margin
``length_bias_rate``             pairs: fraction of pairs whose chosen text is longer
``desirable_fraction``           unpaired
``duplicates``                   rows repeating a ``prompt_id`` (prompts, pairs, groups);
                                 repeated completion text for the same prompt (by 64-bit hash;
                                 completions, scored, unpaired, groups); pairs with chosen ==
                                 rejected
``empty_completions``            completions that are empty after trimming whitespace
``truncated``                    completions, scored: rows with ``finish_reason = 'length'``
``lineage``                      this version and its ancestors (path, kind, command, depth;
                                 status ``ok`` / ``missing`` / ``changed`` when a parent's
                                 manifest no longer matches the hash its child recorded /
                                 ``broken`` when it is no valid manifest)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from humanline_data.errors import CorruptVersionError, HumanlineError, os_errors
from humanline_data.store import MANIFEST, Version, list_versions, open_version, read_manifest, sha256_file

HISTOGRAM_BINS = 10
QUERY_BATCH_ROWS = 8192  # rows per record batch of a streamed query result
_QUANTILES = ("p25", "median", "p75")
_TEXT_COLUMNS = {"completions": ["completion"], "scored": ["completion"], "unpaired": ["completion"],
                 "pairs": ["chosen", "rejected"]}
_REWARD_COLUMNS = {"scored": ["reward"], "unpaired": ["reward"], "pairs": ["chosen_reward", "rejected_reward", "margin"]}
_HAS_SPLIT = ("prompts", "completions", "scored")
# The rows of a groups version, one per completion.
_GROUP_SAMPLES = ("(SELECT prompt_id, unnest(completions) AS completion, unnest(rewards) AS reward, "
                  "unnest(advantages) AS advantage FROM data)")


class QueryError(HumanlineError):
    """DuckDB rejected a query (syntax, unknown column, ...)."""


@contextlib.contextmanager
def connect(path: str | os.PathLike, sql: str = "", sandboxed: bool = True) -> Iterator[tuple[duckdb.DuckDBPyConnection, Version]]:
    """An in-memory DuckDB with view ``data`` over the version at ``path`` and views ``vN`` over
    the dataset's versions that ``sql`` names, and the opened (verified) version; ``sandboxed``:
    read-only, no file access beyond the views (see the module docstring)."""
    version = open_version(path)
    views = {"data": version}
    for other in list_versions(version.path.parent):
        if re.search(rf"\b{other.name}\b", sql, flags=re.IGNORECASE):
            views[other.name] = version if other == version.path else open_version(other)
    with os_errors(tempfile.gettempdir(), "cannot make a folder for DuckDB's spills"):
        spill = tempfile.mkdtemp(prefix="humanline-duckdb-")  # ours alone, removed below
    con = duckdb.connect(config={"temp_directory": spill})
    try:
        con.execute("SET enable_progress_bar = false")  # it would print into csv/json output
        for name, opened in views.items():
            _add_view(con, name, opened, sandboxed)
        if sandboxed:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        yield con, version
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _add_view(con: duckdb.DuckDBPyConnection, name: str, version: Version, sandboxed: bool) -> None:
    """View ``name`` over ``version``'s parts: an Arrow dataset (readable once file access is
    off) when ``sandboxed``, else DuckDB's own ``read_parquet``."""
    if sandboxed:
        con.register(name, pads.dataset([str(p) for p in version.files], format="parquet"))
        return
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in version.files)
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{files}])")


@contextlib.contextmanager
def query_batches(path: str | os.PathLike, sql: str, unsafe: bool = False,
                  batch_rows: int = QUERY_BATCH_ROWS) -> Iterator[tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
    """The result of ``sql`` over the views of :func:`connect` as its schema (no columns when
    the last statement returns no rows) and an iterator of record batches, which DuckDB
    computes as they are read: stop reading and only what was read was made. A DuckDB error,
    also one while reading, is a :class:`QueryError`."""
    if not sql.strip():
        raise QueryError("SQL: empty query")
    with connect(path, sql, sandboxed=not unsafe) as (con, _):
        with _sql_errors():
            result = con.sql(sql)
            reader = pa.RecordBatchReader.from_batches(pa.schema([]), []) if result is None else result.to_arrow_reader(batch_rows)
        yield reader.schema, _batches(reader)


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    with _sql_errors():
        yield from reader


@contextlib.contextmanager
def _sql_errors() -> Iterator[None]:
    """DuckDB's errors (directly, or through the Arrow stream) as one-line QueryErrors."""
    try:
        yield
    except (duckdb.Error, pa.ArrowException) as exc:
        raise QueryError(f"SQL: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from None


def query(path: str | os.PathLike, sql: str, unsafe: bool = False) -> pa.Table:
    """The whole result of ``sql`` (see :func:`query_batches`) as an Arrow table; for results
    that fit in memory."""
    with query_batches(path, sql, unsafe) as (schema, batches):
        return pa.Table.from_batches(list(batches), schema=schema)


def diagnostics(path: str | os.PathLike) -> dict:
    """The diagnostics report of the version at ``path`` (see the module docstring)."""
    with connect(path, sandboxed=False) as (con, version):  # only this module's own SQL runs
        return {"version": str(version.path), **_report(con, version.kind), "lineage": lineage(version.path)}


def _report(con: duckdb.DuckDBPyConnection, kind: str) -> dict:
    texts, rewards = _TEXT_COLUMNS.get(kind, []), _REWARD_COLUMNS.get(kind, [])
    exprs = {"rows": "count(*)", "prompts": "count(DISTINCT prompt_id)"}
    for column in rewards:
        exprs |= _distribution(column, column)
    for column in texts:
        exprs |= _distribution(f"length({column})", f"length({column})")
    exprs["empty_completions"] = " + ".join(_count_empty(c) for c in texts) or "0"
    if kind in ("prompts", "pairs", "groups"):
        exprs["duplicate_prompt_rows"] = "count(*) - count(DISTINCT prompt_id)"
    if kind in ("completions", "scored", "unpaired"):
        exprs["duplicate_completions"] = "count(*) - count(DISTINCT (prompt_id, hash(completion)))"
    if kind in ("completions", "scored"):
        exprs["truncated"] = "count(*) FILTER (WHERE finish_reason = 'length')"
    if kind == "pairs":
        exprs["chosen_equals_rejected"] = "count(*) FILTER (WHERE chosen = rejected)"
        exprs["length_bias_rate"] = "avg(CASE WHEN length(chosen) > length(rejected) THEN 1.0 ELSE 0.0 END)"
    if kind == "unpaired":
        exprs["desirable_fraction"] = "avg(CASE WHEN desirable THEN 1.0 ELSE 0.0 END)"
    if kind == "groups":
        exprs |= _distribution("len(completions)", "group_size")
        exprs["duplicate_completions"] = "sum(len(completions) - len(list_distinct(completions)))"
    values = _aggregate(con, "data", exprs)
    if kind == "groups":
        values |= _aggregate(con, _GROUP_SAMPLES, {
            **_distribution("reward", "reward"), **_distribution("advantage", "advantage"),
            **_distribution("length(completion)", "length(completion)"),
            "empty_completions": _count_empty("completion"),
        })
    report = {"kind": kind, "rows": values.pop("rows"), "prompts": values.pop("prompts"),
              "by_source": _by_source(con, kind), "distributions": _nest_distributions(values)}
    duplicates = {k: values.pop(k) for k in ("duplicate_prompt_rows", "duplicate_completions", "chosen_equals_rejected")
                  if k in values}
    report["duplicates"] = {k.removeprefix("duplicate_"): int(v or 0) for k, v in duplicates.items()}
    report["empty_completions"] = int(values.pop("empty_completions") or 0)
    if "truncated" in values:
        count = values.pop("truncated")
        report["truncated"] = {"count": count, "fraction": count / report["rows"] if report["rows"] else None}
    report |= values
    if kind == "pairs":
        report["margin_histogram"] = _histogram(con, "margin", report["distributions"]["margin"])
    return report


def _distribution(expr: str, name: str) -> dict[str, str]:
    """Aggregate expressions (keyed ``name|stat``) describing the distribution of ``expr``."""
    return {
        f"{name}|count": f"count({expr})",
        f"{name}|min": f"min({expr})",
        f"{name}|quantiles": f"quantile_cont({expr}, [0.25, 0.5, 0.75])",
        f"{name}|max": f"max({expr})",
        f"{name}|mean": f"avg({expr})",
        f"{name}|std": f"stddev_pop({expr})",
    }


def _nest_distributions(values: dict) -> dict[str, dict]:
    """Pop the ``name|stat`` entries of ``values`` into ``{name: {count, min, p25, ..., std}}``."""
    nested: dict[str, dict] = {}
    for key in [k for k in values if "|" in k]:
        name, stat = key.split("|")
        value = values.pop(key)
        if stat == "quantiles":
            nested.setdefault(name, {}).update(zip(_QUANTILES, value or [None] * 3))
        else:
            nested.setdefault(name, {})[stat] = value
    order = ("count", "min", *_QUANTILES, "max", "mean", "std")
    return {name: {s: stats[s] for s in order} for name, stats in nested.items()}


def _count_empty(column: str) -> str:
    return f"count(*) FILTER (WHERE length(trim({column})) = 0)"


def _aggregate(con: duckdb.DuckDBPyConnection, source: str, exprs: dict[str, str]) -> dict:
    select = ", ".join(f'{expr} AS "{name}"' for name, expr in exprs.items())
    cursor = con.execute(f"SELECT {select} FROM {source}")
    return dict(zip(exprs, cursor.fetchone()))


def _by_source(con: duckdb.DuckDBPyConnection, kind: str) -> list[dict]:
    keys = "source, split" if kind in _HAS_SPLIT else "source"
    cursor = con.execute(f"SELECT {keys}, count(*) AS rows FROM data GROUP BY ALL ORDER BY rows DESC, {keys}")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _histogram(con: duckdb.DuckDBPyConnection, column: str, stats: dict) -> list[dict]:
    """``HISTOGRAM_BINS`` equal-width bins ``[low, high)`` (the last one closed) of ``column``."""
    low, high = stats["min"], stats["max"]
    if low is None:
        return []
    if low == high:
        return [{"low": low, "high": high, "count": stats["count"]}]
    width = (high - low) / HISTOGRAM_BINS
    counts = dict(con.execute(
        f"SELECT least(floor(({column} - $low) / $width)::BIGINT, {HISTOGRAM_BINS - 1}) AS bin, count(*) "
        f"FROM data WHERE {column} IS NOT NULL GROUP BY bin",
        {"low": low, "width": width},
    ).fetchall())
    return [{"low": low + i * width, "high": high if i == HISTOGRAM_BINS - 1 else low + (i + 1) * width,
             "count": counts.get(i, 0)} for i in range(HISTOGRAM_BINS)]


def lineage(version: Path) -> list[dict]:
    """``version`` (depth 0) and its ancestors through the manifests' ``parents``, breadth first."""
    manifest = read_manifest(version)
    out = [_lineage_entry(version, manifest, 0, "ok")]
    queue, seen = [(manifest, 1)], {str(Path(version).resolve())}
    while queue:
        child, depth = queue.pop(0)
        for parent in child.get("parents", []):
            if parent["path"] in seen:
                continue
            seen.add(parent["path"])
            path = Path(parent["path"])
            if not (path / MANIFEST).is_file():
                out.append({**_lineage_entry(path, parent, depth, "missing"), "command": None})
                continue
            status = "ok" if sha256_file(path / MANIFEST) == parent.get("manifest_sha256") else "changed"
            try:
                manifest = read_manifest(path)
            except CorruptVersionError:
                out.append({**_lineage_entry(path, parent, depth, "broken"), "command": None})
                continue
            out.append(_lineage_entry(path, manifest, depth, status))
            queue.append((manifest, depth + 1))
    return out


def _lineage_entry(path: Path, manifest: dict, depth: int, status: str) -> dict:
    command = manifest.get("command")
    return {"depth": depth, "path": str(path), "kind": manifest.get("kind"),
            "command": " ".join(command) if isinstance(command, list) else command, "status": status}
