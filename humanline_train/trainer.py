"""The training loop: forward, backward, clip, sync-before-step, step, log, checkpoint.

One optimizer step ``t`` (0-based; metrics and checkpoints count completed steps, ``t + 1``):

1. *segment start* (the first step, or the first step on a refreshed shard): the reference
   becomes the current policy (``reference.sync``; look-ahead runs the window's batches now);
2. for each of ``grad_accum`` micro-batches: reference log-probs, policy log-probs (one
   forward), loss, ``backward(loss / grad_accum)``;
3. clip the gradient (averaged across processes by the ``accelerator.prepare`` wrapper: DDP,
   FSDP or DeepSpeed under ``accelerate launch`` / ``torchrun``) to ``max_grad_norm``;
4. *humanline sync* (SPEC §1) when ``t + 1 - segment_start`` is a multiple of ``sync_k``: the
   reference becomes the weights that just computed this gradient, BEFORE the update, so step
   ``t + 1`` trains against theta_t (lag 1..k updates);
5. ``optimizer.step()``, ``scheduler.step()``; one line of metrics; checkpoint when due.

Online runs (``refresh_every = R``) start a new segment every R steps: the policy is saved to
``checkpoints/step-N``, ``refresh.make_shard`` samples and scores a new shard version with it
(or, with ``refresh_async``, the version started one refresh earlier is used while the next
one is produced in another process), and the reference is re-set to the policy.

Offline runs without humanline (``humanline=False``, no refresh) never sync: the reference is
the initial model throughout (a frozen copy, or its log-probs cached on disk).

The policy is a ``LogprobModel`` prepared by accelerate together with the optimizer. DeepSpeed
runs the optimizer step inside ``accelerator.backward``; there the sync of step 4 runs before
the step's first backward instead, with the same weights (theta_t changes only at the update).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import random
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, extract_model_from_parallel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from humanline_data.errors import HumanlineError
from humanline_data.models import model_fingerprint, resolve_model
from humanline_train import checkpoint, losses
from humanline_train.batches import Batch, ShardLoader, open_shards, steps_per_epoch_estimate
from humanline_train.logprobs import LogprobModel
from humanline_train.reference import CachedReference, CopyReference, LookaheadReference, cache_path

DEFAULT_PAIR_MODE = {"dpo": "pairs", "kto": "pairs", "grpo": "groups"}


@dataclass
class TrainConfig:
    """Every setting of a run (defaults: SPEC §3). ``settings()`` is what a resume must match."""

    shards: str | None
    loss: str
    model: str
    out: str
    reference: str = "lookahead"  # lookahead | copy
    sync_k: int = 1
    humanline: bool = True  # False: no sync, no clip (the plain objective)
    log_eps_p: float = -1.5
    log_eps_r: float = 1.5
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 8  # examples per micro-batch per process
    grad_accum: int = 1
    lr: float = 5e-6
    max_grad_norm: float = 1.0
    warmup: float = 0.1  # < 1: fraction of the planned steps; >= 1: a number of steps
    max_length: int = 2048
    seed: int = 0
    beta: float = 0.1
    desirable_weight: float = 1.1
    undesirable_weight: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta_kl: float = 0.01
    lora_r: int = 0
    gradient_checkpointing: bool = False
    save_every: int = 0  # 0: only at the end
    refresh_every: int | None = None
    prompts: str | None = None
    scorer: str | None = None
    pair_mode: str | None = None
    refresh_async: bool = False
    refresh_prompts: int = 1024
    samples: int = 8
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512
    resume: bool = field(default=False, compare=False)

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("resume", "out")}

    @property
    def clip(self) -> tuple[float, float] | None:
        return (self.log_eps_p, self.log_eps_r) if self.humanline else None


Hook = Callable[..., None]


def train(cfg: TrainConfig, hooks: dict[str, Hook] | None = None) -> Path:
    """Run (or resume) training; return RUN_DIR. ``hooks`` (tests): ``reference(step, index,
    batch, ref_logps, policy_logps)`` per micro-batch, ``before_step(step, policy)`` right
    before ``optimizer.step()``."""
    hooks = hooks or {}
    _check_config(cfg)
    accel = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=cfg.grad_accum)
    _check_distributed(cfg, accel)
    run_dir = Path(cfg.out)
    resume_from = checkpoint.check_resume(run_dir, cfg.settings()) if cfg.resume else None
    if not cfg.resume:
        checkpoint.check_new_run_dir(run_dir)
    accel.wait_for_everyone()  # every process has checked before the main one creates anything
    _seed_everything(cfg.seed)
    first_shard = open_shards(cfg.shards, cfg.loss) if cfg.shards and not resume_from else None
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path)
    state, reference_state = checkpoint.load(resume_from) if resume_from else ({}, {})
    refresher = Refresher(cfg, run_dir, model_path, accel)

    step = state.get("step", 0)
    data = state.get("data") or {"shard": cfg.shards, "segment_start": 0, "round": 0}
    if data["shard"] is None:  # online run without a first shard: sample one with the initial model
        data["shard"] = str(refresher.shard_for_round(0, step, model_path, cfg.refresh_every >= cfg.max_steps))
    elif cfg.refresh_async and step == 0 and cfg.refresh_every < cfg.max_steps and accel.is_main_process:
        refresher.prefetch(1, model_path)  # round 1 samples from the initial model while round 0 trains
    loader = make_loader(cfg, first_shard or data["shard"], tokenizer, accel)
    stream = StepStream(loader, cfg.grad_accum, (step - data["segment_start"]) * cfg.grad_accum * accel.num_processes)
    total = planned_steps(cfg, loader)
    if not stream.peek(1):
        raise HumanlineError(f"{loader.version.path}: fewer examples than one optimizer step needs")

    weights = resume_from if resume_from and not cfg.lora_r else model_path  # LoRA: base + saved adapters
    # on CPU, forwards of <= max_length padded tokens (length-sorted) waste less on padding than one wide forward
    forward_tokens = cfg.max_length if accel.device.type == "cpu" else None
    policy = LogprobModel(load_policy(weights, cfg, state.get("lora")).to(accel.device), forward_tokens=forward_tokens)
    params = [p for p in policy.parameters() if p.requires_grad]

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01)
    warmup = round(cfg.warmup * total) if cfg.warmup < 1 else int(cfg.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    reference = make_reference(cfg, policy, loader, model_path)
    update_in_backward = accel.distributed_type == DistributedType.DEEPSPEED
    if update_in_backward:  # DeepSpeed reads these from its own config: make them the run's
        accel.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            gradient_clipping=cfg.max_grad_norm,
        )
    policy, optimizer = accel.prepare(policy, optimizer)
    if resume_from:
        checkpoint.check_world_size(resume_from, state, accel.num_processes)
        optimizer.load_state_dict(checkpoint.load_optimizer(resume_from, state, accel.process_index))
        scheduler.load_state_dict(state["scheduler"])
        reference.load_state_dict(reference_state)
        checkpoint.set_rng_state(state["rng"])
        checkpoint.truncate_metrics(run_dir, step)
    elif accel.is_main_process:
        checkpoint.start_run_dir(run_dir, cfg.settings())
    if isinstance(reference, CachedReference):  # never synced: the whole run against the initial model
        cached_window = StepStream(make_loader(cfg, data["shard"], tokenizer, accel), cfg.grad_accum, stream.position)
        reference.sync(None if resume_from else policy, cached_window.drain(step, total - step))

    def segment_end() -> int:
        return min(total, data["segment_start"] + cfg.refresh_every) if cfg.refresh_every else total

    def sync(first_step: int, times: dict[str, float]) -> None:
        """Set the reference to the current weights for the steps from ``first_step`` on; the
        seconds it takes are added to ``times["sync"]``."""
        if isinstance(reference, CachedReference):
            return
        started = time.perf_counter()
        last = segment_end()
        if cfg.humanline:
            last = min(last, first_step + cfg.sync_k)
        if first_step < last:
            reference.sync(policy, stream.numbered(first_step, last - first_step))
        times["sync"] += time.perf_counter() - started

    metrics_file = open(run_dir / checkpoint.METRICS, "a") if accel.is_main_process else None
    progress = _progress(accel, total, step)
    try:
        while step < total:
            if cfg.refresh_every and step - data["segment_start"] >= cfg.refresh_every:
                policy_dir = checkpoint.checkpoint_dir(run_dir, step)
                if not (policy_dir / checkpoint.TRAINER_STATE).is_file():
                    _save(run_dir, step, policy, tokenizer, _state(cfg, step, optimizer, scheduler, data, policy), reference, accel)
                round_index = data["round"] + 1
                shard = refresher.shard_for_round(round_index, step, policy_dir, step + cfg.refresh_every >= total)
                data = {"shard": str(shard), "segment_start": step, "round": round_index}
                loader = make_loader(cfg, data["shard"], tokenizer, accel)
                stream = StepStream(loader, cfg.grad_accum, 0)
            times = dict.fromkeys(("forward", "backward", "reference", "sync"), 0.0)
            started = time.perf_counter()
            if step == data["segment_start"]:
                sync(step, times)
            micro_batches = stream.next()
            if micro_batches is None:
                break  # the data ran out before the planned number of steps
            sync_due = cfg.humanline and (step + 1 - data["segment_start"]) % cfg.sync_k == 0
            if sync_due and update_in_backward:  # the engine updates inside backward: sync now (same theta_t)
                sync(step + 1, times)
            step_metrics: list[dict] = []
            tokens = 0
            for index, batch in enumerate(micro_batches):
                batch = batch.to(accel.device)
                t0 = time.perf_counter()
                ref_logps = reference.logps(step, index, batch).to(accel.device)
                t1 = time.perf_counter()
                last = index == len(micro_batches) - 1
                with contextlib.nullcontext() if last else accel.no_sync(policy):  # one all-reduce per step
                    policy_logps = policy_logprobs(cfg, policy, batch)
                    loss, metrics = batch_loss(cfg, policy_logps, ref_logps, batch, accel)
                    t2 = time.perf_counter()
                    accel.backward(loss)  # divided by grad_accum by accelerate
                t3 = time.perf_counter()
                times["reference"] += t1 - t0
                times["forward"] += t2 - t1
                times["backward"] += t3 - t2
                if "reference" in hooks:
                    hooks["reference"](step, index, batch, ref_logps, policy_logps.detach())
                step_metrics.append({"loss": loss.detach().float().cpu(), **metrics})
                tokens += batch.num_tokens
            grad_norm = accel.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)  # DeepSpeed: None (clips itself)
            if sync_due and not update_in_backward:
                sync(step + 1, times)  # SPEC §1: after backward and clipping, BEFORE the update
            if "before_step" in hooks:
                hooks["before_step"](step, policy)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seconds = time.perf_counter() - started
            means = _mean_metrics(step_metrics)  # this process's micro-batches
            row = {
                "step": step,
                **means,
                "loss": _process_mean(means["loss"], accel),  # over all processes
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "lr": lr,
                "tokens": tokens,
                "tokens_per_s": tokens / seconds,
                **{f"seconds_{k}": v for k, v in times.items()},
                "seconds_step": seconds,
                "skipped_prompts": loader.truncation.skipped_prompts,
                "truncated_completions": loader.truncation.truncated_completions,
                "round": data["round"],
            }
            if metrics_file:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
            progress.update(progress.task_ids[0], completed=step, description=f"loss {row['loss']:.4f}")
            if step == total or (cfg.save_every and step % cfg.save_every == 0):
                _save(run_dir, step, policy, tokenizer, _state(cfg, step, optimizer, scheduler, data, policy), reference, accel)
        if not (run_dir / "checkpoints" / f"step-{step}").is_dir():
            _save(run_dir, step, policy, tokenizer, _state(cfg, step, optimizer, scheduler, data, policy), reference, accel)
    finally:
        progress.stop()
        refresher.close()
        if metrics_file:
            metrics_file.close()
    if accel.is_main_process:
        t = loader.truncation
        print(
            f"truncation (last shard): {t.truncated_completions} completions cut to --max-length {cfg.max_length}, "
            f"{t.skipped_prompts} examples skipped (prompt too long), {t.examples} kept",
            file=sys.stderr,
        )
    return run_dir


def policy_logprobs(cfg: TrainConfig, policy: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The policy's per-token log-probs [N, T] of ``batch``. KTO's mismatched KL rows (the second
    half) only set the detached reference point, so they run without a graph: no backward
    compute or activation memory goes to them."""
    rows = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    if cfg.loss != "kto":
        return policy(*rows)
    b = batch.num_examples
    with torch.no_grad():
        kl_rows = policy(*(x[b:] for x in rows))
    return torch.cat([policy(*(x[:b] for x in rows)), kl_rows])


def batch_loss(cfg: TrainConfig, policy_logps: torch.Tensor, ref_logps: torch.Tensor, batch: Batch, accel: Accelerator):
    """(loss, metrics) of one micro-batch in the row layout of ``batches``."""
    mask = batch.completion_mask
    if cfg.loss == "dpo":
        b = batch.num_examples
        return losses.dpo_loss(
            policy_logps[:b], ref_logps[:b], mask[:b], policy_logps[b:], ref_logps[b:], mask[b:],
            beta=cfg.beta, clip=cfg.clip,
        )
    if cfg.loss == "kto":
        b = batch.num_examples
        kl = losses.kto_kl_rewards(policy_logps[b:], ref_logps[b:], mask[b:], clip=cfg.clip)
        reference_point = accel.gather(kl).mean().clamp(min=0).detach()
        return losses.kto_loss(
            policy_logps[:b], ref_logps[:b], mask[:b], batch.desirable, reference_point, beta=cfg.beta,
            desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight, clip=cfg.clip,
        )
    return losses.grpo_loss(
        policy_logps, ref_logps, mask, batch.advantages, beta_kl=cfg.beta_kl, eps_low=cfg.eps_low,
        eps_high=cfg.eps_high, clip=cfg.clip,
    )


class StepStream:
    """Optimizer steps (lists of ``grad_accum`` micro-batches) of a loader, with look-ahead.

    ``position`` global micro-batches are skipped first (resume). ``peek(n)`` returns up to the
    next ``n`` steps without consuming them; ``numbered(first, n)`` yields their micro-batches
    as ``(step, index, batch)`` with steps numbered from ``first``.
    """

    def __init__(self, loader: ShardLoader, grad_accum: int, position: int) -> None:
        self.position = position
        self.grad_accum = grad_accum
        self.per_step = grad_accum * loader.num_processes
        self._batches: Iterator[Batch] = loader.iter_from(position)
        self._ahead: list[list[Batch]] = []

    def peek(self, n: int) -> list[list[Batch]]:
        while len(self._ahead) < n:
            step = [b for _, b in zip(range(self.grad_accum), self._batches)]
            if len(step) < self.grad_accum:
                break
            self._ahead.append(step)
        return self._ahead[:n]

    def next(self) -> list[Batch] | None:
        ahead = self.peek(1)
        if not ahead:
            return None
        self.position += self.per_step
        return self._ahead.pop(0)

    def numbered(self, first: int, n: int) -> Iterator[tuple[int, int, Batch]]:
        for offset, step in enumerate(self.peek(n)):
            yield from ((first + offset, i, b) for i, b in enumerate(step))

    def drain(self, first: int, n: int) -> Iterator[tuple[int, int, Batch]]:
        """Like ``numbered`` but consuming the steps, holding one at a time (long windows)."""
        for offset in range(n):
            step = self.next()
            if step is None:
                return
            yield from ((first + offset, i, b) for i, b in enumerate(step))


class Refresher:
    """Online rounds: the shard version each segment trains on (SPEC §4)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, model_path: Path, accel: Accelerator) -> None:
        self.cfg, self.run_dir, self.model_path, self.accel = cfg, run_dir, model_path, accel
        self.pending: dict[int, Future] = {}
        self.pool: ProcessPoolExecutor | None = None

    def shard_for_round(self, round_index: int, step: int, policy_dir: Path, last_round: bool = False) -> Path:
        """The shard of round ``round_index`` (starting at ``step``; ``policy_dir`` holds the policy
        at ``step``), sampled with that policy (sync) or with the one at the previous refresh
        (async; then the next round starts sampling now unless ``last_round``); recorded in
        ``refreshes.json`` so a resumed run reuses it."""
        if not self.accel.is_main_process:  # the main process samples; the others read its record
            self.accel.wait_for_everyone()
            return Path(checkpoint.read_refreshes(self.run_dir)[round_index])
        recorded = checkpoint.read_refreshes(self.run_dir)
        if round_index in recorded:
            shard = Path(recorded[round_index])
        elif round_index in self.pending:
            shard = self.pending.pop(round_index).result()
        elif self.cfg.refresh_async and round_index > 0:  # resumed: the background round was lost
            previous = step - self.cfg.refresh_every
            source = checkpoint.checkpoint_dir(self.run_dir, previous) if previous > 0 else self.model_path
            shard = self._make(source, round_index)
        else:
            shard = self._make(policy_dir, round_index)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.record_refresh(self.run_dir, round_index, shard)
        if self.cfg.refresh_async and not last_round and round_index + 1 not in recorded:
            self.prefetch(round_index + 1, policy_dir)
        self.accel.wait_for_everyone()
        return shard

    def prefetch(self, round_index: int, model_dir: Path) -> None:
        """Start sampling round ``round_index`` with the policy at ``model_dir`` in another process."""
        from humanline_train import refresh

        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.pending[round_index] = self.pool.submit(refresh.make_shard, **self._kwargs(model_dir, round_index))

    def _kwargs(self, model_dir: Path, round_index: int) -> dict:
        cfg = self.cfg
        return dict(
            model_dir=Path(model_dir), prompts=cfg.prompts, offset=round_index * cfg.refresh_prompts,
            num_prompts=cfg.refresh_prompts, out=self.run_dir / "shards", scorer=cfg.scorer,
            mode=cfg.pair_mode or DEFAULT_PAIR_MODE[cfg.loss], n=cfg.samples, temperature=cfg.temperature,
            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + round_index,
        )

    def _make(self, model_dir: Path, round_index: int) -> Path:
        from humanline_train import refresh

        return refresh.make_shard(**self._kwargs(model_dir, round_index))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def load_tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError, TypeError) as err:
        raise HumanlineError(f"{model_path}: no usable tokenizer ({type(err).__name__})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise HumanlineError(f"{model_path}: the tokenizer has no chat template")
    if tokenizer.eos_token_id is None:
        raise HumanlineError(f"{model_path}: the tokenizer has no EOS token")
    return tokenizer


def load_policy(model_path: Path, cfg: TrainConfig, lora_state: dict | None) -> torch.nn.Module:
    """The policy in float32 and train mode; LoRA adapters on every linear layer when ``lora_r``.

    ``lora_state``: the adapter weights of a resumed LoRA run (its base is the initial model).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0, target_modules="all-linear")
        model = get_peft_model(model, config)
        if lora_state is not None:
            set_peft_model_state_dict(model, lora_state)
    return model.train()


def make_loader(cfg: TrainConfig, shards, tokenizer, accel: Accelerator) -> ShardLoader:
    return ShardLoader(
        shards, cfg.loss, tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
        epochs=None if cfg.refresh_every else cfg.epochs, process_index=accel.process_index,
        num_processes=accel.num_processes,
    )


def make_reference(cfg: TrainConfig, policy: torch.nn.Module, loader: ShardLoader, model_path: Path):
    if cfg.reference == "copy":
        return CopyReference(policy)
    if cfg.humanline or cfg.refresh_every:
        return LookaheadReference()
    tokenization = {"loss": cfg.loss, "max_length": cfg.max_length, "batch_size": cfg.batch_size}
    manifest_sha = loader.version.parent_ref()["manifest_sha256"]
    return CachedReference(cache_path(manifest_sha, model_fingerprint(model_path), tokenization))


def planned_steps(cfg: TrainConfig, loader: ShardLoader) -> int:
    """Optimizer steps to run: --max-steps, else --epochs passes (estimated from the manifest)."""
    if cfg.refresh_every:
        return int(cfg.max_steps)
    per_epoch = steps_per_epoch_estimate(loader, cfg.grad_accum)
    planned = cfg.epochs * per_epoch
    return min(planned, cfg.max_steps) if cfg.max_steps else planned


def _check_distributed(cfg: TrainConfig, accel: Accelerator) -> None:
    """Settings that need whole weights on every process are refused under FSDP / DeepSpeed."""
    if not _sharded(accel):
        return
    kind = accel.distributed_type.value
    if cfg.reference == "copy":
        raise HumanlineError(f"--reference copy keeps whole weights on every process; under {kind} use --reference lookahead")
    if cfg.lora_r:
        raise HumanlineError(f"--lora-r saves merged weights from whole adapters; under {kind} train without LoRA or with DDP")


def _check_config(cfg: TrainConfig) -> None:
    if cfg.loss not in ("dpo", "kto", "grpo"):
        raise HumanlineError(f"--loss {cfg.loss!r}: expected dpo, kto or grpo")
    if cfg.reference not in ("lookahead", "copy"):
        raise HumanlineError(f"--reference {cfg.reference!r}: expected lookahead or copy")
    if cfg.refresh_every:
        missing = [f for f, v in (("--prompts", cfg.prompts), ("--scorer", cfg.scorer), ("--max-steps", cfg.max_steps)) if not v]
        if missing:
            raise HumanlineError(f"--refresh-every needs {', '.join(missing)}")
    elif cfg.shards is None:
        raise HumanlineError("--shards is required (or --refresh-every with --prompts for an online run)")
    if cfg.humanline and not cfg.log_eps_p < 0 < cfg.log_eps_r:
        raise HumanlineError(f"clip range needs --log-eps-p < 0 < --log-eps-r, got {cfg.log_eps_p}, {cfg.log_eps_r}")
    for name in ("sync_k", "batch_size", "grad_accum", "max_length"):
        if getattr(cfg, name) < 1:
            raise HumanlineError(f"--{name.replace('_', '-')} must be at least 1")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _process_mean(value: float | None, accel: Accelerator) -> float | None:
    """Mean of a per-process value over all processes (None when any is None or the mean is not finite)."""
    mean = float(accel.reduce(torch.tensor(math.nan if value is None else value, device=accel.device), "mean"))
    return mean if math.isfinite(mean) else None


def _mean_metrics(rows: list[dict]) -> dict:
    """Mean of each metric over the micro-batches that report it (None when not finite)."""
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [float(r[key]) for r in rows if key in r]
        mean = sum(values) / len(values)
        out[key] = mean if math.isfinite(mean) else None
    return out


def _state(cfg: TrainConfig, step: int, optimizer, scheduler, data: dict, policy) -> dict:
    """What a checkpoint holds besides the weights and the reference."""
    lora = None
    if cfg.lora_r:
        from peft import get_peft_model_state_dict

        lora = get_peft_model_state_dict(extract_model_from_parallel(policy).model)
    return {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "data": dict(data),
        "lora": lora,
        "settings": cfg.settings(),
    }


def _sharded(accel: Accelerator) -> bool:
    """Whether each process holds only part of the optimizer state (FSDP, DeepSpeed ZeRO)."""
    return accel.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _save(run_dir, step, policy, tokenizer, state, reference, accel: Accelerator) -> None:
    """Checkpoint after ``step`` steps; every process takes part (FSDP gathers the weights to the
    main process, and sharded optimizer states are written one file per process)."""
    lora = accel.unwrap_model(policy).model if state["lora"] is not None else None
    weights = None if lora is not None else accel.get_state_dict(policy)  # "model."-prefixed keys
    staged = None
    if _sharded(accel):
        staged = checkpoint.stage_optimizer(run_dir, step, state.pop("optimizer"), accel.process_index)
        state["optimizer"] = None
    accel.wait_for_everyone()
    if accel.is_main_process:
        model = lora or accel.unwrap_model(policy).model
        if weights is not None:
            weights = {k.removeprefix("model."): v for k, v in weights.items()}
        state["world_size"] = accel.num_processes
        checkpoint.save(run_dir, step, model, tokenizer, state, reference.state_dict(), weights=weights, staged=staged)
    accel.wait_for_everyone()


def _progress(accel: Accelerator, total: int, done: int) -> Progress:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not accel.is_main_process,
    )
    progress.add_task("training", total=total, completed=done)
    progress.start()
    return progress
