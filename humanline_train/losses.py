"""The objectives of method.md §1-§5 as pure functions over per-token log-probabilities.

Inputs are per-token log-probs ``[B, T]`` of completion tokens (0 off-mask) for the policy
(with gradient) and the reference (no gradient needed), and a mask ``[B, T]`` (bool or 0/1)
marking completion tokens. ``clip`` is ``None`` (the plain objective) or a
``(log_eps_p, log_eps_r)`` tuple with ``log_eps_p < 0 < log_eps_r`` (humanline clipping: each
token log-ratio ``d_t = policy - ref`` is clamped into that range *upstream* of the loss, so a
token outside it gets exactly zero gradient).

All arithmetic runs in at least float32 (half-precision inputs are upcast; float64 stays
float64). Every loss returns ``(loss, metrics)``: a 0-dim tensor with gradient and a dict of
detached 0-dim tensors. Common metric keys:

- ``unclamped_frac``: fraction of completion tokens with ``d_t != 0`` whose log-ratio lies
  strictly inside the clip range (1.0 without clipping, or when every ``d_t`` is 0).
- ``kl``: mean over completion tokens of the k3 estimator ``exp(-d) + d - 1`` on the
  unclipped log-ratios.

A loss never touches a model. Its hyper-parameters (``beta``, ...) are required keyword
arguments: their defaults live in the objectives' ``Settings`` (``humanline_train.objectives``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from humanline_data.errors import HumanlineError

Clip = tuple[float, float] | None


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def log_ratios(policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor):
    """(d [B, T] with 0 off-mask, bool mask [B, T]) in the compute dtype."""
    dtype = _compute_dtype(policy_logps)
    mask = mask.bool()
    d = policy_logps.to(dtype) - ref_logps.detach().to(dtype)
    return torch.where(mask, d, torch.zeros((), dtype=dtype, device=d.device)), mask


def _check_clip(log_eps_p: float, log_eps_r: float) -> None:
    if not float(log_eps_p) < 0.0 < float(log_eps_r):
        raise HumanlineError(
            f"clip range ({log_eps_p}, {log_eps_r}) must satisfy log_eps_p < 0 < log_eps_r"
        )


def clip_counts(d: torch.Tensor, mask: torch.Tensor, clip: Clip):
    """Clamp ``d`` (0 off-mask) into ``clip``; return (clipped d, #inside, #non-zero) on detached values."""
    nonzero = mask & (d.detach() != 0)
    if clip is None:
        count = nonzero.sum()
        return d, count, count
    log_eps_p, log_eps_r = clip
    _check_clip(log_eps_p, log_eps_r)
    dd = d.detach()
    inside = nonzero & (dd > log_eps_p) & (dd < log_eps_r)
    clipped = torch.where(mask, d.clamp(log_eps_p, log_eps_r), torch.zeros_like(d))
    return clipped, inside.sum(), nonzero.sum()


def fraction(inside: torch.Tensor, nonzero: torch.Tensor) -> torch.Tensor:
    """inside / nonzero as a float32 0-dim tensor; 1.0 when no log-ratio is non-zero."""
    if int(nonzero) == 0:
        return torch.tensor(1.0)
    return (inside.float() / nonzero.float()).detach().cpu()


def k3_mean(ds: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Mean over all masked tokens of exp(-d) + d - 1 (d unclipped; 0 off-mask gives 0)."""
    total = sum((torch.expm1(-d.detach()) + d.detach()).sum() for d in ds)
    count = sum(m.sum() for m in masks)
    return (total / count.clamp(min=1)).float().cpu()


def clip_log_ratios(policy_logps, ref_logps, mask, log_eps_p, log_eps_r):
    """Humanline clipping of token log-ratios.

    Returns (clamp(policy - ref, log_eps_p, log_eps_r) as [B, T] with 0 off-mask, unclamped
    fraction as a 0-dim tensor over completion tokens with a non-zero log-ratio).
    """
    d, mask = log_ratios(policy_logps, ref_logps, mask)
    clipped, inside, nonzero = clip_counts(d, mask, (log_eps_p, log_eps_r))
    return clipped, fraction(inside, nonzero)


def _sequence_rewards(policy_logps, ref_logps, mask, clip: Clip):
    """r = sum_t d_t per row [B] (clipped under humanline), plus (d unclipped, mask, #inside, #non-zero)."""
    d, mask = log_ratios(policy_logps, ref_logps, mask)
    clipped, inside, nonzero = clip_counts(d, mask, clip)
    return clipped.sum(-1), d, mask, inside, nonzero


def dpo_loss(
    policy_chosen_logps,
    ref_chosen_logps,
    chosen_mask,
    policy_rejected_logps,
    ref_rejected_logps,
    rejected_mask,
    *,
    beta: float,
    clip: Clip = None,
):
    """DPO: mean over pairs of -log sigmoid(beta * (r_w - r_l)).

    Metrics: rewards/chosen and rewards/rejected (mean beta * r), margin (mean beta * (r_w - r_l)),
    accuracy (fraction with r_w > r_l), kl, unclamped_frac (over chosen and rejected tokens).
    """
    r_w, d_w, m_w, in_w, nz_w = _sequence_rewards(policy_chosen_logps, ref_chosen_logps, chosen_mask, clip)
    r_l, d_l, m_l, in_l, nz_l = _sequence_rewards(policy_rejected_logps, ref_rejected_logps, rejected_mask, clip)
    logits = beta * (r_w - r_l)
    loss = -F.logsigmoid(logits).mean()
    metrics = {
        "rewards/chosen": (beta * r_w).mean().detach().float().cpu(),
        "rewards/rejected": (beta * r_l).mean().detach().float().cpu(),
        "margin": logits.mean().detach().float().cpu(),
        "accuracy": (r_w > r_l).float().mean().detach().cpu(),
        "kl": k3_mean([d_w, d_l], [m_w, m_l]),
        "unclamped_frac": fraction(in_w + in_l, nz_w + nz_l),
    }
    return loss, metrics


def kto_kl_rewards(kl_policy_logps, kl_ref_logps, kl_mask, clip: Clip = None) -> torch.Tensor:
    """Detached rewards r [B] of the mismatched (prompt i, completion (i+1) mod B) rows.

    The trainer averages them across all processes and takes max(0, mean) as KTO's reference point.
    """
    with torch.no_grad():
        r = _sequence_rewards(kl_policy_logps, kl_ref_logps, kl_mask, clip)[0]
    return r.detach()


def kto_loss(
    policy_logps,
    ref_logps,
    mask,
    desirable,
    reference_point,
    *,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    clip: Clip = None,
):
    """KTO: mean over the batch of w_D (1 - sigmoid(beta (r - z))) for desirable rows and
    w_U (1 - sigmoid(beta (z - r))) for undesirable rows, with z = ``reference_point`` (detached).

    ``desirable`` is a bool [B]. Metrics: rewards/chosen, rewards/rejected (mean beta * r over
    desirable / undesirable rows; a key is absent when its group is empty), reference_point, kl,
    unclamped_frac.
    """
    r, d, m, inside, nonzero = _sequence_rewards(policy_logps, ref_logps, mask, clip)
    desirable = desirable.to(device=r.device).bool()
    z = torch.as_tensor(reference_point, dtype=r.dtype, device=r.device).detach()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z - r))),
    )
    metrics = {
        "reference_point": z.float().cpu(),
        "kl": k3_mean([d], [m]),
        "unclamped_frac": fraction(inside, nonzero),
    }
    for key, rows in (("rewards/chosen", desirable), ("rewards/rejected", ~desirable)):
        if bool(rows.any()):
            metrics[key] = (beta * r[rows]).mean().detach().float().cpu()
    return losses.mean(), metrics


def grpo_loss(
    policy_logps,
    ref_logps,
    mask,
    advantages,
    *,
    beta_kl: float,
    eps_low: float,
    eps_high: float,
    clip: Clip = None,
):
    """GRPO against the reference: token mean over every completion token of the batch of

    L_t = -min(A rho_t, A clip(rho_t, 1 - eps_low, 1 + eps_high)) + beta_kl (exp(-d_t) + d_t - 1)

    with rho_t = exp(d_t) (d_t humanline-clipped first when ``clip`` is given) and the k3 term on
    the unclipped d_t. ``advantages`` is [B]. Metrics: clip_frac (tokens where the ratio clip is
    active), kl, unclamped_frac, advantage (mean over rows).
    """
    d, mask = log_ratios(policy_logps, ref_logps, mask)
    clipped, inside, nonzero = clip_counts(d, mask, clip)
    adv = advantages.detach().to(dtype=d.dtype, device=d.device)[:, None]
    rho = torch.exp(clipped)
    surrogate = torch.minimum(adv * rho, adv * rho.clamp(1 - eps_low, 1 + eps_high))
    k3 = torch.expm1(-d) + d
    per_token = -surrogate + beta_kl * k3
    n_tokens = mask.sum().clamp(min=1)
    loss = torch.where(mask, per_token, torch.zeros_like(per_token)).sum() / n_tokens
    ratio_clipped = mask & (((rho < 1 - eps_low) & (adv < 0)) | ((rho > 1 + eps_high) & (adv > 0)))
    metrics = {
        "clip_frac": (ratio_clipped.sum() / n_tokens).detach().float().cpu(),
        "kl": k3_mean([d], [mask]),
        "unclamped_frac": fraction(inside, nonzero),
        "advantage": advantages.detach().float().mean().cpu(),
    }
    return loss, metrics
