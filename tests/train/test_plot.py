"""humanline-train plot: PNG curves from runs' metrics.jsonl, one-line errors for bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from humanline_data.errors import HumanlineError
from humanline_train.plot import MetricsError, plot_command, plot_runs, read_metrics, smooth

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run: Path, records: list[dict]) -> Path:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _runs(tmp_path: Path) -> list[Path]:
    offline = _write_run(
        tmp_path / "offline",
        [{"step": s, "loss": 0.69 / s, "margin": 0.1 * s, "lr": 5e-6, "phase": "train"} for s in range(1, 21)],
    )
    humanline = _write_run(
        tmp_path / "humanline",
        [{"step": s, "loss": 0.6 / s, "margin": 0.2 * s, "unclamped_frac": 0.95} for s in range(1, 21)],
    )
    return [offline, humanline]


def test_read_metrics_keeps_numeric_series_by_step(tmp_path):
    run = _write_run(tmp_path / "r", [{"step": 1, "loss": 1.0, "note": "x"}, {"step": 3, "loss": None, "kl": 2}])
    series = read_metrics(run)
    assert set(series) == {"loss", "kl"}
    steps, values = series["loss"]
    assert steps == [1, 3] and values[0] == 1.0 and math.isnan(values[1])
    assert series["kl"] == ([3], [2.0])


def test_smooth_is_trailing_mean():
    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_cli_writes_png_for_two_runs(tmp_path):
    runs = _runs(tmp_path)
    out = tmp_path / "plots" / "cmp.png"
    result = CliRunner().invoke(
        plot_command, [*map(str, runs), "--out", str(out), "--metrics", "loss,margin,unclamped_frac", "--smooth", "3"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_default_metrics_are_all_logged_ones(tmp_path):
    import matplotlib.image

    out = plot_runs(_runs(tmp_path), tmp_path / "all.png")
    height, width, _ = matplotlib.image.imread(out).shape
    assert width > height  # 4 metrics (loss, margin, lr, unclamped_frac) on a 3-column grid


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n', "metrics.jsonl:2: malformed JSON"),
        ('{"step": 1, "loss": 1.0}\n\n{"loss": 2.0}\n', "metrics.jsonl:3: expected a JSON object with an integer 'step'"),
        ("", "metrics.jsonl: no metric records"),
    ],
)
def test_bad_metrics_file_is_one_line_error_with_location(tmp_path, content, expected):
    good = _runs(tmp_path)[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text(content)
    out = tmp_path / "x.png"
    with pytest.raises(HumanlineError) as err:
        plot_runs([good, bad], out)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert str(bad / "metrics.jsonl") in str(err.value)
    assert not out.exists()


def test_unknown_metric_and_missing_run_are_errors(tmp_path):
    runs = _runs(tmp_path)
    with pytest.raises(MetricsError, match="metric 'reward' is in no run"):
        plot_runs(runs, tmp_path / "x.png", metrics=["reward"])
    with pytest.raises(MetricsError, match="nope/metrics.jsonl: no such file"):
        plot_runs([runs[0], tmp_path / "nope"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_humanline_train_plot_reports_malformed_line_and_exits_2(tmp_path):
    from humanline_train.cli import main

    good = _runs(tmp_path)[0]
    bad = _write_run(tmp_path / "bad", [{"step": 1, "loss": 1.0}])
    with open(bad / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    out = tmp_path / "x.png"
    result = CliRunner().invoke(main, ["plot", str(good), str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {bad / 'metrics.jsonl'}:2: malformed JSON (Expecting property name enclosed in double quotes, column 2)\n"
    assert not out.exists()
