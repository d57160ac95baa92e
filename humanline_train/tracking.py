"""Experiment trackers of a run (``--report-to``), through accelerate's own.

``--report-to tensorboard,wandb,mlflow`` (any of them; ``none``, the default, logs to
``metrics.jsonl`` only) makes the run's ``Accelerator(log_with=...)``; ``run_log.RunLog`` starts
the trackers with the run's settings (flat flag names), logs every step's row under the names of
``metrics.jsonl`` (``run_log``) at that step, and finishes them when the run ends. Each tracker
writes where its user expects it:

- TensorBoard: event files in ``RUN_DIR/tracking/humanline`` (``tensorboard --logdir RUN_DIR``);
  a resumed run purges the events of the steps it trains again;
- W&B: project ``humanline``, run name = the run directory's name, files under
  ``RUN_DIR/tracking/wandb``; with no network set ``WANDB_MODE=offline`` (your environment's
  choice) and upload later with ``wandb sync RUN_DIR/tracking/wandb/offline-run-*``;
- MLflow: experiment ``humanline``, run name = the run directory's name, at the tracking URI
  of ``MLFLOW_TRACKING_URI`` (mlflow's default: ``./mlruns``).

A resumed run starts a new W&B / MLflow run. The packages are optional: naming one that is not
installed is an error before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from humanline_data.errors import HumanlineError

PROJECT = "humanline"  # W&B project, MLflow experiment, TensorBoard sub-folder
TRACKING_DIR = "tracking"  # in RUN_DIR
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> pip package


def trackers(report_to: str) -> list[str]:
    """The trackers named by ``--report-to`` (a comma list; ``none``: no tracker), each installed."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    names = list(dict.fromkeys(n.strip() for n in report_to.split(",") if n.strip()))
    if names == ["none"]:
        return []
    if not names or any(n not in PACKAGES for n in names):
        raise HumanlineError(f"--report-to {report_to}: expected none or a comma list of {', '.join(PACKAGES)}")
    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    for name in names:
        if not available[name]():
            raise HumanlineError(f"--report-to {name} needs {PACKAGES[name]}: pip install {PACKAGES[name]}")
    return names


def accelerator_args(config) -> dict:
    """``Accelerator`` keyword arguments for the run's trackers (none: no arguments)."""
    names = trackers(config.run.report_to)
    return {"log_with": names, "project_dir": Path(config.out) / TRACKING_DIR} if names else {}


def start(accel, config, step: int) -> None:
    """Start the accelerator's trackers (main process) with the run's settings; ``step``: the
    steps already done (a resumed run's TensorBoard drops what was logged after them)."""
    if not accel.is_main_process or not accel.log_with:
        return
    from humanline_train import settings

    run_dir = Path(config.out)
    (run_dir / TRACKING_DIR).mkdir(parents=True, exist_ok=True)
    init = {"wandb": {"name": run_dir.name, "dir": str(run_dir / TRACKING_DIR)},
            "mlflow": {"run_name": run_dir.name}, "tensorboard": {"purge_step": step + 1} if step else {}}
    flat = {k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in settings.flatten(config.settings()).items()}
    accel.init_trackers(PROJECT, config=flat, init_kwargs=init)


def finish(accel) -> None:
    """Flush and close the trackers (not ``accel.end_training()``, which would also end the
    process group that later runs of this process use)."""
    for tracker in accel.trackers:
        tracker.finish()
