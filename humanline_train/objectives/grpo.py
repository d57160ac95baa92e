"""GRPO (method.md §5.3): PPO-clipped ratio against the reference, k3 KL, DAPO token mean over the
whole optimizer step (the trainer weights each micro-batch by its share of the step's tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field

from humanline_data.ranges import NON_NEGATIVE, Range, bounded
from humanline_train import losses
from humanline_train.objectives.base import Objective


class GRPO(Objective):
    name = "grpo"
    layout = "grouped"
    shard_kinds = ("groups", "pairs")
    unit = "tokens"

    @dataclass
    class Settings:
        eps_low: float = field(default=0.2, metadata=bounded(Range(0, 1, below=True)))
        eps_high: float = field(default=0.2, metadata=bounded(NON_NEGATIVE))
        beta_kl: float = field(default=0.01, metadata=bounded(NON_NEGATIVE))

    def loss(self, policy, reference, batch, step):
        s = self.settings
        return losses.grpo_loss(policy[0], reference[0], batch.completion_mask, batch.advantages, beta_kl=s.beta_kl,
                                eps_low=s.eps_low, eps_high=s.eps_high, clip=self.clip)
