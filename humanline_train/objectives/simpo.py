"""SimPO (Meng et al. 2024): -log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma).

Reference-free: no reference forward runs, so humanline sync and clip do not apply (asking for
them is an error)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from humanline_data.ranges import POSITIVE, bounded
from humanline_train.objectives.base import Objective


def simpo_loss(policy_chosen, chosen_mask, policy_rejected, rejected_mask, *, beta: float, gamma: float):
    """Mean over pairs of -log sigmoid(beta * (avg logp_w - avg logp_l) - gamma); inputs [B, T],
    averages over each row's completion tokens. Metrics: rewards/chosen, rewards/rejected
    (mean beta * avg logp), margin, accuracy."""
    r_w = beta * (policy_chosen.float() * chosen_mask).sum(-1) / chosen_mask.sum(-1).clamp(min=1)
    r_l = beta * (policy_rejected.float() * rejected_mask).sum(-1) / rejected_mask.sum(-1).clamp(min=1)
    logits = r_w - r_l - gamma
    metrics = {
        "rewards/chosen": r_w.mean().detach().cpu(),
        "rewards/rejected": r_l.mean().detach().cpu(),
        "margin": (r_w - r_l).mean().detach().cpu(),
        "accuracy": (r_w > r_l).float().mean().detach().cpu(),
    }
    return -F.logsigmoid(logits).mean(), metrics


class SimPO(Objective):
    name = "simpo"
    layout = "paired"
    shard_kinds = ("pairs",)
    needs_reference = False

    @dataclass
    class Settings:
        beta: float = field(default=2.0, metadata=bounded(POSITIVE))
        gamma: float = 1.0

    def loss(self, policy, reference, batch, step):
        (chosen, rejected), (mask_chosen, mask_rejected) = batch.halves(policy[0]), batch.halves(batch.completion_mask)
        return simpo_loss(chosen, mask_chosen, rejected, mask_rejected, beta=self.settings.beta, gamma=self.settings.gamma)
