"""IPO (TRL's form): (h - 1/(2 tau))^2 with h = mean token log-ratio of the chosen completion
minus that of the rejected one; tau = ``--beta``. Humanline clips each token's log-ratio first.
At step 0 (reference = policy) the loss is exactly (1/(2 tau))^2."""

from __future__ import annotations

from dataclasses import dataclass, field

from humanline_data.ranges import POSITIVE, bounded
from humanline_train import losses
from humanline_train.objectives.base import Objective


def ipo_loss(policy_chosen, ref_chosen, chosen_mask, policy_rejected, ref_rejected, rejected_mask, *,
             tau: float, clip: losses.Clip = None):
    """Mean over pairs of (h - 1/(2 tau))^2, h = mean_t d^w_t - mean_t d^l_t (inputs [B, T]).
    Metrics: margin (mean h), accuracy (fraction h > 0), kl, unclamped_frac."""
    d_w, chosen_mask = losses.log_ratios(policy_chosen, ref_chosen, chosen_mask)
    d_l, rejected_mask = losses.log_ratios(policy_rejected, ref_rejected, rejected_mask)
    (c_w, in_w, nz_w), (c_l, in_l, nz_l) = losses.clip_counts(d_w, chosen_mask, clip), losses.clip_counts(d_l, rejected_mask, clip)
    h = c_w.sum(-1) / chosen_mask.sum(-1).clamp(min=1) - c_l.sum(-1) / rejected_mask.sum(-1).clamp(min=1)
    loss = ((h - 1 / (2 * tau)) ** 2).mean()
    metrics = {
        "margin": h.mean().detach().float().cpu(),
        "accuracy": (h > 0).float().mean().detach().cpu(),
        "kl": losses.k3_mean([d_w, d_l], [chosen_mask, rejected_mask]),
        "unclamped_frac": losses.fraction(in_w + in_l, nz_w + nz_l),
    }
    return loss, metrics


class IPO(Objective):
    name = "ipo"
    layout = "paired"
    shard_kinds = ("pairs",)

    @dataclass
    class Settings:
        beta: float = field(default=0.1, metadata=bounded(POSITIVE))  # tau

    def loss(self, policy, reference, batch, step):
        (chosen, rejected), (ref_chosen, ref_rejected) = batch.halves(policy[0]), batch.halves(reference[0])
        mask_chosen, mask_rejected = batch.halves(batch.completion_mask)
        return ipo_loss(chosen, ref_chosen, mask_chosen, rejected, ref_rejected, mask_rejected,
                        tau=self.settings.beta, clip=self.clip)

