"""What every objective declares, and the arithmetic they share.

An objective is a class with

- ``name``: the ``--loss`` value;
- ``layout``: how a shard row becomes model rows (``batches.LAYOUTS``): ``paired`` (chosen
  rows then rejected rows, one concatenated forward), ``unpaired`` (one row per example, plus
  mismatched KL rows run without gradient), ``grouped`` (one row per completion, with its
  advantage);
- ``shard_kinds``: the shard kinds it trains on;
- ``needs_reference``: ``False`` means no reference forward runs at all (humanline sync and
  clip are refused);
- ``unit``: what its loss is a mean over, ``"examples"`` or ``"tokens"``; the trainer weights
  each micro-batch by its share of the optimizer step's units (over every micro-batch and
  process), so one step gives the same update however it is split;
- ``Settings``: a dataclass of its own hyper-parameters with their defaults (``--beta`` ...);
- ``loss(policy, reference, batch, step)``: (micro-batch mean loss, metrics), from per-part
  log-probs (see :meth:`Objective.loss`).

Objectives whose loss needs a statistic of the whole step (KTO's reference point) compute it in
:meth:`Objective.prepare_step`, which sees every micro-batch of the process before any loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, ClassVar

import torch

from humanline_train.losses import Clip


@dataclass
class StepTotals:
    """Units of one optimizer step over all its micro-batches and processes."""

    examples: int
    tokens: int  # completion tokens of the trained rows (not KTO's KL rows)


class Objective:
    name: ClassVar[str] = ""
    layout: ClassVar[str] = "paired"
    shard_kinds: ClassVar[tuple[str, ...]] = ("pairs",)
    needs_reference: ClassVar[bool] = True
    unit: ClassVar[str] = "examples"

    @dataclass
    class Settings:
        pass

    def __init__(self, settings: "Objective.Settings", clip: Clip) -> None:
        self.settings = settings
        self.clip = clip

    @classmethod
    def setting_names(cls) -> list[str]:
        return [f.name for f in fields(cls.Settings)]

    def grad_parts(self) -> tuple[bool, ...]:
        """For each part of a micro-batch (``Batch.parts()``): whether the policy's forward of it
        needs gradient."""
        return (True,)

    def prepare_step(self, parts: list[tuple[list[torch.Tensor], list[torch.Tensor]]], batches: list,
                     reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """Step-wide statistics from every micro-batch's (policy parts, reference parts) of this
        process; ``reduce_sum`` sums a tensor over processes. Default: none."""
        return {}

    def units(self, batch) -> int:
        """This micro-batch's count of the objective's unit."""
        return batch.num_tokens_completion if self.unit == "tokens" else batch.num_examples

    def loss(self, policy: list[torch.Tensor], reference: list[torch.Tensor] | None, batch, step: dict):
        """(mean loss over this micro-batch's units, metrics). ``policy``/``reference``: log-probs
        [N, T] of each part of ``batch`` (``reference`` is None for reference-free objectives);
        ``step``: what :meth:`prepare_step` returned."""
        raise NotImplementedError
