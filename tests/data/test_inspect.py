"""``inspect``: diagnostics of real-row versions against plain-Python computations, SQL over the
``data`` / ``vN`` views, output formats, and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from humanline_data.cli import main
from humanline_data.errors import CorruptVersionError
from humanline_data.inspect import QueryError, diagnostics, query
from humanline_data.pair import build
from humanline_data.store import list_versions, open_version, write_version
from scored_rows import gsm8k_rows, hh_rows, write_scored

STATS = ("count", "min", "p25", "median", "p75", "max", "mean", "std")


def describe(values: list[float]) -> dict:
    """count, min, p25, median, p75, max, mean, population std by hand (linear-interpolated quantiles)."""
    s, n = sorted(values), len(values)

    def quantile(q):
        pos = q * (n - 1)
        lo = math.floor(pos)
        return s[lo] + (s[min(lo + 1, n - 1)] - s[lo]) * (pos - lo)

    mean = sum(s) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in s) / n)
    return dict(zip(STATS, (n, s[0], quantile(0.25), quantile(0.5), quantile(0.75), s[-1], mean, std)))


def assert_described(got: dict, values: list[float]) -> None:
    want = describe(values)
    assert list(got) == list(STATS)
    assert got == {k: pytest.approx(v, rel=1e-9, abs=1e-12) for k, v in want.items()}


@pytest.fixture(scope="module")
def versions(shared_data, tmp_path_factory):
    """rows, and versions: scored v1 (all rows, one duplicated completion), scored v2 (GSM8K only),
    and pairs / groups / unpaired built from v1."""
    root = tmp_path_factory.mktemp("inspect")
    rows = gsm8k_rows(shared_data) + hh_rows(shared_data)
    duplicate = {**rows[5], "sample_idx": 99, "reward": 0.5}  # same prompt, same text as rows[5]
    rows.append(duplicate)
    scored = write_scored(root / "scored", rows)
    write_scored(root / "scored", [r for r in rows if r["source"] == "gsm8k"])
    built = {mode: build(scored, root / mode, mode=mode) for mode in ("pairs", "groups", "unpaired")}
    return rows, {"scored": scored, **built}


def run(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def test_scored_report_matches_python(versions):
    rows, paths = versions
    report = diagnostics(paths["scored"])
    assert (report["kind"], report["rows"], report["prompts"]) == ("scored", len(rows), len({r["prompt_id"] for r in rows}))
    assert_described(report["distributions"]["reward"], [r["reward"] for r in rows])
    assert_described(report["distributions"]["length(completion)"], [len(r["completion"]) for r in rows])
    by_source = Counter((r["source"], r["split"]) for r in rows)
    assert {(s["source"], s["split"]): s["rows"] for s in report["by_source"]} == by_source
    truncated = sum(r["finish_reason"] == "length" for r in rows)
    assert report["truncated"] == {"count": truncated, "fraction": pytest.approx(truncated / len(rows))}
    assert report["duplicates"] == {"completions": 1}
    assert report["empty_completions"] == 0


def test_pairs_report_matches_python(versions):
    pairs = open_version(versions[1]["pairs"]).read().to_pylist()
    report = diagnostics(versions[1]["pairs"])
    margins = [p["margin"] for p in pairs]
    for column in ("chosen_reward", "rejected_reward", "margin"):
        assert_described(report["distributions"][column], [p[column] for p in pairs])
    for column in ("chosen", "rejected"):
        assert_described(report["distributions"][f"length({column})"], [len(p[column]) for p in pairs])
    longer = sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs)
    assert report["length_bias_rate"] == pytest.approx(longer / len(pairs))
    same = sum(p["chosen"] == p["rejected"] for p in pairs)
    assert report["duplicates"] == {"prompt_rows": 0, "chosen_equals_rejected": same} and same == 1  # the duplicated text
    bins = report["margin_histogram"]
    lo, width = min(margins), (max(margins) - min(margins)) / 10
    want = Counter(min(int((m - lo) // width), 9) for m in margins)
    assert [b["count"] for b in bins] == [want.get(i, 0) for i in range(10)]
    assert (bins[0]["low"], bins[-1]["high"]) == (min(margins), max(margins))


def test_groups_and_unpaired_reports(versions):
    groups = open_version(versions[1]["groups"]).read().to_pylist()
    report = diagnostics(versions[1]["groups"])
    assert_described(report["distributions"]["group_size"], [len(g["completions"]) for g in groups])
    assert_described(report["distributions"]["advantage"], [a for g in groups for a in g["advantages"]])
    assert_described(report["distributions"]["reward"], [r for g in groups for r in g["rewards"]])
    assert report["duplicates"] == {"prompt_rows": 0, "completions": 1}  # the duplicated text is in a group
    unpaired = diagnostics(versions[1]["unpaired"])
    assert unpaired["desirable_fraction"] == 0.5
    assert unpaired["rows"] == 2 * diagnostics(versions[1]["pairs"])["rows"]


def test_lineage_lists_parents_and_marks_missing_ones(versions, tmp_path):
    rows, paths = versions
    lineage = diagnostics(paths["pairs"])["lineage"]
    assert [(e["depth"], e["kind"], e["path"], e["status"]) for e in lineage] == [
        (0, "pairs", str(paths["pairs"]), "ok"), (1, "scored", str(paths["scored"].resolve()), "ok")]
    orphan_parent = write_scored(tmp_path / "scored", rows)
    orphan = build(orphan_parent, tmp_path / "pairs")
    shutil.rmtree(orphan_parent)
    assert [e["status"] for e in diagnostics(orphan)["lineage"]] == ["ok", "missing"]


def test_sql_joins_versions(versions):
    rows, paths = versions
    sql = ("SELECT v2.source, count(*) AS n, sum(v1.reward) AS total FROM v1 JOIN v2 "
           "USING (prompt_id, sample_idx) GROUP BY ALL")
    result = query(paths["scored"], sql).to_pylist()
    gsm8k = [r for r in rows if r["source"] == "gsm8k"]
    assert result == [{"source": "gsm8k", "n": len(gsm8k), "total": pytest.approx(sum(r["reward"] for r in gsm8k))}]
    latest = query(paths["scored"].parent, "SELECT count(*) AS n FROM data").to_pylist()
    assert latest == [{"n": len(gsm8k)}]  # a dataset dir means its latest version


def test_sql_formats(versions):
    rows, paths = versions
    sql = "SELECT source, count(*) AS n, list(DISTINCT split ORDER BY split) AS splits FROM data GROUP BY 1 ORDER BY 1"
    want = [("gsm8k", sum(r["source"] == "gsm8k" for r in rows), ["test", "train"]),
            ("hh-rlhf", sum(r["source"] == "hh-rlhf" for r in rows), ["test"])]
    as_csv = run(paths["scored"], "--sql", sql, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["source", "n", "splits"]] + [
        [s, str(n), json.dumps(sp)] for s, n, sp in want]
    as_json = run(paths["scored"], "--sql", sql, "--format", "json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"source": s, "n": n, "splits": sp} for s, n, sp in want]
    as_table = run(paths["scored"], "--sql", sql)
    assert as_table.exit_code == 0 and "hh-rlhf" in as_table.stdout and "splits" in as_table.stdout


def test_report_cli_table_and_json(versions):
    paths = versions[1]
    table = run(paths["pairs"])
    assert table.exit_code == 0, table.output
    assert "margin histogram" in table.stdout and "length bias rate" in table.stdout
    as_json = run(paths["pairs"], "--format", "json")
    assert json.loads(as_json.stdout) == json.loads(json.dumps(diagnostics(paths["pairs"])))
    no_csv = run(paths["pairs"], "--format", "csv")
    assert no_csv.exit_code == 2 and "--sql" in no_csv.stderr


# The child's peak RSS (kB) is read from /proc/self/status (VmHWM): getrusage's ru_maxrss keeps
# the RSS the forked parent had before exec, which hides growth when the parent is large.
MEASURED = """
import re, sys
from humanline_data.cli import main

def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

base = peak()
try:
    main(sys.argv[1:])
finally:
    print(peak() - base, file=sys.stderr)
"""
BIG_ROWS = 1_000_000


@pytest.fixture(scope="module")
def big_version(tmp_path_factory) -> Path:
    """A prompts version of BIG_ROWS rows (prompt_id = the row number, 16 digits), built in Arrow."""
    numbers = pc.cast(pa.array(np.arange(BIG_ROWS)), pa.string())
    repeat = pa.array(np.zeros(BIG_ROWS, dtype=np.int32))
    contents = pc.binary_join_element_wise("question number ", numbers, "")
    roles = pa.array(["user"]).take(repeat)
    messages = pa.ListArray.from_arrays(pa.array(np.arange(BIG_ROWS + 1, dtype=np.int32)),
                                        pa.StructArray.from_arrays([roles, contents], names=["role", "content"]))
    table = pa.table({"prompt_id": pc.utf8_lpad(numbers, 16, "0"), "messages": messages,
                      "source": pa.array(["s"]).take(repeat), "split": pa.array(["train"]).take(repeat)})
    with write_version(tmp_path_factory.mktemp("big") / "prompts", "prompts") as w:
        w.write(table)
    return w.path


def measured(version: Path, sql: str, fmt: str) -> tuple[list[str], int]:
    """Run ``inspect --sql`` in a child process: its stdout lines and how far its peak RSS grew
    past what its imports took (MiB)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status to read a process's peak RSS")
    child = subprocess.run([sys.executable, "-c", MEASURED, "inspect", str(version), "--sql", sql, "--format", fmt],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.returncode == 0, child.stderr
    return child.stdout.splitlines(), int(child.stderr.strip().splitlines()[-1]) // 1024


def test_sql_results_stream_in_bounded_memory(big_version):
    """Materialised as Python rows (as inspect did before), this 1M-row result of two short
    strings per row grows the peak RSS by ~570 MiB (measured: ~470 B a row); streamed, only by
    the scan buffers DuckDB and Arrow keep in flight (~190 MiB here, bounded by the part size,
    not the result), and --format table stops reading after the rows it shows."""
    query = "SELECT prompt_id, messages[1].content AS content FROM data"
    lines, grown = measured(big_version, query, "csv")
    assert lines[:2] == ["prompt_id,content", "0000000000000000,question number 0"]
    assert len(lines) == BIG_ROWS + 1 and lines[-1] == f"{BIG_ROWS - 1:016d},question number {BIG_ROWS - 1}"
    assert grown < 320, grown
    lines, grown = measured(big_version, query, "table")
    assert "0000000000000999" in lines[-3] and "question number 999" in lines[-3]
    assert lines[-1] == "... more rows not shown (the first 1000 are; use --format csv or json for all)"
    assert grown < 320, grown


@pytest.mark.parametrize("sql, message", [("SELEC 1", "Parser Error"), ("SELECT nope FROM data", "Binder Error")])
def test_bad_sql_is_one_line(versions, sql, message):
    with pytest.raises(QueryError, match=message):
        query(versions[1]["scored"], sql)
    result = run(versions[1]["scored"], "--sql", sql)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: SQL: {message}") and result.stderr.count("\n") == 1


def test_corrupted_part_is_refused(versions, tmp_path):
    rows, _ = versions
    version = write_scored(tmp_path / "scored", rows)
    part = version / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError):
        diagnostics(version)
    result = run(version, "--sql", "SELECT 1")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "part-00000.parquet: sha256 does not match the manifest" in result.stderr
    assert [p.name for p in list_versions(tmp_path / "scored")] == ["v1"]


def test_only_named_versions_are_opened(versions, tmp_path):
    """A corrupt older version does not block queries that do not name it."""
    rows, _ = versions
    old = write_scored(tmp_path / "scored", rows)
    new = write_scored(tmp_path / "scored", rows[:10])
    (old / "part-00000.parquet").write_bytes(b"broken")
    assert query(new, "SELECT count(*) AS n FROM data").to_pylist() == [{"n": 10}]
    with pytest.raises(CorruptVersionError):
        query(new, "SELECT count(*) FROM v1")


def test_prompts_and_completions_reports(versions, tmp_path):
    rows, _ = versions
    completions = [{k: v for k, v in r.items() if k not in ("reward", "scorer")} for r in rows]
    with write_version(tmp_path / "completions", "completions") as w:
        w.write(pa.Table.from_pylist(completions))
    report = diagnostics(w.path)
    assert (report["kind"], report["rows"], report["duplicates"]) == ("completions", len(rows), {"completions": 1})
    assert list(report["distributions"]) == ["length(completion)"]
    first = {}
    for r in rows:
        first.setdefault(r["prompt_id"], r)
    prompts = [{k: r[k] for k in ("prompt_id", "messages", "answer", "source", "split")} for r in first.values()]
    with write_version(tmp_path / "prompts", "prompts") as w:
        w.write(pa.Table.from_pylist(prompts))
    report = diagnostics(w.path)
    assert (report["rows"], report["prompts"], report["distributions"]) == (len(prompts), len(prompts), {})
    assert report["duplicates"] == {"prompt_rows": 0} and "truncated" not in report
    assert sum(s["rows"] for s in report["by_source"]) == len(prompts)
    assert "prompts" in run(w.path).stdout
