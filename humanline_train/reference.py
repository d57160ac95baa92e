"""Where reference log-probs come from: a synced copy, a look-ahead cache, or a disk cache.

Every source answers ``logps(step, index, batch) -> [[N, T] float32 per part]`` (the
reference's per-token log-probs of each part of micro-batch ``index`` of optimizer step
``step``: the trained rows, and KTO's KL rows) and is told when the reference changes by
``sync(policy, window)``; the trainer calls neither for a reference-free objective. The trainer calls ``sync`` at a segment start (the first
step, an online refresh: the reference becomes the current policy) and, under humanline, after
backward and gradient clipping and *before* ``optimizer.step()`` at each sync point (method.md §2).
``window`` yields ``(step, index, batch)`` for every micro-batch that will be trained against
the reference being set, i.e. up to the next sync point.

=========  ===========================================================================
none       reference-free objectives: nothing runs
copy       a second model; ``sync`` loads the policy's state into it (under LoRA a full
           copy of the adapted model, so synced adapters are kept too)
lookahead  no second model; ``sync`` runs the window's micro-batches through the policy
           with its current weights (no grad, eval mode) and caches the log-probs (method.md §7)
cached     offline runs that never sync: the initial model's log-probs of every sequence of
           the run, computed once and kept on disk keyed by shard manifest sha256, model
           fingerprint and tokenization settings; later runs reuse (and extend) the file
=========  ===========================================================================

All three give the same numbers for the same weights and inputs: each micro-batch is run
alone, with the same padding, in eval mode under ``torch.no_grad``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterable

import torch
from accelerate.utils import extract_model_from_parallel

from humanline_data.errors import HumanlineError
from humanline_data.models import cache_dir
from humanline_train.batches import Batch
from humanline_train.logprobs import LogprobModel

Window = Iterable[tuple[int, int, Batch]]


def reference_logps(model: torch.nn.Module, batch: Batch) -> list[torch.Tensor]:
    """No-grad, eval-mode per-token log-probs [N, T] float32 of each part of ``batch`` under
    ``model`` (a :class:`LogprobModel`, possibly wrapped by ``accelerator.prepare``), each part
    in its own forward, exactly as the policy runs them."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return [model(p.input_ids.to(device), p.attention_mask.to(device), p.completion_mask.to(device))
                    for p in batch.parts()]
    finally:
        model.train(was_training)


class NoReference:
    """Reference-free objectives (SimPO): no reference forward ever runs."""

    def sync(self, policy: torch.nn.Module, window: Window) -> None:
        pass

    def logps(self, step: int, index: int, batch: Batch) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CopyReference:
    """A second model that holds the policy's weights as of the last sync (whole weights on every
    process: not for FSDP / DeepSpeed sharding, where the trainer refuses it). ``autocast``: the
    precision context the prepared policy runs its forward in, so both run the same arithmetic."""

    def __init__(self, policy: LogprobModel, autocast=contextlib.nullcontext) -> None:
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        self.autocast = autocast

    def sync(self, policy: torch.nn.Module, window: Window) -> None:
        """Copy the policy's trained parameters in; frozen ones (a LoRA run's base weights, 99% of
        them) are equal since the copy was made, so a sync moves only the adapters."""
        target = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, p in extract_model_from_parallel(policy).named_parameters():
                if p.requires_grad:
                    target[name].copy_(p)

    def logps(self, step: int, index: int, batch: Batch) -> list[torch.Tensor]:
        with self.autocast():
            return reference_logps(self.model, batch)

    def state_dict(self) -> dict:
        return {"weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])


class LookaheadReference:
    """No second model: at a sync, the window's micro-batches are run with the current weights."""

    def __init__(self) -> None:
        self.cache: dict[tuple[int, int], torch.Tensor] = {}

    def sync(self, policy: torch.nn.Module, window: Window) -> None:
        self.cache = {(step, index): reference_logps(policy, batch) for step, index, batch in window}

    def logps(self, step: int, index: int, batch: Batch) -> list[torch.Tensor]:
        try:
            return self.cache.pop((step, index))
        except KeyError:
            raise RuntimeError(f"no look-ahead reference for step {step} micro-batch {index}") from None

    def state_dict(self) -> dict:
        return {"cache": self.cache}

    def load_state_dict(self, state: dict) -> None:
        self.cache = dict(state["cache"])


def cache_path(manifest_sha256: str, model_sha256: str, settings: dict) -> Path:
    """Disk location of the initial model's reference log-probs for one shard, model and the
    settings that change them (tokenization, layout, precision)."""
    key = json.dumps({"shard": manifest_sha256, "model": model_sha256, **settings}, sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_dir() / "reference-logps" / f"{name}.pt"


class CachedReference:
    """The initial model's log-probs of every sequence of an offline run, kept on disk.

    Entries are keyed by each row's token content (``Batch.keys``) and hold the log-probs of
    its completion tokens. ``sync`` computes only what the file lacks, with ``policy`` (which
    must still be the initial model; ``policy=None`` means "must all be cached already").
    Under several processes each computes its own micro-batches' rows; ``gather`` (a list of
    every process's object, e.g. ``accelerate.utils.gather_object``) brings them to the main
    process (``is_main``), which writes the union, so no process's rows are lost.
    """

    def __init__(self, path: Path, gather=lambda obj: [obj], is_main: bool = True) -> None:
        self.path = Path(path)
        self.gather, self.is_main = gather, is_main
        self.entries: dict[bytes, torch.Tensor] = torch.load(self.path) if self.path.is_file() else {}

    def sync(self, policy: torch.nn.Module | None, window: Window) -> None:
        added: dict[bytes, torch.Tensor] = {}
        for _, _, batch in window:
            parts = batch.parts()
            if all(key in self.entries for part in parts for key in part.keys):
                continue
            if policy is None:
                raise HumanlineError(f"{self.path}: the initial model's reference log-probs are missing; start a new run")
            for part, logps in zip(parts, reference_logps(policy, batch)):
                for r, key in enumerate(part.keys):
                    if key not in self.entries:
                        added[key] = self.entries[key] = logps[r][part.completion_mask[r]].cpu().clone()
        every = self.gather(added)
        if self.is_main and any(every):
            for entries in every:
                self.entries.update(entries)
            self._write()

    def logps(self, step: int, index: int, batch: Batch) -> list[torch.Tensor]:
        out = []
        for part in batch.parts():
            logps = torch.zeros(part.input_ids.shape, dtype=torch.float32)
            for r, key in enumerate(part.keys):
                if key not in self.entries:
                    raise HumanlineError(f"{self.path}: no cached reference log-probs for a row of step {step}; start a new run")
                logps[r][part.completion_mask[r]] = self.entries[key]
            out.append(logps)
        return out

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.stem}.tmp-{uuid.uuid4().hex}.pt")
        torch.save(self.entries, tmp)
        os.replace(tmp, self.path)

    def state_dict(self) -> dict:
        return {"path": str(self.path)}

    def load_state_dict(self, state: dict) -> None:
        if Path(state["path"]) != self.path:
            raise HumanlineError(f"reference cache moved: run used {state['path']}, now {self.path}")


def make_reference(config, policy: torch.nn.Module, accel, model_path: Path, window_from, resumed: bool):
    """The reference source a run needs, for ``policy`` as prepared by ``accel`` (a copy is taken
    of it then, so it runs under the same precision). A reference that never changes (no
    humanline sync, no online rounds) is the initial model: a copy, or its log-probs cached on
    disk, filled now over ``window_from()`` (every micro-batch the run will train on) unless
    ``resumed``."""
    from accelerate.utils import gather_object

    from humanline_data.models import model_fingerprint
    from humanline_train.policy import resolve_precision

    if not config.objective_class.needs_reference:
        return NoReference()
    if config.humanline.reference == "copy":
        return CopyReference(accel.unwrap_model(policy), accel.autocast)
    if config.humanline.sync or config.online.refresh_every:
        return LookaheadReference()
    settings = {"loss": config.loss, "max_length": config.data.max_length, "batch_size": config.data.batch_size,
                "precision": resolve_precision(config.model.precision)}
    path = cache_path(config.data.shards_manifest_sha256, model_fingerprint(model_path), settings)
    reference = CachedReference(path, gather=lambda obj: gather_object([obj]), is_main=accel.is_main_process)
    reference.sync(None if resumed else policy, window_from())
    accel.wait_for_everyone()
    return reference
