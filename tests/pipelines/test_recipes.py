"""The recipes in pipelines/: their dry runs end to end (tiny random models, real stage CLIs and
trainer), their flags, and their one-line errors."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from humanline_data.store import open_version, read_manifest  # noqa: E402
from pipelines import arithmetic, cpu_replication, instruction_following, math_reasoning  # noqa: E402
from pipelines.common import StepFailed, Steps, mean_se  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_recipe(name: str, out: Path, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / f"{name}.py"), "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


def assert_common_outputs(run: Path, done: subprocess.CompletedProcess, inspected: list[str]) -> dict:
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(run)
    results = json.loads((run / "results.json").read_text())
    assert results["dry_run"] is True and results["wall_seconds"] > 0
    assert (run / "results.md").read_text().startswith("# ")
    for name in inspected:
        text = (run / f"inspect_{name}.txt").read_text()
        assert "rows" in text.lower(), name
    commands = (run / "commands.sh").read_text().splitlines()
    assert any(c.startswith("humanline-train ") for c in commands)
    return results


def read_version(version: str):
    """The rows of a data version (a pyarrow table)."""
    return open_version(version).read()


def parent(version: str) -> str:
    """The first parent version of ``version``."""
    return read_manifest(version)["parents"][0]["path"]


def lineage(version: str) -> list[str]:
    """Kinds from ``version`` down its first parents to the root."""
    kinds = []
    while version:
        m = read_manifest(version)
        kinds.append(m["kind"])
        version = m["parents"][0]["path"] if m["parents"] else None
    return kinds


@pytest.mark.slow
def test_instruction_following_dry_run(tmp_path):
    run = tmp_path / "if"
    done = run_recipe("instruction_following", run, "--dry-run", "--losses", "dpo,kto", "--variants", "offline,online+humanline")
    results = assert_common_outputs(
        run, done, ["prompts", "completions", "scored", "pairs", "unpaired", "eval_prompts", "baseline"]
    )
    assert set(results["runs"]) == {f"{loss}-{v}" for loss in ("dpo", "kto") for v in ("offline", "online-humanline")}
    for name, r in results["runs"].items():
        assert 0.0 <= r["win_rate"] <= 1.0 and 0.0 <= r["lc_win_rate"] <= 1.0
        assert r["eval"]["count"] == 4 and r["eval"]["metric"] == "win_rate"
        settings = json.loads((Path(r["run_dir"]) / "settings.json").read_text())
        assert settings["humanline"]["sync"] == settings["humanline"]["clip"] == name.endswith("humanline")
        for shard in r["shards"]:  # the shard trained on: pairs/unpaired <- scored <- completions <- prompts
            kinds = lineage(shard)
            assert kinds[1:3] == ["scored", "completions"] and kinds[-1] == "prompts"
        if "online" in name:  # the second round was sampled by the live engine holding this run's step-1 weights
            assert settings["online"]["refresh_every"] == 1 and len(r["shards"]) == 2
            sampler = read_manifest(parent(parent(r["shards"][1])))
            assert (sampler["producer"]["engine"], sampler["producer"]["step"]) == ("live", 1)
            assert len(sampler["producer"]["weights_sha256"]) == 16
        else:
            assert r["shards"] == [results["data"]["unpaired" if r["loss"] == "kto" else "pairs"]]
    assert results["initial"]["eval"]["count"] == 4
    for loss in ("dpo", "kto"):
        assert_png(run / f"curves_{loss}.png")
    table = (run / "results.md").read_text()
    assert table.count("| dpo |") == 2 and "initial model" in table


@pytest.mark.slow
def test_math_reasoning_dry_run(tmp_path):
    run = tmp_path / "math"
    done = run_recipe("math_reasoning", run, "--dry-run")
    results = assert_common_outputs(run, done, ["train", "test", "online_round0", "offline_round0", "humanline_round0"])
    runs = results["runs"]
    assert {k: (r["refresh_every"], r["humanline"]) for k, r in runs.items()} == {
        "online": (1, False), "offline": (4, False), "humanline": (4, True)}
    # the same completions for every variant: 4 steps x 2 prompts x 2 samples
    assert [r["completions_generated"] for r in runs.values()] == [16, 16, 16]
    assert [len(r["rounds"]) for r in runs.values()] == [4, 1, 1]
    for r in runs.values():
        assert r["eval"]["metric"] == "pass@1" and r["eval"]["count"] == 5
        for round_ in r["rounds"]:
            assert lineage(round_["shard"])[:4] == ["groups", "scored", "completions", "prompts"]
            assert lineage(round_["shard"])[-1] == "prompts" and results["data"]["train"] in json.dumps(
                read_manifest(parent(parent(round_["scored"])))["parents"])
    assert json.loads((Path(runs["humanline"]["run_dir"]) / "settings.json").read_text())["humanline"]["sync_k"] == 2
    assert_png(run / "curves.png")
    assert_png(run / "rewards.png")


@pytest.mark.slow
def test_cpu_replication_dry_run(tmp_path):
    """The gpu scale's path (MATH train, MATH500) at dry-run sizes: every arm of the design, run
    with its sampling interval and humanline halves, evaluated per problem and reported."""
    run = tmp_path / "cpu"
    done = run_recipe("cpu_replication", run, "--dry-run", "--scale", "gpu", "--workers", "2", "--publish", tmp_path / "pub")
    plain = ["online", "stale2", "offline"]
    results = assert_common_outputs(run, done, ["train", "test", *[f"{n}_seed0_round0" for n in plain]])
    assert results["best_k"] == 2 and results["settings"]["task"] == "math"
    summary = results["variants"]
    assert list(summary) == ["online", "stale2", "stale2+humanline k=2", "offline", "offline+humanline k=2",
                             "stale2+sync only k=2", "stale2+clip only", "offline+sync only k=2", "offline+clip only"]
    assert results["runs_finished"] == results["runs_in_design"] == 9 and "9 of the design's 9 runs" in results["status"]
    assert {s["completions_generated"] for s in summary.values()} == {8}  # 4 steps x 1 prompt x 2 samples each
    # the trainer ran each variant with its sampling interval and humanline halves
    expected = {"online": (1, False, False), "stale2": (2, False, False), "offline": (4, False, False),
                "stale2+humanline k=2": (2, True, True), "offline+humanline k=2": (4, True, True),
                "stale2+sync only k=2": (2, True, False), "stale2+clip only": (2, False, True),
                "offline+sync only k=2": (4, True, False), "offline+clip only": (4, False, True)}
    test_ids = read_version(results["data"]["test"]).column("prompt_id").to_pylist()
    for name, (every, sync, clip) in expected.items():
        record = results["seeds"][name][0]
        settings = json.loads((Path(record["run_dir"]) / "settings.json").read_text())
        assert settings["online"]["refresh_every"] == every, name
        assert (settings["humanline"]["sync"], settings["humanline"]["clip"]) == (sync, clip), name
        if sync:
            assert settings["humanline"]["sync_k"] == 2, name
        assert settings["model"]["lora_r"] == 0 and settings["model"]["layout"] == "packed"
        assert len(record["rounds"]) == 4 // every and len(record["unclamped_frac"]) == 4 and record["train_seconds"] > 0
        # per-problem greedy outputs, in held-out order, agree with the evaluation's accuracy
        published = tmp_path / "pub" / "outputs" / f"{cpu_replication.slug(name)}-seed0.jsonl.gz"
        outputs = [json.loads(x) for x in gzip.decompress(published.read_bytes()).decode().splitlines()]
        assert [o["problem"] for o in outputs] == list(range(len(test_ids))) == list(range(5))
        assert "".join(str(o["correct"]) for o in outputs) == record["correct"]
        assert record["accuracy"] == pytest.approx(record["correct"].count("1") / 5)
    # each humanline variant is compared with its plain counterpart (same data), seed by seed
    assert {name: s["plain"] for name, s in summary.items() if s["plain"]} == {
        name: name.split("+")[0] for name in expected if "+" in name}
    for name, s in summary.items():
        if s["plain"]:
            assert s["vs_plain"]["per_seed"] == [pytest.approx(s["accuracy"] - summary[s["plain"]]["accuracy"])]
    # MATH500 held out, disjoint from the MATH training problems taken
    train = read_version(results["data"]["train"])
    assert train.num_rows == 4 and not set(train.column("prompt_id").to_pylist()) & set(test_ids)
    assert_png(run / "rewards.png")
    assert_png(run / "fractions.png")
    assert (tmp_path / "pub" / "results.md").read_text() == (run / "results.md").read_text()
    assert "gap closed" in (run / "results.md").read_text()

    # a run stopped mid-way (no record, no checkpoint, half an evaluation) is resumed by the same
    # command, not refused, and ends as it did uninterrupted; finished runs are reused untouched
    stopped = Path(results["seeds"]["offline"][0]["run_dir"])
    first = json.loads((stopped / "record.json").read_text())
    (stopped / "record.json").unlink()
    shutil.rmtree(stopped / "checkpoints")
    (run / "evals" / "offline-seed0.json").unlink()
    finished = {p: p.stat().st_mtime_ns for p in (run / "runs").glob("*/record.json")}
    again = run_recipe("cpu_replication", run, "--dry-run", "--scale", "gpu", "--workers", "2", "--publish", tmp_path / "pub")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((stopped / "record.json").read_text())["correct"] == first["correct"]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished


def test_replication_results_fill_only_the_marked_block_of_the_docs_page(tmp_path):
    page = tmp_path / "page.md"
    before = f"# Page\n\nintro\n\n{cpu_replication.DOCS_BEGIN}\nold\n{cpu_replication.DOCS_END}\n\nafter\n"
    page.write_text(before)
    cpu_replication.fill_docs(page, "# Title\n\n**Status: 3 of 49**\n\n## Section\n")
    assert page.read_text() == (f"# Page\n\nintro\n\n{cpu_replication.DOCS_BEGIN}\n### Title\n\n**Status: 3 of 49**\n\n"
                                f"#### Section\n{cpu_replication.DOCS_END}\n\nafter\n")
    unmarked = tmp_path / "other.md"
    unmarked.write_text("no markers\n")
    cpu_replication.fill_docs(unmarked, "# Title\n")
    assert unmarked.read_text() == "no markers\n"


def test_replication_scales_fit_their_tasks(tmp_path, capsys):
    """Each scale's sizes fit its task (the gpu scale once asked 51,200 of 12,195 arithmetic
    problems); sizes that do not end in a usage error (exit 2), before anything is written."""
    for scale, task in (("cpu", "arithmetic"), ("gpu", "math")):
        args = cpu_replication.parse_args(["--out", str(tmp_path / scale), "--scale", scale])
        sizes = cpu_replication.task_sizes(task)
        assert args.task == task and args.train_size <= sizes["train"] and args.eval_size <= sizes["test"]
    assert cpu_replication.parse_args(["--out", str(tmp_path), "--scale", "cpu"]).eval_size == 1000
    with pytest.raises(SystemExit) as exit_:
        cpu_replication.parse_args(["--out", str(tmp_path / "x"), "--scale", "gpu", "--steps", "1024"])
    assert exit_.value.code == 2 and "16384 training problems" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_parallel_runs_keep_seed_order_and_stop_at_the_budget(tmp_path):
    """Runs finishing out of order (seed 0 of "a" last) still land in each variant's records by seed;
    past --max-minutes nothing new starts."""
    import threading
    import time

    args = cpu_replication.parse_args(["--out", str(tmp_path), "--workers", "2", "--dry-run"])
    steps = Steps(tmp_path)
    todo = [(seed, name) for seed in range(3) for name in ("a", "b")]
    started, lock = [], threading.Lock()

    def run(seed, name):
        with lock:
            started.append((seed, name))
        time.sleep(0.3 if (seed, name) == (0, "a") else 0.01)
        return {"seed": seed, "name": name}

    records: dict = {}
    seen = []
    cpu_replication.run_all(args, steps, todo, run, records, lambda: seen.append({k: len(v) for k, v in records.items()}))
    assert {name: [r["seed"] for r in runs] for name, runs in records.items()} == {"a": [0, 1, 2], "b": [0, 1, 2]}
    assert sorted(started) == sorted(todo) and len(seen) == 6
    args.max_minutes = 0.0  # out of time before anything starts
    late: dict = {}
    cpu_replication.run_all(args, steps, todo, run, late, lambda: None)
    assert late == {} and len(started) == 6


def test_arithmetic_problems_are_disjoint_correct_and_seeded():
    test, train = arithmetic.splits(50, 500, seed=7)
    assert len({json.dumps(r["prompt"]) for r in test + train}) == 550
    for row in test + train:
        a, op, b = row["prompt"][-1]["content"].removeprefix("What is ").split("?")[0].split()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
    assert arithmetic.splits(50, 500, seed=7) == (test, train)
    assert arithmetic.splits(50, 500, seed=8)[0] != test


def test_gap_closed_is_a_ratio_of_paired_means_over_the_shared_seeds():
    def runs(*correct):  # one record per seed: its per-problem correctness
        return [{"accuracy": c.count("1") / len(c), "correct": c} for c in correct]

    variant, plain = runs("1100", "1110", "1111"), runs("1000", "1100")  # plain has 2 seeds: the third is unpaired
    online = runs("1110", "1111", "0000")
    closed = cpu_replication.gap_closed(variant, plain, online)
    # seed 0: variant - plain 0.25, online - plain 0.5; seed 1: 0.25, 0.5
    assert closed["seeds"] == 2 and closed["value"] == pytest.approx(0.5)
    # identical per-seed differences: the seeds' interval shrinks to a point; resampling problems does not
    assert closed["fieller"]["ci95"] == pytest.approx([0.5, 0.5])
    low, high = closed["bootstrap"]["ci95"]
    assert low < 0.5 < high and closed["bootstrap"]["draws"] == cpu_replication.stats.BOOTSTRAP_DRAWS
    assert cpu_replication.gap_closed(variant, plain, plain) is None  # no gap


def test_instruction_following_variants_map_to_trainer_settings():
    args = instruction_following.parse_args(["--out", "x", "--reward-model", "rm", "--model", "m"])
    data = {"prompts": "P", "pairs": "PAIRS", "unpaired": "UNPAIRED"}
    offline = instruction_following.train_settings(args, "dpo", "offline", data, "rm:rm")
    assert offline["sync"] is False and offline["clip"] is False and offline["shards"] == "PAIRS"
    assert "refresh_every" not in offline and "desirable_weight" not in offline  # only DPO's own settings
    assert (offline["lr"], offline["batch_size"], offline["max_steps"]) == (5e-06, 32, 312)
    kto = instruction_following.train_settings(args, "kto", "offline+humanline", data, "rm:rm")
    assert kto["shards"] == "UNPAIRED" and kto["sync_k"] == 1 and "sync" not in kto
    assert (kto["batch_size"], kto["desirable_weight"], kto["log_eps_p"]) == (64, 1.1, -1.5)
    online = instruction_following.train_settings(args, "grpo", "online", data, "rm:rm")
    assert online["refresh_every"] == 32 and online["pair_mode"] == "pairs" and online["lr"] == 2.5e-06
    assert online["sync"] is False and "shards" not in online and online["eps_low"] == 0.15
    both = instruction_following.train_settings(args, "dpo", "online+humanline", data, "rm:rm")
    assert both["refresh_prompts"] == 1024 and both["samples"] == 8 and both["sync_k"] == 1
    from humanline_train.settings import TrainConfig

    for settings in (offline, kto, online, both):  # every one is a valid config of the trainer
        TrainConfig.from_flat(out="x", **settings)


def test_grpo_variants_see_the_same_completions():
    for scale in ("cpu", "gpu"):
        args = cpu_replication.parse_args(["--out", "x", "--scale", scale])
        variants = {**cpu_replication.phase_one(args), **cpu_replication.phase_two(args, args.k_values[-1])}
        per_variant = []
        for variant in variants.values():
            f = cpu_replication.train_settings(args, "P", variant, 0)
            rounds = args.steps // variant["every"]
            per_variant.append(rounds * f["refresh_prompts"] * f["samples"])
            assert f["batch_size"] * f["grad_accum"] == args.prompts_per_step * args.n
            assert f["batch_size"] == args.n  # one group per micro-batch
            assert f["max_steps"] == args.steps and f["lora_r"] == args.lora_r
        # online, staleR, offline, the sweep, and the five phase-two arms besides staleR + humanline at the k
        assert len(set(per_variant)) == 1 and len(variants) == 3 + len(args.k_values) + 5
    cpu = cpu_replication.parse_args(["--out", "x"])
    assert (cpu.steps, cpu.stale_every, cpu.k_values, cpu.seeds, cpu.sweep_seeds, cpu.eval_size, cpu.lr) == (
        128, 64, [1, 4, 16], 5, 2, 1000, 1e-4)
    assert cpu_replication.design_runs(cpu) == 49
    assert cpu_replication.parse_args(["--out", "x", "--steps", "256", "--k-values", "2,8"]).k_values == [2, 8]
    math_args = math_reasoning.parse_args(["--out", "x"])
    assert (math_args.steps, math_args.prompts_per_step * math_args.n, math_args.stale_every) == (1600, 256, 64)
    assert (math_args.lr, math_args.sync_k, math_args.beta_kl) == (1e-6, 16, 1e-4)


@pytest.mark.parametrize("recipe,flags,message", [
    ("cpu_replication", ["--stale-every", "5"], "must divide --steps 128"),
    ("cpu_replication", ["--k-values", "1,x"], "--k-values: expected comma-separated integers"),
    ("instruction_following", [], "--reward-model is required"),
    ("instruction_following", ["--dry-run", "--losses", "dpo,ppo"], "--losses: expected a subset"),
])
def test_bad_flags_fail_in_one_line_before_writing(tmp_path, recipe, flags, message):
    (tmp_path / "keep.txt").write_text("earlier")
    run = tmp_path / "run"
    done = run_recipe(recipe, run, *flags)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
    assert not run.exists() and (tmp_path / "keep.txt").read_text() == "earlier"


def test_a_failing_step_names_the_command_and_its_error(tmp_path):
    steps = Steps(tmp_path / "run")
    with pytest.raises(StepFailed, match=r"step 'import' failed \(exit 2.*error: .*no-such-file"):
        steps.data("import", "import", tmp_path / "no-such-file.jsonl", "--out", tmp_path / "run" / "data" / "x")
    assert "humanline-data import" in (tmp_path / "run" / "commands.sh").read_text()
    assert not (tmp_path / "run" / "data").exists()


def test_mean_se():
    assert mean_se([0.2]) == (0.2, None)
    mean, se = mean_se([0.1, 0.3])
    assert mean == pytest.approx(0.2) and se == pytest.approx(0.1)
