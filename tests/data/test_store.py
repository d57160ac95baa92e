"""store: versions v1, v2, ..., latest, manifests, lineage, atomic writes under kill -9, and
one-line CorruptVersionError for damaged parts (through the API and the CLI)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from humanline_data import store
from humanline_data.cli import main
from humanline_data.errors import CorruptVersionError, HumanlineError, SchemaError, WrongKindError
from humanline_data.schema import SCHEMAS, prompt_id


def completions(n: int, start: int = 0) -> pa.Table:
    """``n`` completion rows of distinct prompts ``q{start}``..``q{start+n-1}``."""
    msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(start, start + n)]
    return pa.table(
        {
            "prompt_id": [prompt_id(m) for m in msgs],
            "messages": msgs,
            "source": ["test"] * n,
            "split": ["train"] * n,
            "sample_idx": [0] * n,
            "completion": [f"answer {i}" for i in range(start, start + n)],
            "completion_tokens": [2] * n,
            "finish_reason": ["stop"] * n,
            "generator": ["unit"] * n,
            "metadata": [json.dumps({"i": i}) for i in range(start, start + n)],
        }
    )


def tree_digest(dataset: Path) -> dict[str, str]:
    """sha256 of every file under ``dataset`` by relative path."""
    return {
        str(p.relative_to(dataset)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(dataset.rglob("*"))
        if p.is_file()
    }


def write(dataset: Path, table: pa.Table, kind: str = "completions", **kwargs) -> Path:
    with store.write_version(dataset, kind, **kwargs) as w:
        w.write(table)
    return w.path


def test_versions_are_numbered_and_latest_resolves(tmp_path):
    ds = tmp_path / "gen"
    v1 = write(ds, completions(3), params={"n": 1})
    v2 = write(ds, completions(5), params={"n": 2})
    assert (v1.name, v2.name) == ("v1", "v2")
    assert store.list_versions(ds) == [v1, v2]
    latest = store.open_version(ds)
    assert latest.path == v2 and latest.manifest["version"] == 2 and latest.read().num_rows == 5
    pinned = store.open_version(v1)
    assert pinned.read().column("completion").to_pylist() == ["answer 0", "answer 1", "answer 2"]


def test_manifest_fields_and_lineage(tmp_path):
    parent = store.open_version(write(tmp_path / "gen", completions(4), params={"n": 8}))
    scored = completions(4).append_column("reward", pa.array([1.0, 0.0, 0.5, 1.0])).append_column(
        "scorer", pa.array(["math"] * 4)
    )
    child_path = write(
        tmp_path / "scored",
        scored,
        kind="scored",
        params={"scorer": "math"},
        parents=[parent.parent_ref()],
        producer={"scorer": "math"},
        stats={"dropped": 0},
    )
    m = store.read_manifest(child_path)
    assert {"version", "kind", "schema", "rows", "files", "created_at", "command", "params", "producer", "parents", "stats"} <= set(m)
    assert (m["version"], m["kind"], m["rows"], m["params"], m["stats"]) == (1, "scored", 4, {"scorer": "math"}, {"dropped": 0})
    assert m["schema"] == SCHEMAS["scored"].to_string(show_schema_metadata=False)
    [part] = m["files"]
    assert part["rows"] == 4 and part["sha256"] == store.sha256_file(child_path / part["name"])
    [ref] = m["parents"]
    assert ref == {
        "path": str(parent.path.resolve()),
        "version": 1,
        "kind": "completions",
        "manifest_sha256": store.sha256_file(parent.path / "manifest.json"),
    }
    assert json.loads(store.open_version(child_path).read().column("metadata")[2].as_py()) == {"i": 2}


def test_rows_split_into_parts_and_read_back_in_order(tmp_path):
    with store.write_version(tmp_path / "gen", "completions", rows_per_file=4) as w:
        w.write(completions(6))
        w.write(completions(5, start=6))
    v = store.open_version(w.path)
    assert [f["rows"] for f in v.manifest["files"]] == [4, 4, 3]
    assert v.read().column("completion").to_pylist() == [f"answer {i}" for i in range(11)]
    assert sum(b.num_rows for b in store.iter_batches(v, batch_rows=2)) == 11


def test_empty_version_is_valid(tmp_path):
    with store.write_version(tmp_path / "pairs", "pairs"):
        pass
    v = store.open_version(tmp_path / "pairs")
    assert v.manifest["rows"] == 0 and v.read().schema == SCHEMAS["pairs"]


def test_two_writers_get_distinct_versions(tmp_path):
    ds = tmp_path / "gen"
    a = store.VersionWriter(ds, "completions")
    b = store.VersionWriter(ds, "completions")
    a.write(completions(1))
    b.write(completions(2))
    assert (b.commit().name, a.commit().name) == ("v1", "v2")
    assert store.open_version(ds / "v2").read().num_rows == 1


def test_failure_inside_a_write_leaves_nothing(tmp_path):
    ds = tmp_path / "gen"
    v1 = write(ds, completions(2))
    before = tree_digest(ds)
    with pytest.raises(SchemaError, match="duplicate prompt_id/sample_idx"):
        with store.write_version(ds, "completions") as w:
            w.write(completions(2))
            w.write(pa.concat_tables([completions(1), completions(1)]))
    assert store.list_versions(ds) == [v1]
    assert tree_digest(ds) == before
    assert not [p for p in ds.iterdir() if p.name.startswith(".tmp-")]


def test_wrong_kind_and_missing_dataset_are_one_line_errors(tmp_path):
    v1 = write(tmp_path / "gen", completions(1))
    with pytest.raises(WrongKindError, match=r"kind 'completions', this stage needs pairs or groups"):
        store.open_version(v1, kinds=("pairs", "groups"))
    with pytest.raises(HumanlineError, match="not a dataset version or a dataset with versions"):
        store.open_version(tmp_path / "nothing")


_WRITER = """
import sys
import pyarrow as pa
from humanline_data import store
sys.path.insert(0, sys.argv[2])
from test_store import completions
with store.write_version(sys.argv[1], "completions", rows_per_file=2000) as w:
    for chunk in range(400):
        w.write(completions(1000, start=chunk * 1000))
        if chunk == 4:
            print("writing", flush=True)
print("finished", flush=True)
"""


def test_kill_9_mid_write_leaves_no_visible_version(tmp_path):
    ds = tmp_path / "gen"
    v1 = write(ds, completions(10))
    before = tree_digest(ds)
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(ds), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        [tmp] = [p for p in ds.iterdir() if p.name.startswith(".tmp-")]
        while len(list(tmp.glob("part-*.parquet"))) < 3:  # several parts on disk, more to come
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert store.list_versions(ds) == [v1]
    assert store.open_version(ds).path == v1
    assert {k: v for k, v in tree_digest(ds).items() if not k.startswith(".tmp-")} == before
    assert [p.name for p in ds.iterdir() if not p.name.startswith(".tmp-")] == ["v1"]
    assert not (tmp / "manifest.json").exists()
    listing = CliRunner().invoke(main, ["versions", str(ds)])
    assert listing.exit_code == 0 and "v1" in listing.stdout and "v2" not in listing.stdout
    assert ".tmp" not in listing.stdout


def _damage_by_flipping_a_byte(part: Path) -> None:
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))


def _damage_by_truncating(part: Path) -> None:
    size = part.stat().st_size
    with open(part, "r+b") as f:
        f.truncate(size // 2)


@pytest.mark.parametrize(
    "damage, message",
    [
        (_damage_by_flipping_a_byte, r"part-00000\.parquet: sha256 does not match the manifest"),
        (_damage_by_truncating, r"part-00000\.parquet: \d+ bytes, manifest says \d+ \(cut off mid-write\?\)"),
        (lambda part: part.unlink(), r"part-00000\.parquet: part listed in the manifest is missing"),
        (lambda part: (part.parent / "manifest.json").write_text("{"), r"manifest\.json: malformed JSON"),
    ],
    ids=["checksum", "truncated", "missing-part", "bad-manifest"],
)
def test_damaged_version_is_one_line_corrupt_error(tmp_path, damage, message):
    v1 = write(tmp_path / "gen", completions(50))
    damage(v1 / "part-00000.parquet")
    with pytest.raises(CorruptVersionError, match=message) as err:
        store.open_version(tmp_path / "gen")
    assert "\n" not in str(err.value)
    # through the CLI: a stage reading the damaged version refuses it and writes nothing
    out = tmp_path / "reimported"
    result = CliRunner().invoke(main, ["import", str(v1), "--format", "completions", "--out", str(out)])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and re.search(message, line)
    assert store.list_versions(out) == []


def test_parts_are_plain_parquet_with_the_kind_schema(tmp_path):
    v1 = write(tmp_path / "gen", completions(3))
    table = pq.read_table(v1 / "part-00000.parquet")
    assert table.schema.remove_metadata() == SCHEMAS["completions"]
    assert table.num_rows == 3
