"""``pair``: pairs / groups / unpaired built from real GSM8K and HH-RLHF rows with assigned rewards,
checked against plain-Python computations of the same selection."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from humanline_data.cli import main
from humanline_data.errors import CorruptVersionError, HumanlineError, WrongKindError
from humanline_data.pair import build
from humanline_data.store import list_versions, open_version, read_manifest, write_version
from scored_rows import gsm8k_rows, hh_rows, write_scored


@pytest.fixture(scope="module")
def scored(shared_data, tmp_path_factory):
    """(rows as dicts, path of the scored version holding them)."""
    rows = gsm8k_rows(shared_data) + hh_rows(shared_data)
    return rows, write_scored(tmp_path_factory.mktemp("pair") / "scored", rows)


def by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for row in rows:
        groups[row["prompt_id"]].append(row)
    return {pid: sorted(samples, key=lambda r: r["sample_idx"]) for pid, samples in groups.items()}


def expected_pairs(rows: list[dict], threshold: float) -> tuple[dict, dict]:
    """prompt_id -> (chosen row, rejected row), and drop counts, by explicit loops."""
    pairs, dropped = {}, {"single_sample": 0, "gap_at_most_threshold": 0}
    for pid, samples in by_prompt(rows).items():
        if len(samples) < 2:
            dropped["single_sample"] += 1
            continue
        best = worst = samples[0]
        for s in samples[1:]:
            if s["reward"] > best["reward"]:
                best = s
            if s["reward"] <= worst["reward"]:
                worst = s
        if best["reward"] - worst["reward"] > threshold:
            pairs[pid] = (best, worst)
        else:
            dropped["gap_at_most_threshold"] += 1
    return pairs, dropped


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_pairs_pick_max_and_min_reward_and_drop_small_gaps(scored, tmp_path):
    rows, version = scored
    result = run("pair", version, "--mode", "pairs", "--out", tmp_path / "pairs")
    assert result.exit_code == 0, result.output
    path = result.stdout.strip().splitlines()[-1]
    assert path == str(tmp_path / "pairs" / "v1")
    out = open_version(path, kinds=("pairs",))
    want, dropped = expected_pairs(rows, 0.01)
    got = out.read().to_pylist()
    assert len(got) == len(want) == 50
    for pair in got:
        best, worst = want[pair["prompt_id"]]
        assert (pair["chosen"], pair["rejected"]) == (best["completion"], worst["completion"])
        assert (pair["chosen_reward"], pair["rejected_reward"]) == (best["reward"], worst["reward"])
        assert pair["margin"] == best["reward"] - worst["reward"] > 0.01
        assert (pair["messages"], pair["answer"], pair["source"], pair["metadata"]) == (
            best["messages"], best["answer"], best["source"], best["metadata"])
    manifest = read_manifest(out.path)
    assert manifest["stats"]["dropped"] == dropped == {"single_sample": 7, "gap_at_most_threshold": 13}
    assert manifest["params"] == {"mode": "pairs", "threshold": 0.01}
    assert manifest["parents"][0]["path"] == str(version.resolve())
    assert "kept 50 of 70 prompts" in result.stderr and "7 single sample" in result.stderr


def test_gap_equal_to_threshold_is_dropped_and_ties_break_by_sample_idx(scored, tmp_path):
    rows, version = scored
    got = {p["prompt_id"]: p for p in open_version(build(version, tmp_path / "p")).read().to_pylist()}
    samples = by_prompt(rows)
    gap_equal = [pid for pid, s in samples.items() if [r["reward"] for r in s] == [0.01, 0.0]]
    ties = [pid for pid, s in samples.items() if [r["reward"] for r in s] == [1.0, 0.0, 1.0, 0.0]]
    assert gap_equal and ties
    assert not set(gap_equal) & set(got)
    for pid in ties:  # chosen = lowest sample_idx among the max, rejected = highest among the min
        assert got[pid]["chosen"] == samples[pid][0]["completion"]
        assert got[pid]["rejected"] == samples[pid][3]["completion"]


def test_groups_advantages_match_explicit_loop(scored, tmp_path):
    rows, version = scored
    out = open_version(build(version, tmp_path / "g", mode="groups"), kinds=("groups",))
    got = {g["prompt_id"]: g for g in out.read().to_pylist()}
    want = {}
    for pid, samples in by_prompt(rows).items():
        rewards = [s["reward"] for s in samples]
        if len(rewards) < 2 or len(set(rewards)) == 1:
            continue
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
        want[pid] = (samples, [(r - mean) / (std + 0.01) for r in rewards])
    assert set(got) == set(want)
    for pid, (samples, advantages) in want.items():
        assert got[pid]["completions"] == [s["completion"] for s in samples]
        assert got[pid]["rewards"] == [s["reward"] for s in samples]
        assert got[pid]["advantages"] == pytest.approx(advantages, abs=1e-12)
    hh = [g for g in got.values() if g["source"] == "hh-rlhf"]
    assert hh and all(g["advantages"] == pytest.approx([-0.35 / 0.36, 0.35 / 0.36]) for g in hh)
    assert all(g["advantages"][0] == pytest.approx(-1, abs=0.03) for g in hh)  # a pair gives ~ -/+1
    assert read_manifest(out.path)["stats"]["dropped"] == {"below_min_group_size": 7, "flat": 7}


def test_groups_keep_flat_and_min_group_size(scored, tmp_path):
    rows, version = scored
    sizes = [len(s) for s in by_prompt(rows).values()]
    out = build(version, tmp_path / "g", mode="groups", min_group_size=4, keep_flat=True)
    got = open_version(out).read().to_pylist()
    assert len(got) == sum(n >= 4 for n in sizes)
    flat = [g for g in got if len(set(g["rewards"])) == 1]
    assert all(g["advantages"] == [0.0] * len(g["rewards"]) for g in flat)
    stats = read_manifest(out)["stats"]
    assert stats["dropped"] == {"below_min_group_size": sum(n < 4 for n in sizes), "flat": 0}
    assert stats["flat_kept"] == len(flat)
    assert read_manifest(out)["params"] == {"mode": "groups", "min_group_size": 4, "keep_flat": True}


def test_unpaired_splits_each_pair(scored, tmp_path):
    rows, version = scored
    want, _ = expected_pairs(rows, 0.5)
    got = open_version(build(version, tmp_path / "u", mode="unpaired", threshold=0.5), kinds=("unpaired",)).read()
    got = got.to_pylist()
    assert len(got) == 2 * len(want)
    for good, bad in zip(got[0::2], got[1::2]):
        best, worst = want[good["prompt_id"]]
        assert good["prompt_id"] == bad["prompt_id"]
        assert (good["completion"], good["desirable"], good["reward"]) == (best["completion"], True, best["reward"])
        assert (bad["completion"], bad["desirable"], bad["reward"]) == (worst["completion"], False, worst["reward"])


@pytest.mark.parametrize("mode", ["pairs", "groups", "unpaired"])
def test_input_split_in_many_parts_gives_the_same_rows(scored, tmp_path, mode):
    rows, version = scored
    shuffled = rows[1::2] + rows[0::2]  # a prompt's samples end up in different parts
    parted = write_scored(tmp_path / "scored", shuffled, rows_per_file=37)
    assert len(list(parted.glob("part-*.parquet"))) == 6
    one = open_version(build(version, tmp_path / "one", mode=mode)).read().to_pylist()
    many = open_version(build(parted, tmp_path / "many", mode=mode)).read().to_pylist()
    key = lambda r: (r["prompt_id"], r.get("desirable"))  # noqa: E731
    assert sorted(many, key=key) == sorted(one, key=key)


def test_empty_input_gives_an_empty_version(tmp_path):
    empty = write_scored(tmp_path / "scored", [])
    for mode in ("pairs", "groups", "unpaired"):
        out = build(empty, tmp_path / mode, mode=mode)
        assert open_version(out, kinds=(mode,)).read().num_rows == 0
        assert read_manifest(out)["stats"]["dropped"] in ({"single_sample": 0, "gap_at_most_threshold": 0},
                                                          {"below_min_group_size": 0, "flat": 0})


def test_wrong_kind_is_one_line_and_writes_nothing(scored, tmp_path):
    rows, _ = scored
    completions = pa.Table.from_pylist(rows).drop_columns(["reward", "scorer"])
    with write_version(tmp_path / "c", "completions") as w:
        w.write(completions)
    with pytest.raises(WrongKindError):
        build(w.path, tmp_path / "pairs")
    result = run("pair", w.path, "--out", tmp_path / "pairs")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "kind 'completions'" in result.stderr
    assert not list_versions(tmp_path / "pairs")


def test_nan_reward_edited_into_a_part_fails_the_checksum(scored, tmp_path):
    rows, _ = scored
    version = write_scored(tmp_path / "scored", rows)
    build(version, tmp_path / "pairs")
    part = version / "part-00000.parquet"
    table = pq.read_table(part)
    rewards = table.column("reward").to_pylist()
    rewards[0] = float("nan")
    pq.write_table(table.set_column(table.schema.get_field_index("reward"), "reward", pa.array(rewards)), part)
    with pytest.raises(CorruptVersionError, match="sha256|bytes"):
        build(version, tmp_path / "pairs")
    result = run("pair", version, "--out", tmp_path / "pairs")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "part-00000.parquet" in result.stderr
    assert [p.name for p in list_versions(tmp_path / "pairs")] == ["v1"]  # the earlier version is intact
    open_version(tmp_path / "pairs")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"threshold": -0.1}, "threshold"), ({"threshold": float("nan")}, "threshold"),
     ({"mode": "groups", "min_group_size": 1}, "min group size"), ({"mode": "triples"}, "unknown pair mode")],
)
def test_bad_arguments(scored, tmp_path, kwargs, message):
    with pytest.raises(HumanlineError, match=message):
        build(scored[1], tmp_path / "out", **kwargs)
    assert not list_versions(tmp_path / "out")


def test_cli_bad_threshold_is_one_line(scored, tmp_path):
    result = run("pair", scored[1], "--threshold", "-1", "--out", tmp_path / "out")
    assert result.exit_code == 2 and result.stderr == "error: threshold must be a finite number >= 0, got -1.0\n"


def test_manifest_records_json_stats(scored, tmp_path):
    out = build(scored[1], tmp_path / "p", mode="unpaired")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "unpaired"
    assert manifest["stats"]["output_rows"] == 2 * manifest["stats"]["kept_prompts"] == manifest["rows"]
