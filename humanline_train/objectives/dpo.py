"""DPO (method.md §5.1): -log sigmoid(beta (r_w - r_l)) on pairs, chosen and rejected in one forward."""

from __future__ import annotations

from dataclasses import dataclass, field

from humanline_data.ranges import POSITIVE, bounded
from humanline_train import losses
from humanline_train.objectives.base import Objective


class DPO(Objective):
    name = "dpo"
    layout = "paired"
    shard_kinds = ("pairs",)

    @dataclass
    class Settings:
        beta: float = field(default=0.1, metadata=bounded(POSITIVE))

    def loss(self, policy, reference, batch, step):
        (chosen, rejected), (ref_chosen, ref_rejected) = batch.halves(policy[0]), batch.halves(reference[0])
        mask_chosen, mask_rejected = batch.halves(batch.completion_mask)
        return losses.dpo_loss(chosen, ref_chosen, mask_chosen, rejected, ref_rejected, mask_rejected,
                               beta=self.settings.beta, clip=self.clip)
