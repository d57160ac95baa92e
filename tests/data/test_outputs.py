"""outputs.check_output: the one check of every output path (data stages' datasets, training runs,
single output files), for each role: what is refused, with which line, and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from humanline_data import store
from humanline_data.errors import HumanlineError
from humanline_data.outputs import check_output
from humanline_data.schema import prompt_id

ROLES = ("dataset", "run", "file")


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """``tmp_path`` as the current folder, holding the dataset ``data/p`` (versions v1) and the
    links ``alias`` -> data/p/v1, ``ds_link`` -> data/p, ``root_link`` -> /, ``loop`` -> loop."""
    msgs = [{"role": "user", "content": "q"}]
    with store.write_version(tmp_path / "data" / "p", "prompts") as w:
        w.write(pa.table({"prompt_id": [prompt_id(msgs)], "messages": [msgs], "source": ["s"], "split": ["train"]}))
    (tmp_path / "alias").symlink_to(tmp_path / "data" / "p" / "v1")
    (tmp_path / "ds_link").symlink_to(tmp_path / "data" / "p")
    (tmp_path / "root_link").symlink_to("/")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(path, role: str, *needles: str) -> str:
    with pytest.raises(HumanlineError) as err:
        check_output(path, role)
    line = str(err.value)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, line
    return line


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path, needles", [
    ("", ["--out must name a", "''"]),
    (".", ["--out must name a", "'.'"]),
    (Path(""), ["--out must name a", "'.'"]),  # what click makes of --out ""
    ("./", ["--out must name a"]),
    ("/", ["/: the filesystem root cannot be the"]),
    ("/..", ["the filesystem root cannot be the"]),
    ("//", ["the filesystem root cannot be the"]),
    ("root_link", ["root_link: the filesystem root cannot be the"]),
    ("data/p/v1", ["data/p/v1: lies inside the version /", "/data/p/v1; versions are immutable"]),
    ("data/p/v1/sub/x", ["data/p/v1/sub/x: lies inside the version /", "/data/p/v1; versions are immutable"]),
    ("alias", ["alias: lies inside the version", "data/p/v1"]),
    ("alias/x", ["lies inside the version"]),
    ("data/p/new", ["data/p/new: lies inside the dataset folder /", "/data/p (it holds versions), so it cannot be the"]),
    ("ds_link/new", ["ds_link/new: lies inside the dataset folder /", "/ds_link (it holds versions)"]),
    ("data/p/v1/../new", ["lies inside the dataset folder /", "/data/p (it holds versions)"]),
    ("loop", ["loop: cannot use as the"]),
    ("n" * 5000, ["cannot use as the", "(File name too long, ENAMETOOLONG)"]),
    ("a\0b", ["cannot use as the", "(embedded null byte)"]),
])
def test_refused_for_every_role(tree, role, path, needles):
    refused(path, role, *needles)


@pytest.mark.parametrize("role", ["run", "file"])
@pytest.mark.parametrize("path", ["data/p", "ds_link"])
def test_a_dataset_folder_is_no_run_folder_or_file(tree, role, path):
    refused(path, role, f"{path}: is the dataset folder", "(it holds versions)")


def test_what_each_role_allows(tree):
    for path in ("data/p", "ds_link", "data/q", "new/deeper", "empty", str(tree / "fresh"), "data/p/v1/.."):
        assert check_output(path, "dataset") == Path(path)  # a dataset (new or with versions)
    for path in ("runs/a", "empty", "data/elsewhere"):
        assert check_output(path, "run") == Path(path)
    for path in ("eval.json", "plots/cmp.png", "a_file"):
        assert check_output(Path(path), "file") == Path(path)
    assert check_output(os.fsencode("runs/b").decode(), "run") == Path("runs/b")


def test_what_only_some_roles_refuse(tree):
    refused("a_file", "dataset", "a_file: exists and is not a folder, so it cannot be the dataset folder")
    refused("a_file", "run", "a_file: exists and is not a folder, so it cannot be the run folder")
    refused("empty", "file", "empty: is a folder; --out names the output file")
    with pytest.raises(ValueError, match="role must be one of dataset, run, file"):
        check_output("x", "model")


def test_nothing_is_created_or_changed(tree):
    before = sorted(str(p) for p in tree.rglob("*"))
    for role in ROLES:
        check_output("new/deeper", role)
        with pytest.raises(HumanlineError):
            check_output("data/p/v1/x", role)
    assert sorted(str(p) for p in tree.rglob("*")) == before
