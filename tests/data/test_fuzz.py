"""Fuzz ``humanline-data`` with generated hostile input (hypothesis): records and files for
``import`` (JSON lines, JSON arrays, gzip, Parquet; malformed, truncated, mis-encoded), and
damaged manifests and version folders for ``import``/``inspect``/``versions``.

Every case must end in exit 0 with one new, verified version, or in exactly one ``error:`` line
and exit 2 with no new version; never a traceback; the versions already there stay
byte-identical and no ``.tmp-*`` folder is left once the command returns.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from humanline_data import store
from humanline_data.cli import main

IMPORT_CASES = 1200
FOLDER_CASES = 400

def fuzz(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                    print_blob=True)


COLUMNS = ["prompt", "completion", "messages", "chosen", "rejected", "label", "kto_tag", "reward", "answer",
           "problem", "question", "instruction", "input", "output", "conversations", "system", "sample_idx",
           "seed", "temperature", "top_p", "max_new_tokens", "completion_tokens", "split", "source", "metadata",
           "score_chosen", "finish_reason", "prompt_id", "reward_components", "generator", "scorer", "logprob_sum",
           "preferred_output", "non_preferred_output", "data_source", "reward_model", "extra_info", "ability"]
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", "", "USER", None, 3]
FORMATS = ["auto", "trl", "hh", "sharegpt", "kto", "math", "gsm8k", "alpaca", "prompts", "completions", "openai",
           "openrlhf", "verl"]

texts = st.one_of(
    st.sampled_from(["Q", "A", "Q", "A", "  ", "", "\ud800", "x\udfff", "\ufeffhi", "\x00", "\n\nHuman: hi\n\nAssistant: yo",
                     "#### 42", "caf\u00e9 \U0001f600", "train", "test"]),
    st.text(max_size=12),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 8.0, 1e21, 1e30, float("nan"), float("inf")]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
message = st.fixed_dictionaries({}, optional={"role": st.sampled_from(ROLES), "content": st.one_of(texts, scalars),
                                              "from": st.sampled_from(ROLES), "value": texts})
messages = st.lists(message, max_size=4)
values = st.one_of(scalars, messages, message, st.lists(scalars, max_size=3),
                   st.dictionaries(texts, scalars, max_size=3))
records = st.dictionaries(st.sampled_from(COLUMNS), values, max_size=7)
# Records near the contract, so that many cases get deep into the readers (and some succeed).
plausible = st.one_of(
    st.fixed_dictionaries({"prompt": texts, "completion": texts}, optional={
        "reward": numbers, "sample_idx": numbers, "seed": numbers, "temperature": scalars, "reward_components": values,
        "completion_tokens": numbers, "generator": scalars}),
    st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts}),
    st.fixed_dictionaries({"messages": messages}, optional={"label": scalars, "kto_tag": scalars, "completion": texts}),
    st.fixed_dictionaries({"problem": texts, "answer": scalars}),
    st.fixed_dictionaries({"question": texts, "answer": texts}),
    st.fixed_dictionaries({"input": st.one_of(values, st.fixed_dictionaries({"messages": messages})),
                           "preferred_output": st.one_of(messages, texts), "non_preferred_output": st.one_of(messages, texts)}),
    st.fixed_dictionaries({"input": st.one_of(messages, texts)}, optional={"label": scalars, "output": st.one_of(messages, texts)}),
    st.fixed_dictionaries({"prompt": st.one_of(messages, texts)}, optional={
        "data_source": scalars, "reward_model": st.dictionaries(st.sampled_from(["style", "ground_truth"]), scalars),
        "extra_info": st.one_of(values, st.dictionaries(st.sampled_from(["split", "index"]), scalars))}),
)
record_lists = st.one_of(st.lists(plausible, min_size=1, max_size=4),
                         st.lists(st.one_of(records, plausible, scalars), max_size=6))


def encode(items: list, layout: str) -> tuple[str, bytes]:
    """``(file name, bytes)`` of ``items`` in ``layout``; Parquet falls back to JSON lines when
    Arrow cannot build one table from the records."""
    lines = "".join(json.dumps(r) + "\n" for r in items).encode()
    if layout == "parquet":
        try:
            table = pa.Table.from_pylist([r for r in items if isinstance(r, dict)])
            sink = io.BytesIO()
            pq.write_table(table, sink)
            return "fuzz_train.parquet", sink.getvalue()
        except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeEncodeError):
            layout = "jsonl"
    if layout == "array":
        return "fuzz_train.json", json.dumps(items, indent=1).encode()
    if layout == "gz":
        return "fuzz_train.jsonl.gz", gzip.compress(lines, mtime=0)
    return "fuzz_train.jsonl", lines


@st.composite
def source_files(draw) -> tuple[str, bytes]:
    name, data = encode(draw(record_lists), draw(st.sampled_from(["jsonl", "array", "gz", "parquet"])))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "insert", "replace"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    elif damage == "insert":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.sampled_from([b"\xff", b"\xef\xbb\xbf", b"\n", b"{", b"]", b"NaN", b"\x00", b"\xc3"])) + data[i:]
    elif damage == "replace":
        data = draw(st.binary(max_size=64))
    return name, data


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check(result, dataset: Path, versions_before: list[Path], kept: dict[Path, dict]) -> None:
    """The promise for one command: success with one verified new version, or one error line
    and exit 2 with none; earlier versions unchanged; no temporary folder left."""
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.exception!r}\n{result.output}"
    event(f"exit {result.exit_code}")
    assert not list(dataset.glob(".tmp-*"))
    after = store.list_versions(dataset)
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert after == versions_before
    else:
        new = Path(result.stdout.strip().splitlines()[-1])
        assert after == [*versions_before, new]
        store.open_version(new)
        shutil.rmtree(new)  # keep the dataset as it was for the next case
    for folder, files in kept.items():
        assert digest(folder) == files, f"{folder} changed"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict[Path, dict]]:
    """A dataset with two committed versions and their digests."""
    root = tmp_path_factory.mktemp("fuzz")
    src = root / "seed_train.jsonl"
    src.write_text('{"prompt": "Q", "completion": "A", "reward": 1.0}\n{"prompt": "R", "completion": "B", "reward": 0.0}\n')
    for _ in range(2):
        assert CliRunner().invoke(main, ["import", str(src), "--out", str(root / "data")]).exit_code == 0
    versions = store.list_versions(root / "data")
    return root, {v: digest(v) for v in versions}


@pytest.mark.timeout(180)  # a hang fails the test instead of stalling CI
@fuzz(IMPORT_CASES)
@given(file=source_files(), fmt=st.sampled_from(FORMATS), skip=st.booleans(), split=st.sampled_from([None, "train", ""]))
def test_import_of_generated_hostile_files(base, file, fmt, skip, split):
    root, kept = base
    dataset = root / "data"
    name, data = file
    src = root / "in" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    args = ["import", str(src), "--out", str(dataset), "--format", fmt, *(["--skip-invalid"] if skip else []),
            *(["--split", split] if split is not None else [])]
    before = store.list_versions(dataset)
    check(CliRunner().invoke(main, args), dataset, before, kept)


FIELDS = ["version", "kind", "rows", "files", "parents", "schema", "stats"]
PART_FIELDS = ["name", "rows", "bytes", "sha256"]


@st.composite
def damaged_versions(draw, good: dict) -> tuple[str, object, str]:
    """``(folder name, manifest to write or None for unchanged, part damage)``."""
    manifest = json.loads(json.dumps(good))
    how = draw(st.sampled_from(["field", "part-field", "replace", "drop", "none"]))
    if how == "field":
        manifest[draw(st.sampled_from(FIELDS))] = draw(values)
    elif how == "part-field":
        part = manifest["files"][0]
        part[draw(st.sampled_from(PART_FIELDS))] = draw(st.one_of(values, st.sampled_from(["../x.parquet", "/etc/passwd", "."])))
    elif how == "replace":
        manifest = draw(st.one_of(values, st.just("[" * 50_000)))
    elif how == "drop":
        manifest.pop(draw(st.sampled_from(FIELDS)), None)
    folder = draw(st.sampled_from(["v3", "v3", "v03", "v0", "v9", "v2x"]))
    return folder, manifest, draw(st.sampled_from(["none", "none", "truncate", "delete", "flip", "extra"]))


@pytest.mark.timeout(180)
def test_damaged_manifests_and_version_folders(base, tmp_path):
    root, kept = base
    good = store.list_versions(root / "data")[-1]
    manifest = json.loads((good / store.MANIFEST).read_text())

    @fuzz(FOLDER_CASES)
    @given(case=damaged_versions(manifest), command=st.sampled_from(["inspect", "import", "versions", "sql"]))
    def run(case, command):
        folder_name, new_manifest, part_damage = case
        dataset = tmp_path / "victim"
        shutil.rmtree(dataset, ignore_errors=True)
        shutil.copytree(good.parent, dataset)
        folder = dataset / folder_name
        shutil.copytree(good, folder)
        text = new_manifest if isinstance(new_manifest, str) and new_manifest.startswith("[[") else json.dumps(new_manifest)
        (folder / store.MANIFEST).write_text(text)
        part = folder / "part-00000.parquet"
        if part_damage == "truncate":
            part.write_bytes(part.read_bytes()[:-7])
        elif part_damage == "delete":
            part.unlink()
        elif part_damage == "flip":
            data = bytearray(part.read_bytes())
            data[len(data) // 2] ^= 0xFF
            part.write_bytes(bytes(data))
        elif part_damage == "extra":
            (folder / "part-00009.parquet").write_bytes(b"junk")
        untouched = {v: digest(v) for v in store.list_versions(dataset) if v.name != folder_name}
        out = tmp_path / "copy"
        before_out = store.list_versions(out)
        args = {"inspect": ["inspect", str(dataset)], "versions": ["versions", str(dataset)],
                "import": ["import", str(dataset), "--out", str(out)],
                "sql": ["inspect", str(dataset), "--sql", "SELECT count(*) FROM data JOIN v1 USING (prompt_id)"]}[command]
        result = CliRunner().invoke(main, args)
        if command == "import":
            check(result, out, before_out, {**kept, **untouched})
        else:
            assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.exception!r}\n{result.output}"
            event(f"{command} exit {result.exit_code}")
            if result.exit_code == 2:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            for v, files in {**kept, **untouched}.items():
                assert digest(v) == files
            assert not list(dataset.glob(".tmp-*"))

    run()
