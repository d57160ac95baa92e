"""KTO (method.md §5.2) on unpaired examples; pairs are split (chosen desirable, rejected undesirable).

The reference point z = max(0, mean KL-row reward over the whole optimizer step, all
processes), detached; KL rows pair each example's prompt with the completion of the next
example of the step whose prompt differs (``batches``), and run without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from humanline_data.ranges import NON_NEGATIVE, POSITIVE, bounded
from humanline_train import losses
from humanline_train.objectives.base import Objective


class KTO(Objective):
    name = "kto"
    layout = "unpaired"
    shard_kinds = ("unpaired", "pairs")

    @dataclass
    class Settings:
        beta: float = field(default=0.1, metadata=bounded(POSITIVE))
        desirable_weight: float = field(default=1.1, metadata=bounded(NON_NEGATIVE))
        undesirable_weight: float = field(default=1.0, metadata=bounded(NON_NEGATIVE))

    def grad_parts(self):
        return (True, False)  # examples with gradient, KL rows without

    def prepare_step(self, parts, batches, reduce_sum):
        rewards = [losses.kto_kl_rewards(policy[1], reference[1], batch.kl.completion_mask, clip=self.clip)
                   for (policy, reference), batch in zip(parts, batches) if batch.kl is not None]
        local = torch.cat(rewards).float().cpu() if rewards else torch.zeros(0)
        device = batches[0].input_ids.device
        totals = reduce_sum(torch.stack([local.sum(), torch.tensor(float(local.numel()))]).to(device))
        return {"reference_point": reference_point(totals[0], totals[1])}

    def loss(self, policy, reference, batch, step):
        s = self.settings
        return losses.kto_loss(policy[0], reference[0], batch.completion_mask, batch.desirable,
                               step["reference_point"], beta=s.beta, desirable_weight=s.desirable_weight,
                               undesirable_weight=s.undesirable_weight, clip=self.clip)


def reference_point(kl_sum: torch.Tensor, kl_count: torch.Tensor) -> torch.Tensor:
    """z = max(0, mean KL-row reward) from the step's sum and count of them (0 when there are none), detached."""
    if float(kl_count) == 0:
        return torch.zeros((), dtype=torch.float32, device=kl_sum.device)
    return (kl_sum / kl_count).detach().float().clamp(min=0)
