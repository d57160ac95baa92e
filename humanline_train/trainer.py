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
    hooks = hooks or {}
    pinned = check_config(config)  # the shard version, opened and checked once
    accel = make_accelerator(config)
    check_distributed(config, accel)
    run_dir = Path(config.out)
    resume_from = checkpoint.check_resume(run_dir, config.settings()) if config.resume else None
    if not config.resume:
        checkpoint.check_new_run_dir(run_dir)
    accel.wait_for_everyone()  # every process has checked before the main one creates anything
    _seed_everything(config.data.seed)
    objective = config.objective_class(config.objective, config.humanline.clip_range)
    model_path = resolve_model(config.model.model)
    tokenizer = load_tokenizer(model_path)
    state, reference_state = checkpoint.load(resume_from) if resume_from else ({}, {})
    step = state.get("step", 0)
    rounds = Rounds(config, run_dir, model_path, tokenizer, accel)
    data, stream = rounds.first_segment(state.get("data"), step, pinned)
    total = planned_steps(config, stream.loader)
    policy, optimizer, scheduler = prepare_training(model_path, config, resume_from, accel, total)
    schedule = SyncSchedule(total, config.humanline.sync, config.humanline.sync_k, config.online.refresh_every,
                            update_in_backward=accel.distributed_type == DistributedType.DEEPSPEED,
                            segment_start=data["segment_start"])
    whole_run = lambda: StepStream(stream.loader.reopened(), step).drain(step, total - step)  # noqa: E731
    reference = make_reference(config, policy, accel, model_path, whole_run, resumed=resume_from is not None)
    # from here on the run directory is this run's (main process): created, or cleaned and its metrics cut back
    with checkpoint.held_run_dir(run_dir, None if config.resume else config.settings(), step, accel.is_main_process):
        if resume_from:
            checkpoint.restore(resume_from, state, reference_state, optimizer, scheduler, reference, accel)

        def save() -> None:
            state = checkpoint.trainer_state(config, step, optimizer, scheduler, data)
            checkpoint.save_run(run_dir, step, policy, tokenizer, state, reference, accel)
            if accel.is_main_process:
                checkpoint.prune(run_dir, config.run.keep_last, protect={data["segment_start"], step})

        def sync(first: int, times: dict[str, float]) -> None:
            """The reference becomes the current weights for the steps of ``first``'s window."""
            started = time.perf_counter()
            reference.sync(policy, stream.numbered(first, schedule.window(first)))
            times["sync"] += time.perf_counter() - started

        with RunLog(config, accel, total, step) as log:
            try:
                while step < total:
                    if schedule.refresh_due(step):
                        data, stream = rounds.next_round(data, step, total, policy, save)
                        schedule.segment_start = step
                    times = dict.fromkeys(("forward", "backward", "reference", "sync"), 0.0)
                    started = time.perf_counter()
                    if schedule.at_segment_start(step):
                        sync(step, times)
                    batches = stream.next()
                    if batches is None:
                        break  # the data ran out before the planned number of steps
                    refs = [reference.logps(step, i, b) for i, b in enumerate(batches.batches)]
                    times["reference"] = time.perf_counter() - started - times["sync"]
                    if schedule.sync_before_backward(step):
                        sync(step + 1, times)
                    loss, metrics, tokens = run_step(objective, policy, batches, refs, accel, config, times, step, hooks)
                    grad_norm = accel.clip_grad_norm_(policy.parameters(), config.optimizer.max_grad_norm)  # DeepSpeed: None
                    checkpoint.check_finite_step(run_dir, step + 1, loss, grad_norm)
                    if schedule.sync_before_update(step):
                        sync(step + 1, times)
                    if "before_step" in hooks:
                        hooks["before_step"](step, policy)
                    lr = scheduler.get_last_lr()[0]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    log.write(step_row(step, loss, metrics, grad_norm, lr, tokens, times, time.perf_counter() - started,
                                       stream.loader.truncation, data["round"]))
                    if step == total or (config.run.save_every and step % config.run.save_every == 0):
                        save()
                if not checkpoint.has_checkpoint(run_dir, step):
                    save()
            finally:
                rounds.close()
        log.report_truncation(stream.loader.truncation, config.data.max_length)
    return run_dir


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
