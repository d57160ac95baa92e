"""Where reference log-probs come from: a synced copy, a look-ahead cache, or a disk cache.

Every source answers ``logps(step, index, batch) -> [N, T] float32`` (the reference's per-token
log-probs of micro-batch ``index`` of optimizer step ``step``) and is told when the reference
changes by ``sync(policy, window)``. The trainer calls ``sync`` at a segment start (the first
step, an online refresh: the reference becomes the current policy) and, under humanline, after
backward and gradient clipping and *before* ``optimizer.step()`` at each sync point (SPEC §1).
``window`` yields ``(step, index, batch)`` for every micro-batch that will be trained against
the reference being set, i.e. up to the next sync point.

=========  ===========================================================================
copy       a second model; ``sync`` loads the policy's state into it (under LoRA a full
           copy of the adapted model, so synced adapters are kept too)
lookahead  no second model; ``sync`` runs the window's micro-batches through the policy
           with its current weights (no grad, eval mode) and caches the log-probs (SPEC §5)
cached     offline runs that never sync: the initial model's log-probs of every sequence of
           the run, computed once and kept on disk keyed by shard manifest sha256, model
           fingerprint and tokenization settings; later runs reuse (and extend) the file
=========  ===========================================================================

All three give the same numbers for the same weights and inputs: each micro-batch is run
alone, with the same padding, in eval mode under ``torch.no_grad``.
"""

from __future__ import annotations

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


def reference_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """No-grad, eval-mode per-token log-probs [N, T] float32 of ``batch``'s rows under ``model``
    (a :class:`LogprobModel`, possibly wrapped by ``accelerator.prepare``)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return model(
                batch.input_ids.to(device),
                batch.attention_mask.to(device),
                batch.completion_mask.to(device),
            )
    finally:
        model.train(was_training)


class CopyReference:
    """A second model that holds the policy's weights as of the last sync (whole weights on every
    process: not for FSDP / DeepSpeed sharding, where the trainer refuses it)."""

    def __init__(self, policy: LogprobModel) -> None:
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    def sync(self, policy: torch.nn.Module, window: Window) -> None:
        self.model.load_state_dict(extract_model_from_parallel(policy).state_dict())

    def logps(self, step: int, index: int, batch: Batch) -> torch.Tensor:
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

    def logps(self, step: int, index: int, batch: Batch) -> torch.Tensor:
        try:
            return self.cache.pop((step, index))
        except KeyError:
            raise RuntimeError(f"no look-ahead reference for step {step} micro-batch {index}") from None

    def state_dict(self) -> dict:
        return {"cache": self.cache}

    def load_state_dict(self, state: dict) -> None:
        self.cache = dict(state["cache"])


def cache_path(manifest_sha256: str, model_sha256: str, tokenization: dict) -> Path:
    """Disk location of the initial model's reference log-probs for one shard and settings."""
    key = json.dumps({"shard": manifest_sha256, "model": model_sha256, **tokenization}, sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_dir() / "reference-logps" / f"{name}.pt"


class CachedReference:
    """The initial model's log-probs of every sequence of an offline run, kept on disk.

    Entries are keyed by each row's token content (``Batch.keys``) and hold the log-probs of
    its completion tokens. ``sync`` computes only what the file lacks, with ``policy`` (which
    must still be the initial model; ``policy=None`` means "must all be cached already").
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[bytes, torch.Tensor] = torch.load(self.path) if self.path.is_file() else {}

    def sync(self, policy: torch.nn.Module | None, window: Window) -> None:
        added = 0
        for _, _, batch in window:
            missing = [r for r, key in enumerate(batch.keys) if key not in self.entries]
            if not missing:
                continue
            if policy is None:
                raise HumanlineError(f"{self.path}: the initial model's reference log-probs are missing; start a new run")
            logps = reference_logps(policy, batch).cpu()
            for r in missing:
                self.entries[batch.keys[r]] = logps[r][batch.completion_mask[r]].clone()
                added += 1
        if added:
            self._write()

    def logps(self, step: int, index: int, batch: Batch) -> torch.Tensor:
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for r, key in enumerate(batch.keys):
            out[r][batch.completion_mask[r]] = self.entries[key]
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
