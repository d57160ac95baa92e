"""The data plane under hostile input (issue 10), one test per broken promise: no hang, one
``error:`` line and exit 2 instead of a traceback, no leftovers, no write inside a version,
folders whose names lie, numbers kept as written, small paper cuts, read-only ``inspect --sql``,
and LLaMA-Factory's KTO files."""

from __future__ import annotations

import hashlib
import json
import os
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

GOOD = [{"prompt": "Q", "completion": "A", "reward": 1.0}]


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result, *needles: str) -> str:
    """Assert exit 2 and a single ``error:`` line holding every needle; return the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def imported(*args) -> store.Version:
    result = cli("import", *args)
    assert result.exit_code == 0, result.output
    return store.open_version(result.stdout.strip().splitlines()[-1])


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (following links) by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(dataset: Path) -> list[str]:
    return sorted(p.name for p in dataset.glob(".tmp-*"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    """``data`` with one committed version v1 (kind scored, one row)."""
    imported(jsonl(tmp_path / "good_train.jsonl", GOOD), "--out", tmp_path / "data")
    return tmp_path / "data"


# ------------------------------------------------------------------ 1. no hang


@pytest.mark.timeout(60)
@pytest.mark.parametrize("obstacle", ["file", "dangling symlink", "empty folder"])
def test_an_entry_named_like_a_version_does_not_hang_the_next_write(dataset, tmp_path, obstacle):
    v2 = dataset / "v2"
    if obstacle == "file":
        v2.touch()
    elif obstacle == "dangling symlink":
        v2.symlink_to(tmp_path / "nowhere")
    else:
        v2.mkdir()
    before = digest(dataset / "v1")
    v = imported(tmp_path / "good_train.jsonl", "--out", dataset)
    assert v.path == dataset / "v3" and v.manifest["version"] == 3
    assert digest(dataset / "v1") == before and temporaries(dataset) == []
    assert [p.name for p in store.list_versions(dataset)] == ["v1", "v3"]


@pytest.mark.timeout(60)
def test_a_commit_that_never_finds_a_free_number_gives_up_naming_the_obstacle(dataset, tmp_path, monkeypatch):
    """Force the worst case of a race (every number picked is taken): a bounded number of tries,
    one line naming what is in the way, and the failed commit removes its temporary folder."""
    before = digest(dataset)
    monkeypatch.setattr(store, "_next_number", lambda _dataset: 1)
    result = cli("import", tmp_path / "good_train.jsonl", "--out", dataset)
    one_error(result, f"{dataset / 'v1'}: no free version number after {store.COMMIT_TRIES} tries; a folder is in the way")
    assert digest(dataset) == before and temporaries(dataset) == []


# ------------------------------------------------------------------ 2. no tracebacks


def deep_nesting() -> str:
    return '{"prompt": "Q", "completion": "A", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n"


@pytest.mark.parametrize("content, needles", [
    ('{"prompt": "Q", "completion": "A"}\n{"prompt": "Q\\ud800", "completion": "A"}\n',
     [":2: format completions: column 'prompt' holds a lone surrogate",
                                                      "(--skip-invalid skips and counts such records)"]),
    ('{"prompt": "Q", "completion": "A", "n": ' + "9" * 4301 + "}\n", [":1: malformed JSON (Exceeds the limit"]),
    (deep_nesting(), [":1: malformed JSON (nested too deeply)"]),
    ('{"prompt": "Q", "completion": "A", "seed": 1e30}\n', [":1: format completions: column 'seed' is 1e+30, expected an integer"]),
], ids=["lone-surrogate", "4301-digit-integer", "100k-nested", "seed-1e30"])
def test_hostile_json_is_one_line(dataset, tmp_path, content, needles):
    before = digest(dataset)
    src = tmp_path / "bad_train.jsonl"
    src.write_text(content)
    one_error(cli("import", src, "--out", dataset), str(src), *needles)
    assert digest(dataset) == before and temporaries(dataset) == []


def test_lone_surrogates_are_skippable(dataset, tmp_path):
    src = tmp_path / "chat_train.jsonl"
    src.write_text('{"prompt": "Q", "completion": "A"}\n{"prompt": "R", "completion": "B\\udc80", "m": {"\\ud83d\\ude00": 1}}\n'
                   '{"prompt": "S", "completion": "\\ud83d\\ude00"}\n')
    v = imported(src, "--out", tmp_path / "chat", "--skip-invalid")
    assert v.manifest["stats"]["skipped"] == {"invalid_text": 1}
    assert [r["completion"] for r in v.read().to_pylist()] == ["A", "\N{GRINNING FACE}"]


def test_corrupted_data_page_in_a_source_parquet_is_one_line(dataset, tmp_path):
    table = pa.table({"prompt": [f"question {i} " * 20 for i in range(2000)], "completion": [f"answer {i}" * 30 for i in range(2000)]})
    src = tmp_path / "c_train.parquet"
    pq.write_table(table, src, compression="zstd")
    start = pq.ParquetFile(src).metadata.row_group(0).column(0).dictionary_page_offset
    data = bytearray(src.read_bytes())
    data[start + 20 : start + 84] = b"\xff" * 64  # the zstd frame of the first page: footer and header intact
    src.write_bytes(bytes(data))
    before = digest(dataset)
    one_error(cli("import", src, "--out", dataset), f"{src}: unreadable after row")
    assert digest(dataset) == before and temporaries(dataset) == []


def test_out_that_cannot_be_a_dataset_folder_is_one_line(tmp_path):
    src = jsonl(tmp_path / "good_train.jsonl", GOOD)
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_error(cli("import", src, "--out", a_file), f"{a_file}: exists and is not a folder")
    one_error(cli("import", src, "--out", a_file / "d"), f"{a_file / 'd'}: cannot create the dataset folder")
    one_error(cli("import", src, "--out", loop), f"{loop}: cannot use as the dataset folder")
    one_error(cli("import", src, "--out", "/proc/humanline-out"), "/proc/humanline-out: cannot create the dataset folder")
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("manifest, needle", [
    ({}, "field 'version' is missing"),
    ([], "not a JSON object but list"),
    ("files-null", "field 'files' is missing or not a list"),
    ("no-sha256", "files[0].sha256 is missing"),
    ("dotdot", "files[0] names '../../good_train.jsonl', not a part file inside the version"),
    ("[" * 100_000, "malformed JSON"),
], ids=["empty-object", "list", "files-null", "no-sha256", "dotdot-part", "deep"])
def test_manifest_of_the_wrong_shape_is_one_line(dataset, tmp_path, manifest, needle):
    path = dataset / "v1" / store.MANIFEST
    good = json.loads(path.read_text())
    if manifest == "files-null":
        manifest = {**good, "files": None}
    elif manifest == "no-sha256":
        manifest = {**good, "files": [{k: v for k, v in good["files"][0].items() if k != "sha256"}]}
    elif manifest == "dotdot":
        manifest = {**good, "files": [{**good["files"][0], "name": "../../good_train.jsonl"}]}
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    for args in (["import", dataset, "--out", tmp_path / "copy"], ["inspect", dataset], ["pair", dataset, "--out", tmp_path / "p"]):
        one_error(cli(*args), f"{path}: {needle}")
    assert not (tmp_path / "copy").exists() and not (tmp_path / "p").exists()
    listing = cli("versions", dataset)
    assert listing.exit_code == 0 and "broken" in listing.stdout


@pytest.mark.parametrize("sql", ["", "   "])
def test_empty_sql_is_one_line(dataset, sql):
    one_error(cli("inspect", dataset, "--sql", sql), "SQL: empty query")


# ------------------------------------------------------------------ 3. leftovers


WRITER = """
import sys, time, pyarrow as pa
from humanline_data import store
w = store.VersionWriter(sys.argv[1], "prompts")
w.write(pa.table({"prompt_id": ["p"], "messages": [[{"role": "user", "content": "q"}]], "source": ["s"], "split": ["train"]}))
w._flush(1)
print("ready", flush=True)
time.sleep(60)
"""


def killed_writer(dataset: Path) -> None:
    """Start a real writer process, let it write a part, and kill -9 it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dataset)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_stale_temporaries_are_removed_by_the_next_write_and_by_gc(dataset, tmp_path):
    killed_writer(dataset)
    [first] = temporaries(dataset)
    killed_writer(dataset)  # its writer removed the first one before it died
    assert len(temporaries(dataset)) == 1 and temporaries(dataset) != [first]
    before = digest(dataset / "v1")
    imported(tmp_path / "good_train.jsonl", "--out", dataset)
    assert temporaries(dataset) == [] and digest(dataset / "v1") == before

    live = store.VersionWriter(dataset, "prompts")  # a writer that is still running keeps its folder
    killed_writer(dataset)
    [stale] = [name for name in temporaries(dataset) if name != live.tmp.name]
    size = sum(p.stat().st_size for p in (dataset / stale).rglob("*") if p.is_file())
    result = cli("gc", dataset)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"removed {dataset / stale} ({size} bytes)", f"freed {size} bytes in 1 temporary folders"]
    assert temporaries(dataset) == [live.tmp.name]
    live.abort()
    assert temporaries(dataset) == [] and [p.name for p in store.list_versions(dataset)] == ["v1", "v2"]


# ------------------------------------------------------------------ 4. no write inside a version


def test_out_inside_a_version_is_refused(dataset, tmp_path):
    before = digest(dataset)
    (tmp_path / "alias").symlink_to(dataset / "v1")
    for out in (dataset / "v1", dataset / "v1" / "sub", tmp_path / "alias", tmp_path / "alias" / "x"):
        line = one_error(cli("import", tmp_path / "good_train.jsonl", "--out", out), f"{out}: lies inside the version")
        assert "versions are immutable" in line
    assert digest(dataset) == before


# ------------------------------------------------------------------ 5. names that lie


def test_version_folders_whose_names_lie_are_refused_by_name(dataset, tmp_path):
    imported(tmp_path / "good_train.jsonl", "--out", dataset)  # v2
    (dataset / "v2").rename(dataset / "v3")
    one_error(cli("inspect", dataset), f"{dataset / 'v3'}: folder name does not match its manifest, which says version 2")
    (dataset / "v3").rename(dataset / "v2")
    os.symlink(dataset / "v1", dataset / "v5")
    one_error(cli("inspect", dataset), f"{dataset / 'v5'}: folder name does not match its manifest, which says version 1")
    (dataset / "v5").unlink()
    (dataset / "v02").mkdir()
    for p in (dataset / "v2").iterdir():
        (dataset / "v02" / p.name).write_bytes(p.read_bytes())
    assert [p.name for p in store.list_versions(dataset)] == ["v1", "v2"]  # v02 is not a version name
    one_error(cli("inspect", dataset / "v02"), f"{dataset / 'v02'}: folder name does not match")


def test_empty_or_manifestless_version_folders(dataset, tmp_path):
    (dataset / "v2").mkdir()  # empty: not a version, blocks nothing
    assert cli("inspect", dataset).exit_code == 0
    assert imported(tmp_path / "good_train.jsonl", "--out", dataset).path == dataset / "v3"
    (dataset / "v3" / store.MANIFEST).unlink()  # parts without a manifest: a damaged version, named
    one_error(cli("inspect", dataset), f"{dataset / 'v3'}: version folder without manifest.json")
    assert cli("inspect", dataset / "v1").exit_code == 0


# ------------------------------------------------------------------ 6. numbers as answer text


def test_numeric_answers_keep_their_written_form_or_become_integers(tmp_path):
    src = tmp_path / "nums_train.jsonl"
    src.write_text("".join(f'{{"problem": "p{i}", "answer": {a}}}\n' for i, a in enumerate(["8.0", "1e21", "12", "0.5"])))
    v = imported(src, "--out", tmp_path / "json")
    assert [r["answer"] for r in v.read().to_pylist()] == ["8.0", "1e21", "12", "0.5"]
    pq.write_table(pa.table({"problem": ["a", "b", "c"], "answer": [8.0, 1e21, 0.25]}), tmp_path / "nums_train.parquet")
    v = imported(tmp_path / "nums_train.parquet", "--out", tmp_path / "pq")
    assert [r["answer"] for r in v.read().to_pylist()] == ["8", "1000000000000000000000", "0.25"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_answers_are_errors_or_skipped(tmp_path, value):
    src = tmp_path / "nums_train.jsonl"
    src.write_text(f'{{"problem": "p", "answer": {value}}}\n{{"problem": "q", "answer": 3}}\n')
    one_error(cli("import", src, "--out", tmp_path / "d"), f"{src}:1: format math: column 'answer' is", "(must be finite)")
    assert not (tmp_path / "d").exists()
    v = imported(src, "--out", tmp_path / "d", "--skip-invalid")
    assert v.manifest["stats"]["skipped"] == {"non_finite": 1} and v.read().column("answer").to_pylist() == ["3"]


# ------------------------------------------------------------------ 7. paper cuts


def test_bom_and_utf8_errors_with_line_numbers(tmp_path):
    src = tmp_path / "bom_train.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode() + b"\n")
    assert imported(src, "--out", tmp_path / "d").manifest["rows"] == 1
    arr = tmp_path / "bom_test.json"
    arr.write_bytes(b"\xef\xbb\xbf[\n" + json.dumps(GOOD[0]).encode() + b"\n]")
    assert imported(arr, "--out", tmp_path / "d").manifest["rows"] == 1
    bad = tmp_path / "latin_train.jsonl"
    bad.write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"prompt": "caf\xe9", "completion": "A"}\n')
    one_error(cli("import", bad, "--out", tmp_path / "d"), f"{bad}:2: not UTF-8 text (byte 0xe9 at column 16)")


@pytest.mark.parametrize("extra, needle, reason", [
    ({"temperature": "hot"}, "column 'temperature' has dtype str, expected a number", "wrong_dtype"),
    ({"sample_idx": 2**31}, "column 'sample_idx' is 2147483648, expected an integer from 0 to 2147483647", "wrong_dtype"),
    ({"max_new_tokens": 2**40}, "column 'max_new_tokens' is 1099511627776", "wrong_dtype"),
    ({"top_p": float("nan")}, "column 'top_p' is nan (must be finite)", "non_finite"),
    ({"reward": 0.5, "reward_components": [1]}, "column 'reward_components' has dtype list, expected an object", "wrong_dtype"),
])
def test_conversion_errors_name_file_and_line_and_are_skippable(tmp_path, extra, needle, reason):
    src = tmp_path / "gens_train.jsonl"
    src.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps({"prompt": "R", "completion": "B", **extra}) + "\n")
    one_error(cli("import", src, "--out", tmp_path / "d"), f"{src}:2: format completions: {needle}",
              "(--skip-invalid skips and counts such records)")
    v = imported(src, "--out", tmp_path / "d", "--skip-invalid")
    assert v.manifest["stats"]["skipped"] == {reason: 1} and v.manifest["rows"] == 1


def test_null_messages_is_reported_as_null(tmp_path):
    src = jsonl(tmp_path / "k_train.jsonl", [{"messages": None, "completion": "A", "label": True}])
    one_error(cli("import", src, "--out", tmp_path / "d", "--format", "kto"), f"{src}:1: format kto: column 'messages' is null")


@pytest.mark.parametrize("args, needle", [
    (["import"], "Missing argument 'SOURCES...'"),
    (["import", "x.jsonl"], "Missing option '--out'"),
    (["pair", "x", "--out", "y", "--mode", "nope"], "Invalid value for '--mode'"),
    (["nope"], "No such command 'nope'"),
])
def test_usage_errors_are_one_line(args, needle):
    one_error(cli(*args), needle)


# ------------------------------------------------------------------ 8. read-only inspect --sql


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1 AS x) TO '{part}' (FORMAT parquet)",
    "COPY (SELECT 1 AS x) TO '{outside}'",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_parquet('{part}')",
    "ATTACH '{outside}.db' AS other",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
])
def test_inspect_sql_reads_only_the_versions_and_writes_nothing(dataset, tmp_path, sql):
    imported(tmp_path / "good_train.jsonl", "--out", dataset)  # v2, a sibling
    part = dataset / "v1" / "part-00000.parquet"
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    before, files = digest(tmp_path), sorted(tmp_path.rglob("*"))
    query = sql.format(part=part, outside=tmp_path / "out.csv", secret=secret)
    one_error(cli("inspect", dataset, "--sql", query), "error: SQL: ")
    assert digest(tmp_path) == before and sorted(tmp_path.rglob("*")) == files
    ok = cli("inspect", dataset, "--sql", "SELECT (SELECT count(*) FROM v1) + (SELECT count(*) FROM data) AS n",
             "--format", "json")
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"n": 2}


def test_unsafe_sql_lifts_the_sandbox(dataset, tmp_path):
    out = tmp_path / "out.csv"
    result = cli("inspect", dataset, "--unsafe-sql", "--sql", f"COPY (SELECT completion FROM data) TO '{out}'")
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == ["completion", "A"]
    one_error(cli("inspect", dataset, "--unsafe-sql"), "--unsafe-sql applies to --sql only")


# ------------------------------------------------------------------ 9. LLaMA-Factory KTO


def test_llama_factory_kto_files_import_under_auto_and_kto(tmp_path):
    turns = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    src = jsonl(tmp_path / "kto_en_demo.jsonl", [
        {"messages": turns, "label": True},
        {"messages": [{"role": "system", "content": "Be terse."}, *turns[:1], {"role": "assistant", "content": "What."}],
         "label": False},
    ])
    sharegpt = jsonl(tmp_path / "kto_sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yo."}], "kto_tag": False},
    ])
    for fmt in ("auto", "kto"):
        v = imported(src, sharegpt, "--out", tmp_path / fmt, "--format", fmt)
        assert v.kind == "unpaired" and [s["format"] for s in v.manifest["params"]["sources"]] == ["kto", "kto"]
        got = [(r["messages"], r["completion"], r["desirable"]) for r in v.read().to_pylist()]
        assert got == [
            (turns[:1], "Hello.", True),
            ([{"role": "system", "content": "Be terse."}, turns[0]], "What.", False),
            (turns[:1], "Yo.", False),
        ]
    bad = jsonl(tmp_path / "kto_bad.jsonl", [{"messages": turns[:1], "label": True}])
    one_error(cli("import", bad, "--out", tmp_path / "bad"),
              f"{bad}:1: format kto: final message of 'messages' is a user turn, expected assistant")
