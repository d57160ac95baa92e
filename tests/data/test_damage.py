"""No silent damage (data side): clean-up deletes only its own marked, abandoned work folders;
every ``--out`` goes through outputs.check_output; a full disk is one line and leaves nothing
visible; manifests that lie about kind or rows are refused on read; model folders without
weights are refused. Each bad case: one ``error:`` line, exit 2, nothing already there changed."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from humanline_data import store, workdirs
from humanline_data.backends import GenerationError, load_backend
from humanline_data.errors import CorruptVersionError, HumanlineError, ModelNotFoundError
from humanline_data.generate import generate
from humanline_data.models import resolve_model
from humanline_data.schema import prompt_id
from small_disk import fill_to, on_small_fs
from test_hostile import cli, imported, jsonl, killed_writer, one_error, temporaries

SCORED = [{"prompt": p, "completion": f"{p} answer {s}", "reward": float(s), "sample_idx": s}
          for p in ("Q1", "Q2") for s in range(2)]


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed): file bytes' sha256, link target, or dir."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    """Datasets ``scored`` (2 prompts x 2 samples), ``completions``, ``prompts`` and ``pairs`` under
    ``tmp_path / "data"``, each with one version."""
    root = tmp_path / "data"
    scored = jsonl(tmp_path / "s_train.jsonl", SCORED)
    completions = jsonl(tmp_path / "c_train.jsonl", [{k: v for k, v in r.items() if k != "reward"} for r in SCORED])
    prompts = jsonl(tmp_path / "p_train.jsonl", [{"prompt": "Q1", "answer": "1"}])
    paths = {kind: imported(src, "--out", root / kind).path.parent
             for kind, src in (("scored", scored), ("completions", completions), ("prompts", prompts))}
    result = cli("pair", paths["scored"], "--out", root / "pairs")
    assert result.exit_code == 0, result.output
    return {**paths, "pairs": root / "pairs"}


# ------------------------------------------------------------------ 1. delete only what is ours


def plant_foreign_entries(dataset: Path, outside: Path) -> None:
    """Entries named like work folders that humanline-data did not make, or that only look marked."""
    (dataset / ".tmp-other-program").mkdir()
    (dataset / ".tmp-other-program" / "data.bin").write_bytes(b"keep")
    (dataset / ".tmp-a-file").write_text("keep")
    outside.mkdir()
    (outside / workdirs.MARKER).write_text(json.dumps({"made_by": "humanline-data", "pid": 1, "host": "h", "created_at": "t"}))
    (outside / "precious").write_text("keep")
    (dataset / ".tmp-link-to-a-marked-folder").symlink_to(outside)
    (dataset / ".tmp-linked-marker").mkdir()
    (dataset / ".tmp-linked-marker" / workdirs.MARKER).symlink_to(outside / workdirs.MARKER)
    for name, marker in ((".tmp-bad-marker", "not json"), (".tmp-foreign-marker", json.dumps({"pid": 1})),
                         (".tmp-marker-folder", None)):
        (dataset / name).mkdir()
        if marker is None:
            (dataset / name / workdirs.MARKER).mkdir()
        else:
            (dataset / name / workdirs.MARKER).write_text(marker)
        (dataset / name / "work").write_text("keep")
    (dataset / ".partial-0123456789abcdef").mkdir()
    (dataset / ".partial-0123456789abcdef" / "chunk-000000.parquet").write_bytes(b"keep")
    (dataset / "notes.txt").write_text("keep")


def test_cleanup_and_gc_remove_only_marked_abandoned_work_folders(data, tmp_path):
    dataset = data["scored"]
    plant_foreign_entries(dataset, tmp_path / "outside")
    foreign, outside = snapshot(dataset), snapshot(tmp_path / "outside")
    killed_writer(dataset)  # a real writer: it cleans up too before it is killed
    [abandoned] = [n for n in temporaries(dataset) if workdirs.is_marked(dataset / n)]

    v2 = imported(tmp_path / "s_train.jsonl", "--out", dataset)  # every writer cleans up first
    assert not (dataset / abandoned).exists()
    assert {k: v for k, v in snapshot(dataset).items() if not k.startswith("v2")} == foreign
    killed_writer(dataset)
    result = cli("gc", dataset)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].endswith("in 1 temporary folders")
    assert {k: v for k, v in snapshot(dataset).items() if not k.startswith("v2")} == foreign
    assert snapshot(tmp_path / "outside") == outside and v2.path.is_dir()


def test_gc_refuses_a_folder_that_is_not_a_dataset_before_removing_anything(data, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    plant_foreign_entries(home, tmp_path / "outside")
    (home / "v1").mkdir()  # named like a version, but no manifest
    (home / "v1" / "file").write_text("keep")
    killed_writer(data["scored"])
    before, dataset_before = snapshot(home), snapshot(data["scored"])
    for args in ([home], [data["scored"], home], [tmp_path / "nothing"], [home / "notes.txt"]):
        line = one_error(cli("gc", *args), "not a dataset folder", "nothing removed")
        assert str(args[-1]) in line
    assert snapshot(home) == before and snapshot(data["scored"]) == dataset_before


class FailsAfterFirstChunk:
    """A loaded backend that samples its first call and fails the second (a crash mid-run)."""

    name = "transformers"

    def __init__(self, backend) -> None:
        self.backend, self.calls = backend, 0

    def versions(self) -> dict:
        return self.backend.versions()

    def generate(self, prompts, seeds, params):
        self.calls += 1
        if self.calls > 1:
            raise GenerationError("the sampler crashed")
        return self.backend.generate(prompts, seeds, params)

    def close(self) -> None:
        self.backend.close()


def test_generate_work_folder_is_ours_alone(data, tiny_model, tmp_path):
    """generate's .partial-<key> checkpoints: kept for the resume after a crash, refused while
    another run holds them or when they carry no marker, removed after the commit."""
    prompts = imported(jsonl(tmp_path / "q_train.jsonl", [{"prompt": f"Q{i}"} for i in range(3)]), "--out", tmp_path / "q")
    out = tmp_path / "gen"
    opts = dict(n=1, max_new_tokens=3, top_p=1.0, batch_size=1, seed=1)
    crashing = FailsAfterFirstChunk(load_backend("transformers", tiny_model))
    with pytest.raises(GenerationError, match="the sampler crashed"):
        generate(prompts.path, out, tiny_model, backend=crashing, **opts)
    [work] = out.glob(".partial-*")
    assert workdirs.is_marked(work) and sorted(p.name for p in work.glob("chunk-*")) == ["chunk-000000.parquet"]
    kept = {k: v for k, v in snapshot(work).items() if k != workdirs.MARKER}
    args = ["generate", prompts.path, "--model", tiny_model, "--out", out, "--backend", "transformers",
            *[a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", v)]]

    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)  # another live run holds it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        one_error(cli(*args), f"{work}: in use by another process (pid {os.getpid()}")
    finally:
        os.close(fd)
    marker = (work / workdirs.MARKER).read_bytes()
    (work / workdirs.MARKER).unlink()  # not made by us (as far as anyone can tell)
    one_error(cli(*args), f"{work}: exists but holds no {workdirs.MARKER} marker")
    assert {k: v for k, v in snapshot(work).items() if k != workdirs.MARKER} == kept
    assert store.list_versions(out) == []

    (work / workdirs.MARKER).write_bytes(marker)
    (out / ".partial-foreign").mkdir()
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert store.open_version(out).manifest["stats"]["resumed_chunks"] == 1
    assert sorted(p.name for p in out.iterdir()) == [".partial-foreign", "v1"]


# ------------------------------------------------------------------ 2. where outputs go


def doomed_args(command: str, data: dict[str, Path], tmp_path: Path) -> list:
    """Arguments of ``command`` whose input fails once the output is checked (bad JSON, the wrong
    kind), to which ``--out <bad>`` is added: should the check ever be lost, the command fails
    on its input and writes nothing (the cases include the filesystem root)."""
    bad_json = tmp_path / "bad_train.jsonl"
    bad_json.write_text('{"prompt": ')
    return {
        "import": ["import", bad_json],
        "generate": ["generate", data["pairs"], "--model", tmp_path / "no-model"],
        "merge": ["merge", data["prompts"]],
        "score": ["score", data["prompts"], "--scorer", "math"],
        "pair": ["pair", data["completions"]],
    }[command]


@pytest.mark.parametrize("command", ["import", "generate", "merge", "score", "pair"])
def test_every_stage_refuses_outputs_that_are_no_dataset_folder(data, tmp_path, monkeypatch, command):
    args = doomed_args(command, data, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "root_link").symlink_to("/")
    (cwd / "alias").symlink_to(data["scored"] / "v1")
    monkeypatch.chdir(cwd)
    before, root = snapshot(tmp_path), sorted(os.listdir("/"))
    v1 = data["scored"] / "v1"
    for out, needle in [("", "--out must name a folder"), (".", "--out must name a folder"),
                        ("/", "/: the filesystem root cannot be the dataset folder"),
                        ("root_link", "root_link: the filesystem root cannot be"),
                        (v1, f"{v1}: lies inside the version {v1}; versions are immutable"),
                        (v1 / "x", "lies inside the version"), ("alias", "alias: lies inside the version"),
                        (data["scored"] / "inner", f"lies inside the dataset folder {data['scored']} (it holds versions)")]:
        one_error(cli(*args, "--out", out), needle)
    assert snapshot(tmp_path) == before and sorted(os.listdir("/")) == root


# ------------------------------------------------------------------ 3. a full disk


def run_at_each_fill(mount: Path, dataset: Path, args: list, pages) -> list[dict]:
    """Run the CLI ``args`` with each number of ``pages`` left free, one after the other; each
    run's exit code, stderr, the dataset's entries, whether v1 stayed byte-identical and the
    stats of the version it made (which is then removed)."""
    before = snapshot(dataset / "v1")
    results = []
    for free_pages in pages:
        fill_to(mount, free_pages)
        result = cli(*args)
        made = dataset / "v2" / store.MANIFEST
        results.append({"exit": result.exit_code, "stderr": result.stderr, "entries": sorted(os.listdir(dataset)),
                        "v1_kept": snapshot(dataset / "v1") == before,
                        "stats": json.loads(made.read_text())["stats"] if made.exists() else None,
                        "exception": None if result.exit_code in (0, 2) else repr(result.exception)})
        shutil.rmtree(dataset / "v2", ignore_errors=True)
    return results


def import_on_a_full_disk(mount: Path, small: str, big: str) -> list[dict]:
    dataset = mount / "data"
    imported(small, "--out", dataset)
    return run_at_each_fill(mount, dataset, ["import", big, "--out", dataset], [*range(12), 100])


def generate_on_a_full_disk(mount: Path, model: str) -> list[dict]:
    """Levels 0, 1 and 3 pages: the checkpoint folder's marker fails, then its chunk (~6.4 KB,
    two pages, with its two 200-character prompts), then the version's writes, the chunk kept."""
    dataset = mount / "data"
    prompts = [{"prompt": f"Q{i} {os.urandom(100).hex()}"} for i in range(2)]
    imported(jsonl(mount / "q_train.jsonl", prompts), "--out", dataset)
    (mount / "q_train.jsonl").unlink()
    args = ["generate", dataset / "v1", "--model", model, "--out", dataset, "--n", "2", "--max-new-tokens", "3",
            "--top-p", "1.0", "--backend", "transformers"]
    return run_at_each_fill(mount, dataset, args, [0, 1, 3, 100])  # 100: no filler


def assert_clean_failures(results: list[dict], visible: list[str]) -> list[str]:
    """Every run exited 0 or with one ``No space left on device`` line, left ``visible`` (plus v2
    when it succeeded) and v1 unchanged; the lines, which show where each run failed."""
    lines = []
    for r in results:
        assert r["exit"] in (0, 2), r["exception"]
        assert r["v1_kept"]
        assert [e for e in r["entries"] if not e.startswith(".partial-")] == visible + (["v2"] if r["exit"] == 0 else [])
        assert not [e for e in r["entries"] if e.startswith(".tmp-")]
        if r["exit"] == 2:  # generate's progress bar may come before the one error line
            *progress, line = r["stderr"].strip().splitlines()
            assert not [p for p in progress if p.startswith(("error", "Traceback"))], r["stderr"]
            assert line.startswith("error: ") and line.endswith("cannot write (No space left on device, ENOSPC)"), line
            lines.append(line)
    assert results[-1]["exit"] == 0  # enough room in the end
    return lines


def test_import_on_a_full_disk_is_one_line_at_every_write(tmp_path):
    small = jsonl(tmp_path / "small_train.jsonl", SCORED[:1])
    big = jsonl(tmp_path / "big_train.jsonl", [{"prompt": f"Q{i} {os.urandom(16).hex()}", "completion": os.urandom(40).hex(),
                                                "reward": 1.0} for i in range(300)])
    lines = assert_clean_failures(on_small_fs(tmp_path, "256k", __file__, "import_on_a_full_disk", str(small), str(big)), ["v1"])
    failed_at = {line.split(": cannot write")[0].rsplit("/", 1)[1] for line in lines}
    assert failed_at == {workdirs.MARKER, "part-00000.parquet", store.MANIFEST}


def test_generate_on_a_full_disk_is_one_line_and_resumes(tiny_model, tmp_path):
    results = on_small_fs(tmp_path, "128k", __file__, "generate_on_a_full_disk", str(tiny_model))
    lines = assert_clean_failures(results, ["v1"])
    partial = [line.split("/.partial-")[1].split(":")[0].split("/")[1] for line in lines if "/.partial-" in line]
    assert partial == [workdirs.MARKER, "chunk-000000.parquet"]  # then the version's own writes fail
    assert results[-1]["stats"]["resumed_chunks"] == 1  # the chunk written before the disk filled up
    assert not [e for e in results[-1]["entries"] if e.startswith(".partial-")]  # removed after the commit


# ------------------------------------------------------------------ 4. manifests that lie


def edit_manifest(version: Path, change) -> None:
    path = version / store.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def swap_part(version: Path, other: Path) -> None:
    """Put ``other``'s part in ``version`` with a manifest made to match its bytes and rows."""
    part = version / "part-00000.parquet"
    shutil.copy(other / "part-00000.parquet", part)
    rows = pq.read_metadata(part).num_rows

    def consistent(m):
        m["files"][0].update(bytes=part.stat().st_size, sha256=store.sha256_file(part), rows=rows)
        m["rows"] = rows
    edit_manifest(version, consistent)


def more_rows(m):
    m["files"][0]["rows"] += 5
    m["rows"] += 5


def listed_twice(m):
    m["files"].append(dict(m["files"][0]))
    m["rows"] *= 2


LIES = {
    "pairs-says-groups": ("pairs", lambda v, d: edit_manifest(v, lambda m: m.update(kind="groups")),
                          "column 'completions' is missing, so it does not hold the kind 'groups' its manifest says"),
    "pairs-says-prompts": ("pairs", lambda v, d: edit_manifest(v, lambda m: m.update(kind="prompts")),
                           "column 'split' is missing, so it does not hold the kind 'prompts'"),
    "scored-says-completions": ("scored", lambda v, d: edit_manifest(v, lambda m: m.update(kind="completions")),
                                "column 'reward' is not in the schema, so it does not hold the kind 'completions'"),
    "more-rows": ("scored", lambda v, d: edit_manifest(v, more_rows), "holds 4 rows, the manifest says 9"),
    "part-listed-twice": ("scored", lambda v, d: edit_manifest(v, listed_twice), "files[1] names part-00000.parquet again"),
    "part-of-another-kind": ("scored", lambda v, d: swap_part(v, d["completions"] / "v1"),
                             "column 'reward' is missing, so it does not hold the kind 'scored'"),
    "part-left-out": ("scored", lambda v, d: shutil.copy(v / "part-00000.parquet", v / "part-00001.parquet"),
                      "part-00001.parquet: a part in the version folder that its manifest does not list"),
}


@pytest.mark.parametrize("lie", LIES)
def test_manifests_that_lie_are_refused_by_every_reader(data, tmp_path, lie):
    kind, damage, needle = LIES[lie]
    version = data[kind] / "v1"
    damage(version, data)
    before = snapshot(data[kind])
    out = tmp_path / "out"
    readers = [["inspect", version], ["inspect", version, "--sql", "SELECT * FROM data"], ["import", version, "--out", out],
               ["pair", version, "--out", out], ["score", version, "--scorer", "math", "--out", out],
               ["generate", version, "--model", tmp_path / "no-model", "--out", out], ["merge", version, "--out", out]]
    for args in readers:
        assert f"{version}/" in one_error(cli(*args), needle)
    with pytest.raises(CorruptVersionError, match=re.escape(needle)):
        store.open_version(version)  # how training's open_shards reads its shards
    listing = cli("versions", data[kind])
    assert listing.exit_code == 0 and "broken" in listing.stdout
    assert snapshot(data[kind]) == before and not out.exists()


# ------------------------------------------------------------------ 7. models without weights


def model_folder(tiny_model: Path, folder: Path, weights: dict[str, bytes]) -> Path:
    """A copy of the tiny model's config and tokenizer with ``weights`` (file name -> bytes, or
    "tiny" for the tiny model's weights, "tiny-cut" for their first 1,000 bytes)."""
    folder.mkdir()
    for f in tiny_model.iterdir():
        if not f.name.endswith((".safetensors", ".bin", ".index.json")):
            shutil.copy(f, folder / f.name)
    real = (tiny_model / "model.safetensors").read_bytes()
    for name, content in weights.items():
        (folder / name).write_bytes({"tiny": real, "tiny-cut": real[:1000]}.get(content, content))
    return folder


NO_WEIGHTS = {
    "none": ({}, "has no weights: expected model.safetensors, pytorch_model.bin or a .index.json"),
    "empty-file": ({"model.safetensors": b""}, "weights file model.safetensors is empty"),
    "missing-shard": ({"model.safetensors.index.json": json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode(),
        "model-00001-of-00002.safetensors": "tiny"},
        "shard model-00002-of-00002.safetensors named by model.safetensors.index.json is missing"),
    "garbage-weights": ({"model.safetensors": b"\x00" * 4096}, "weights file model.safetensors is not safetensors (its header is no JSON)"),
    "cut-off-weights": ({"model.safetensors": "tiny-cut"}, "weights file model.safetensors is not safetensors (its header is cut off)"),
    "bad-index": ({"pytorch_model.bin.index.json": b"[]"}, "pytorch_model.bin.index.json is not a weights index"),
    "other-files-only": ({"adapter_model.safetensors": b"x", "model.gguf": b"x"}, "has no weights"),
}


@pytest.mark.parametrize("case", NO_WEIGHTS)
def test_model_folders_without_weights_are_one_line(data, tiny_model, tmp_path, case):
    weights, needle = NO_WEIGHTS[case]
    model = model_folder(tiny_model, tmp_path / "model", weights)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    for args in (["generate", data["prompts"], "--model", model, "--out", out, "--backend", "transformers"],
                 ["score", data["completions"], "--scorer", f"rm:{model}", "--out", out]):
        one_error(cli(*args), f"model {model}: {needle}")
    with pytest.raises(ModelNotFoundError, match="model "):
        resolve_model(model)  # what training and eval resolve their models with
    assert snapshot(tmp_path) == before


def test_a_model_with_its_shards_resolves(tiny_model, tmp_path):
    index = json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}).encode()
    model = model_folder(tiny_model, tmp_path / "sharded", {"model.safetensors.index.json": index,
                                                             "model-00001-of-00001.safetensors": "tiny"})
    assert resolve_model(model) == model and resolve_model(tiny_model) == tiny_model
    with pytest.raises(HumanlineError):
        resolve_model(tmp_path / "nowhere")
