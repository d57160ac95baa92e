"""PNG curves comparing training runs, read from each run's ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per optimizer step with an integer ``step`` and numeric
metrics (``train/loss``, ``train/rewards/margins``, ``train/kl``, ...: ``run_log``). :func:`plot_runs` draws one subplot per metric and,
in each, one line per run (labelled by the run directory's name) against ``step``. A run that
lacks a metric is simply left out of that subplot; a metric no run has is an error.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from humanline_data.errors import HumanlineError, os_errors
from humanline_data.formats.sources import read_records
from humanline_data.outputs import check_output

METRICS_FILE = "metrics.jsonl"


class MetricsError(HumanlineError):
    """A run's metrics.jsonl is missing, empty or malformed."""


Series = dict[str, tuple[list[int], list[float]]]  # metric -> (steps, values)


def read_metrics(run_dir: Path) -> Series:
    """The numeric metrics of ``run_dir/metrics.jsonl`` as ``{metric: (steps, values)}``.

    Non-numeric values (strings, lists) are ignored; ``null`` becomes NaN (a gap in the line).
    Raises a one-line error naming ``file:line`` for a line that is not a JSON object with an
    integer ``step`` (:class:`MetricsError`) or not JSON at all (``InputFormatError``), and
    naming the file when it is missing or holds no records.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise MetricsError(f"{path}: no such file (is {run_dir} a run directory?)")
    series: Series = {}
    for where, record in read_records(path):
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise MetricsError(f"{where}: expected a JSON object with an integer 'step'")
        for name, value in record.items():
            if name == "step" or isinstance(value, bool):
                continue
            if value is None or isinstance(value, (int, float)):
                steps, values = series.setdefault(name, ([], []))
                steps.append(step)
                values.append(math.nan if value is None else float(value))
    if not series:
        raise MetricsError(f"{path}: no metric records (empty file?)")
    return series


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over the last ``window`` finite values (window 1 = unchanged)."""
    out, recent = [], []
    for v in values:
        if math.isfinite(v):
            recent = (recent + [v])[-window:]
        out.append(sum(recent) / len(recent) if recent and math.isfinite(v) else math.nan)
    return out


def _labels(run_dirs: list[Path]) -> list[str]:
    """Run directory names, made longer (parent/name) only where two runs share a name."""
    names = [p.resolve().name for p in run_dirs]
    return [
        f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(run_dirs, names)
    ]


def plot_runs(run_dirs: list[Path], out: Path, metrics: list[str] | None = None, smooth_window: int = 1) -> Path:
    """Write a PNG to ``out`` comparing ``run_dirs``; return ``out``.

    ``metrics`` chooses and orders the subplots (default: every metric found, in order of first
    appearance). Raises :class:`MetricsError` for a bad metrics file or a requested metric that
    no run logged, and ``HumanlineError`` for ``smooth_window < 1``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = check_output(out, "file")
    if smooth_window < 1:
        raise HumanlineError(f"--smooth must be >= 1, got {smooth_window}")
    runs = [read_metrics(d) for d in run_dirs]
    found = list(dict.fromkeys(name for run in runs for name in run))
    if metrics is None:
        metrics = found
    missing = [m for m in metrics if m not in found]
    if missing:
        raise MetricsError(f"metric {missing[0]!r} is in no run (available: {', '.join(found)})")

    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        for i, (run, label) in enumerate(zip(runs, _labels(run_dirs))):
            if metric in run:
                steps, values = run[metric]
                style = "--" if i % 2 else "-"  # runs with equal values stay visible
                ax.plot(steps, smooth(values, smooth_window), label=label, color=colors[i % len(colors)], ls=style, lw=1.4)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    legend_cols = max(1, min(4, len(handles)))
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=legend_cols, frameon=False)
    legend_inches = 0.3 * math.ceil(len(handles) / legend_cols) + 0.1
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_inches / fig.get_figheight()))
    with os_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@click.command("plot")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--metrics", default=None, help="Comma-separated metrics to draw (default: all logged).")
@click.option("--smooth", "smooth_window", default=1, show_default=True, help="Trailing moving-average window (steps).")
def plot_command(run_dirs: tuple[Path, ...], out: Path, metrics: str | None, smooth_window: int) -> None:
    """Plot metrics.jsonl curves of one or more RUN_DIRS into one PNG (one subplot per metric)."""
    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    click.echo(plot_runs(list(run_dirs), out, chosen, smooth_window))


COMMANDS = [plot_command]
