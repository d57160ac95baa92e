"""Shared plumbing of the recipes in ``pipelines/``: run a stage CLI, keep its output, report.

A recipe is a chain of ``humanline-data`` / ``humanline-train`` commands run as subprocesses
(the recipe never copies their logic). :class:`Steps` runs one command, appends it to
``RUN_DIR/commands.sh`` (so a run can be replayed by hand), keeps its stderr in
``RUN_DIR/logs/NN-<name>.log``, times it, and returns the last line of stdout: the version
or run directory the command wrote. :func:`write_results` writes ``results.json`` and a
markdown table ``results.md``. :func:`tiny_models` builds the random tiny policy and reward
model the dry runs use.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from humanline_data.store import open_version, read_manifest
from humanline_train.checkpoint import SETTINGS, latest_checkpoint, read_refreshes, read_settings
from humanline_train.export import is_adapter
from humanline_train.plot import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "smollm2_tokenizer"
WATCH_SECONDS = 5


class StepFailed(RuntimeError):
    """A command of the recipe exited with a non-zero status."""


def executable(name: str) -> str:
    """The console script ``name`` of the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StepFailed(f"{name}: not found (install the project: pip install -e .)")
    return found


class Steps:
    """Runs the commands of one recipe run in ``run_dir``; ``seconds`` holds each one's wall time."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.script = self.run_dir / "commands.sh"
        if not self.script.exists():
            self.script.write_text("#!/usr/bin/env bash\n# Commands run by the recipe, in order.\nset -euo pipefail\n")
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return round(time.perf_counter() - self.started, 1)

    def run(self, name: str, program: str, *args, while_running: Callable[[], None] | None = None) -> str:
        """Run ``program args`` (program: ``humanline-data`` or ``humanline-train``); return the
        last stdout line. ``while_running`` is called every few seconds until the command ends.
        Raises :class:`StepFailed` with the tail of stderr on failure."""
        argv = [program, *map(str, args)]
        with open(self.script, "a") as script:
            script.write(shlex.join(argv) + "\n")
        log = self.logs / f"{len(self.seconds):02d}-{name}.log"
        print(f"[{name}] {shlex.join(argv)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        with open(log, "w") as err, tempfile.TemporaryFile("w+") as out:
            process = subprocess.Popen([executable(program), *argv[1:]], stdout=out, stderr=err, text=True)
            while True:
                try:
                    process.wait(timeout=WATCH_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if while_running is not None:
                        while_running()
            out.seek(0)
            lines = out.read().strip().splitlines()
        self.seconds[name] = round(time.perf_counter() - started, 2)
        if process.returncode != 0 or not lines:
            tail = log.read_text().strip().splitlines()[-5:]
            raise StepFailed(f"step {name!r} failed (exit {process.returncode}; log {log}): " + " | ".join(tail))
        return lines[-1]

    def data(self, name: str, *args) -> str:
        return self.run(name, "humanline-data", *args)

    def train(self, name: str, settings: dict, out, keep_checkpoints: bool = True) -> str:
        """``humanline-train --config <run>/configs/<name>.yaml --out out``: the run's settings
        (flat flag names) are written as a config file. Unless ``keep_checkpoints``, the run keeps
        only its newest two checkpoints (``keep_last``; an online run saves one per refresh, ~12x
        the model's float32 size with AdamW state). A run that ``out`` already holds (a recipe
        stopped mid-run) is resumed from its newest intact checkpoint (``--resume``) instead of refused."""
        import yaml

        settings = dict(settings) if keep_checkpoints else {**settings, "keep_last": 2}
        config = self.run_dir / "configs" / f"{name}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
        config.write_text(yaml.safe_dump(plain, sort_keys=False))
        resume = ["--resume", out] if (Path(out) / SETTINGS).is_file() else []
        return self.run(name, "humanline-train", "--config", config, "--out", out, *resume)

    def inspect(self, name: str, version) -> Path:
        """Save ``humanline-data inspect VERSION`` as ``RUN_DIR/inspect_<name>.txt``."""
        argv = [executable("humanline-data"), "inspect", str(version)]
        with open(self.script, "a") as script:
            script.write(shlex.join(["humanline-data", "inspect", str(version)]) + f" > inspect_{name}.txt\n")
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
        if done.returncode != 0:
            raise StepFailed(f"inspect {version} failed: {done.stderr.strip()}")
        out = self.run_dir / f"inspect_{name}.txt"
        out.write_text(done.stdout)
        return out

    def final_model(self, name: str, run_dir) -> Path:
        """The newest checkpoint of ``run_dir`` as a model folder: itself, or for a LoRA run (an
        adapter) the initial model with it merged in (``humanline-train export --merge``, into
        ``run_dir/final-model``, made afresh: a recipe resumed after a stop mid-export redoes it)."""
        checkpoint = latest_checkpoint(Path(run_dir))
        if checkpoint is None:
            raise StepFailed(f"{run_dir}: no checkpoint")
        if not is_adapter(checkpoint):
            return checkpoint
        out = Path(run_dir) / "final-model"
        shutil.rmtree(out, ignore_errors=True)
        self.run(f"export-{name}", "humanline-train", "export", run_dir, "--step", checkpoint.name.removeprefix("step-"),
                 "--merge", "--out", out)
        return out

    def evaluate(self, name: str, model, prompts, scorer: str, *args) -> dict:
        """``humanline-train eval`` of ``model``; its JSON result (also saved as ``evals/<name>.json``;
        its versions under ``evals/<name>/``, made afresh: a recipe resumed after a stop mid-evaluation redoes it)."""
        out, work = self.run_dir / "evals" / f"{name}.json", self.run_dir / "evals" / name
        shutil.rmtree(work, ignore_errors=True)
        self.run(f"eval-{name}", "humanline-train", "eval", "--model", model, "--prompts", prompts, "--scorer", scorer,
                   "--work", work, "--out", out, *args)
        return json.loads(out.read_text())

    def plot(self, name: str, run_dirs: list, metrics: list[str]) -> Path:
        """PNG of ``metrics`` (those the runs logged) over the runs: ``RUN_DIR/<name>.png``."""
        logged = {key for d in run_dirs for key in read_metrics(Path(d))}
        chosen = [m for m in metrics if m in logged]
        out = self.run_dir / f"{name}.png"
        self.run(f"plot-{name}", "humanline-train", "plot", *run_dirs, "--out", out, "--metrics", ",".join(chosen))
        return out


def round_rewards(run_dir, correct_at: float | None = None) -> list[dict]:
    """One row per online round of ``run_dir`` (from ``refreshes.json`` and the shards' lineage):
    ``round``, ``step`` (the round's first step), ``end_step`` (after its last), ``shard``, ``scored`` (its parent version),
    ``completions`` (samples generated), ``reward_mean`` and, with ``correct_at``, ``correct_frac``
    (fraction of samples whose reward is at least ``correct_at``)."""
    run_dir = Path(run_dir)
    settings = read_settings(run_dir)
    every, total = settings["online"]["refresh_every"], settings["data"]["max_steps"]
    rows = []
    for index, shard in sorted(read_refreshes(run_dir).items()):
        scored = read_manifest(Path(shard))["parents"][0]["path"]
        scored_manifest = read_manifest(Path(scored))
        row = {"round": index, "step": index * every, "end_step": min((index + 1) * every, total), "shard": shard,
               "scored": scored, "completions": scored_manifest["rows"],
               "reward_mean": scored_manifest["stats"]["reward_mean"]}
        if correct_at is not None:
            rewards = open_version(scored).read(columns=["reward"]).column("reward").to_pylist()
            row["correct_frac"] = sum(r >= correct_at for r in rewards) / len(rewards) if rewards else None
        rows.append(row)
    return rows


def plot_round_rewards(runs: dict[str, list[dict]], out: Path, key: str = "reward_mean") -> Path:
    """PNG of ``key`` of each round's samples against the round's first step, one line per run
    (``runs``: label -> rows like :func:`round_rewards`'s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (label, rounds) in enumerate(runs.items()):
        steps = [r["step"] for r in rounds] + [rounds[-1]["end_step"]]
        values = [r[key] for r in rounds]
        ax.step(steps, values + values[-1:], where="post", label=label, ls="--" if i % 2 else "-")
        ax.plot(steps[:-1], values, "o", ms=3, color=ax.lines[-1].get_color())
    ax.set_xlabel("step (round start)")
    ax.set_ylabel(key.replace("_", " ") + " of the round's samples")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std, ddof 1); se None for fewer than 2 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def fmt(value, se=None, digits: int = 3) -> str:
    """``0.123 ± 0.045`` (or just the value; ``-`` for None)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return f"{text} ± {se:.{digits}f}" if se is not None else text


def write_results(run_dir: Path, results: dict, title: str, columns: list[str], rows: list[list], notes: str = "") -> None:
    """Write ``results.json`` (``results``) and ``results.md`` (``title``, a table, ``notes``)."""
    run_dir = Path(run_dir)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if notes:
        lines += ["", notes.strip()]
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")


def tiny_models(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random 2-layer Llama policy and a random 1-label Llama reward model, both with the
    real SmolLM2 tokenizer and chat template, saved under ``folder`` (dry runs only)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=2, num_labels=1,
    )
    paths = []
    for name, cls in (("policy", LlamaForCausalLM), ("reward_model", LlamaForSequenceClassification)):
        torch.manual_seed(seed)
        path = Path(folder) / name
        if not (path / "config.json").is_file():
            cls(config).to(torch.float32).save_pretrained(path)
            for f in TOKENIZER_DIR.iterdir():
                shutil.copy(f, path / f.name)
        paths.append(path)
    return paths[0], paths[1]


def cli(main) -> None:
    """Run a recipe's ``main``; a failed step ends it with one line on stderr and exit status 1."""
    try:
        main()
    except StepFailed as err:
        sys.exit(f"error: {err}")


def start(args) -> Steps:
    """The :class:`Steps` of ``args.out``; fills ``args.model`` (and ``args.reward_model`` where the
    recipe has one) left unset: tiny random models for a dry run, else the embedded model."""
    steps = Steps(args.out)
    if args.dry_run and args.model is None:
        policy, reward_model = tiny_models(args.out / "models", args.seed)
        args.model = str(policy)
        if getattr(args, "reward_model", False) is None:
            args.reward_model = str(reward_model)
    args.model = args.model or "smollm2-135m-instruct"
    return steps


def add_common_flags(parser) -> None:
    """``--out RUN_DIR``, ``--dry-run`` and ``--seed`` (every recipe has them)."""
    parser.add_argument("--out", type=Path, required=True, help="Run directory (created).")
    parser.add_argument("--dry-run", action="store_true", help="Tiny random model, a few prompts and steps (CPU, minutes).")
    parser.add_argument("--seed", type=int, default=0)
