"""The training loop: forward, backward, clip, sync-before-step, step, log, checkpoint.

One optimizer step ``t`` (0-based; metrics and checkpoints count completed steps, ``t + 1``):

1. an online refresh when a round ends (``refresh.Rounds``): a new shard, a new segment;
2. at a segment start the reference becomes the current policy (``schedule.SyncSchedule``);
3. the step's reference log-probs, then :func:`run_step`: every micro-batch's forward,
   the objective's loss weighted by its share of the step, ``backward``;
4. clip the gradient (averaged across processes by the ``accelerator.prepare`` wrapper);
5. the humanline sync when due (method.md §2): AFTER backward and clipping, BEFORE the update;
6. ``optimizer.step()``, ``scheduler.step()``; one line of metrics; checkpoint when due.

Everything a run is built from lives elsewhere: settings (``settings``), objectives
(``objectives``), batches and look-ahead (``batches``), the model and optimizer (``policy``),
reference sources (``reference``), online rounds (``refresh``), run directories
(``checkpoint``, ``run_log``).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate.utils import DistributedType

from humanline_data.backends import load_tokenizer
from humanline_data.errors import HumanlineError
from humanline_data.models import resolve_model
from humanline_data.outputs import check_output
from humanline_train import checkpoint
from humanline_train.batches import ShardLoader, Step, StepStream, open_shards
from humanline_train.policy import check_lora, make_accelerator, prepare_training, resolve_precision
from humanline_train.reference import make_reference
from humanline_train.refresh import Rounds
from humanline_train.run_log import RunLog, means, step_row
from humanline_train.schedule import SyncSchedule
from humanline_train.settings import TrainConfig

Hook = Callable[..., None]


def train(config: TrainConfig, hooks: dict[str, Hook] | None = None) -> Path:
    """Run (or resume) training; return RUN_DIR. ``hooks`` (tests): ``reference(step, index,
    batch, ref_parts, policy_parts)`` per micro-batch, ``before_step(step, policy)`` right
    before ``optimizer.step()``."""
    run = Training(config, hooks or {})
    # from here on the run directory is this run's (main process): created, or cleaned and its metrics cut back
    with checkpoint.held_run_dir(run.run_dir, None if config.resume else config.settings(), run.step,
                                 run.accel.is_main_process):
        run.restore()
        with RunLog(config, run.accel, run.total, run.step) as log:
            try:
                while run.step < run.total and run.take_step(log):
                    pass
                if not checkpoint.has_checkpoint(run.run_dir, run.step):
                    run.save()
            finally:
                run.rounds.close()
        log.report_truncation(run.stream.loader.truncation, config.data.max_length)
    return run.run_dir


class Training:
    """One run's live parts, built from its config (a recipe, as torchtune's): the accelerator,
    the run directory and the checkpoint it resumes from, the data (online rounds and the step
    stream), the policy, optimizer and scheduler, the reference and its sync schedule, and
    ``step``, the optimizer steps completed. :func:`train` drives it step by step."""

    def __init__(self, config: TrainConfig, hooks: dict[str, Hook]):
        self.config, self.hooks = config, hooks
        pinned = check_config(config)  # the shard version, opened and checked once
        self.accel = accel = make_accelerator(config)
        check_distributed(config, accel)
        self.run_dir = Path(config.out)
        self.resume_from = checkpoint.check_resume(self.run_dir, config.settings()) if config.resume else None
        if not config.resume:
            checkpoint.check_new_run_dir(self.run_dir)
        accel.wait_for_everyone()  # every process has checked before the main one creates anything
        _seed_everything(config.data.seed)
        self.objective = config.objective_class(config.objective, config.humanline.clip_range)
        model_path = resolve_model(config.model.model)
        self.tokenizer = load_tokenizer(model_path)
        self.saved = checkpoint.load(self.resume_from) if self.resume_from else ({}, {})  # trainer, reference state
        self.step = self.saved[0].get("step", 0)
        self.rounds = Rounds(config, self.run_dir, model_path, self.tokenizer, accel)
        self.data, self.stream = self.rounds.first_segment(self.saved[0].get("data"), self.step, pinned)
        self.total = planned_steps(config, self.stream.loader)
        self.policy, self.optimizer, self.scheduler = prepare_training(model_path, config, self.resume_from, accel,
                                                                       self.total)
        self.schedule = SyncSchedule(self.total, config.humanline.sync, config.humanline.sync_k,
                                     config.online.refresh_every,
                                     update_in_backward=accel.distributed_type == DistributedType.DEEPSPEED,
                                     segment_start=self.data["segment_start"])
        self.reference = make_reference(config, self.policy, accel, model_path, self._rest_of_run,
                                        resumed=self.resume_from is not None)

    def _rest_of_run(self):
        """The steps still to run, from a fresh pass over the current shards."""
        return StepStream(self.stream.loader.reopened(), self.step).drain(self.step, self.total - self.step)

    def restore(self) -> None:
        """Resuming: the optimizer, scheduler and reference as the checkpoint left them. The loaded
        checkpoint state is not kept past this point (what the optimizer and reference need, they keep)."""
        saved, self.saved = self.saved, None
        if self.resume_from:
            checkpoint.restore(self.resume_from, *saved, self.optimizer, self.scheduler, self.reference, self.accel)

    def save(self) -> None:
        state = checkpoint.trainer_state(self.config, self.step, self.optimizer, self.scheduler, self.data)
        checkpoint.save_run(self.run_dir, self.step, self.policy, self.tokenizer, state, self.reference, self.accel)
        if self.accel.is_main_process:
            checkpoint.prune(self.run_dir, self.config.run.keep_last, protect={self.data["segment_start"], self.step})

    def sync(self, first: int, times: dict[str, float]) -> None:
        """The reference becomes the current weights for the steps of ``first``'s window."""
        started = time.perf_counter()
        self.reference.sync(self.policy, self.stream.numbered(first, self.schedule.window(first)))
        times["sync"] += time.perf_counter() - started

    def take_step(self, log: RunLog) -> bool:
        """One optimizer step (the module doc's 1-6) and its metrics line; a checkpoint when due.
        False when the data ran out before it."""
        step, schedule, times = self.step, self.schedule, dict.fromkeys(("forward", "backward", "reference", "sync"), 0.0)
        if schedule.refresh_due(step):
            self.data, self.stream = self.rounds.next_round(self.data, step, self.total, self.policy, self.save)
            schedule.segment_start = step
        started = time.perf_counter()
        if schedule.at_segment_start(step):
            self.sync(step, times)
        batches = self.stream.next()
        if batches is None:
            return False
        refs = [self.reference.logps(step, i, b) for i, b in enumerate(batches.batches)]
        times["reference"] = time.perf_counter() - started - times["sync"]
        if schedule.sync_before_backward(step):
            self.sync(step + 1, times)
        loss, metrics, tokens = run_step(self.objective, self.policy, batches, refs, self.accel, self.config, times, step,
                                         self.hooks)
        grad_norm = self.accel.clip_grad_norm_(self.policy.parameters(), self.config.optimizer.max_grad_norm)  # DeepSpeed: None
        checkpoint.check_finite_step(self.run_dir, step + 1, loss, grad_norm)
        if schedule.sync_before_update(step):
            self.sync(step + 1, times)
        if "before_step" in self.hooks:
            self.hooks["before_step"](step, self.policy)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step + 1
        log.write(step_row(self.step, loss, metrics, grad_norm, lr, tokens, times, time.perf_counter() - started,
                           self.stream.loader.truncation, self.data["round"]))
        if self.step == self.total or (self.config.run.save_every and self.step % self.config.run.save_every == 0):
            self.save()
        return True


def run_step(objective, policy, step: Step, refs: list, accel, config: TrainConfig, times: dict, index: int,
             hooks: dict) -> tuple[float | None, dict, int]:
    """Forward and backward of every micro-batch of one optimizer step; (the step's loss over
    every process, this process's mean metrics, tokens run).

    Parts of a micro-batch that need no gradient (KTO's KL rows) run first, for the objective's
    step-wide statistics; then each micro-batch's loss, a mean over its units, is weighted by its
    share of the step's units (over all micro-batches and processes) and scaled back up by the
    gradient averaging of accumulation and data parallelism, so the update equals that of the
    whole step's mean however the step is split.
    """
    batches = [b.to(accel.device) for b in step.batches]
    grads = objective.grad_parts()
    started = time.perf_counter()
    with torch.no_grad():
        free = [[policy(*_rows(p)) if not g else None for p, g in zip(b.parts(), grads)] for b in batches]
    times["forward"] += time.perf_counter() - started
    context = objective.prepare_step(list(zip(free, refs)), batches, lambda t: accel.reduce(t, "sum"))
    step_units = step.completion_tokens if objective.unit == "tokens" else step.examples
    scale = config.data.grad_accum * accel.num_processes
    loss_sum, rows, tokens = 0.0, [], 0
    for i, (batch, ref) in enumerate(zip(batches, refs)):
        t0 = time.perf_counter()
        with accel.accumulate(policy):  # one gradient all-reduce per step; DeepSpeed's boundary at the last
            parts = [out if out is not None else policy(*_rows(p)) for out, p in zip(free[i], batch.parts())]
            loss, metrics = objective.loss(parts, ref, batch, context)
            share = loss * (objective.units(batch) / step_units)
            t1 = time.perf_counter()
            accel.backward(share * scale)  # accelerate divides by grad_accum, the wrapper averages processes
        times["forward"] += t1 - t0
        times["backward"] += time.perf_counter() - t1
        if "reference" in hooks:
            hooks["reference"](index, i, batch, ref, [p.detach() for p in parts])
        loss_sum += float(share.detach())
        rows.append(metrics)
        tokens += batch.num_tokens
    total_loss = float(accel.reduce(torch.tensor(loss_sum, device=accel.device), "sum"))
    return total_loss, means(rows), tokens


def _rows(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.input_ids, batch.attention_mask, batch.completion_mask




def planned_steps(config: TrainConfig, loader: ShardLoader) -> int:
    """Optimizer steps to run: --max-steps, else --epochs passes (:meth:`ShardLoader.count_steps`)."""
    if config.online.refresh_every:
        return int(config.data.max_steps)
    planned = loader.count_steps()
    return min(planned, config.data.max_steps) if config.data.max_steps else planned


def pin_shards(config: TrainConfig):
    """A new run names its shard version exactly: a dataset folder resolves to its newest
    version, and the version's manifest sha256 is recorded (a resume trains on exactly it).
    Returns the opened, checked version (None without shards)."""
    if config.data.shards is None:
        return None
    version = open_shards(config.data.shards, config.objective_class)
    config.data.shards = str(Path(version.path).resolve())
    config.data.shards_manifest_sha256 = version.parent_ref()["manifest_sha256"]
    return version


def check_pinned_shards(config: TrainConfig):
    """A resumed run trains on the version it pinned (named again as that version or its dataset
    folder, or not at all); it must still be there, unchanged. Returns the opened version."""
    data = config.data
    pinned = checkpoint.read_settings(Path(config.out)).get("data", {})
    if pinned.get("shards") is None:
        return None
    if data.shards is None or Path(data.shards).resolve() in (Path(pinned["shards"]), Path(pinned["shards"]).parent):
        data.shards, data.shards_manifest_sha256 = pinned["shards"], pinned["shards_manifest_sha256"]
    if not Path(data.shards).is_dir():
        raise HumanlineError(f"--resume: the run's shard version {data.shards} is gone")
    try:
        version = open_shards(data.shards, config.objective_class)
    except HumanlineError as err:
        raise HumanlineError(f"--resume: the run's shard version {data.shards} is no longer readable ({err})") from None
    if version.parent_ref()["manifest_sha256"] != data.shards_manifest_sha256:
        raise HumanlineError(f"--resume: the run's shard version {data.shards} changed since the run started "
                             f"(manifest sha256 {data.shards_manifest_sha256} expected)")
    return version


def check_config(config: TrainConfig):
    """Refuse bad settings with one line; resolve precision; pin (or, resuming, re-check) the
    shard version and return it opened (None for an online run without shards)."""
    config.check()
    check_output(config.out, "run")
    online, data, hl = config.online, config.data, config.humanline
    if online.refresh_every:
        missing = [f for f, v in (("--prompts", online.prompts), ("--scorer", online.scorer), ("--max-steps", data.max_steps)) if not v]
        if missing:
            raise HumanlineError(f"--refresh-every needs {', '.join(missing)}")
    elif data.shards is None:
        raise HumanlineError("--shards is required (or --refresh-every with --prompts for an online run)")
    if not config.objective_class.needs_reference and (hl.sync or hl.clip):
        raise HumanlineError(f"--loss {config.loss} is reference-free: humanline sync and clip do not apply "
                             "(pass --no-humanline)")
    config.model.precision = resolve_precision(config.model.precision)
    check_lora(config.model)
    return check_pinned_shards(config) if config.resume else pin_shards(config)


def check_distributed(config: TrainConfig, accel) -> None:
    """Settings that need whole weights on every process are refused under FSDP / DeepSpeed."""
    if not checkpoint.sharded(accel):
        return
    kind = accel.distributed_type.value
    if config.humanline.reference == "copy":
        raise HumanlineError(f"--reference copy keeps whole weights on every process; under {kind} use --reference lookahead")
    if config.model.lora_r:
        raise HumanlineError(f"--lora-r saves merged weights from whole adapters; under {kind} train without LoRA or with DDP")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
