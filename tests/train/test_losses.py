"""The losses of humanline_train.losses against plain loop versions written from method.md §1-§5."""

from __future__ import annotations

import math

import pytest
import torch

from humanline_data.errors import HumanlineError
from humanline_data.advantages import group_advantages
from humanline_train import losses

# the tests read scalars off tensors that carry gradient on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")

CLIP = (-1.5, 1.5)
ASYM = (-0.4, 1.1)
KTO_EVEN = dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)  # the loop checks' weights
GRPO_EPS = dict(eps_low=0.2, eps_high=0.2)


def _batch(B=4, T=7, seed=0, scale=1.5, dtype=torch.float64):
    """Random policy/ref log-probs (0 off-mask), right-padded mask with row lengths >= 1."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    ref = (-torch.rand(B, T, generator=g, dtype=dtype) * 3) * mask
    policy = (ref + torch.randn(B, T, generator=g, dtype=dtype) * scale) * mask
    return policy.requires_grad_(True), ref, mask


# ---- loop references ---------------------------------------------------------------------------


def _loop_d(policy, ref, mask, b, t, clip):
    d = policy[b, t] - ref[b, t]
    if clip is not None:
        d = torch.clamp(d, clip[0], clip[1])
    return d


def _loop_reward(policy, ref, mask, b, clip):
    total = policy.new_zeros(())
    for t in range(mask.shape[1]):
        if mask[b, t]:
            total = total + _loop_d(policy, ref, mask, b, t, clip)
    return total


def _loop_unclamped(pairs, clip):
    """Count tokens with d != 0 and, among them, those strictly inside the range."""
    inside = nonzero = 0
    for policy, ref, mask in pairs:
        for b in range(mask.shape[0]):
            for t in range(mask.shape[1]):
                if not mask[b, t]:
                    continue
                d = float(policy[b, t].detach() - ref[b, t])
                if d != 0:
                    nonzero += 1
                    inside += clip[0] < d < clip[1]
    return inside / nonzero if nonzero else 1.0


def _loop_dpo(pc, rc, mc, pr, rr, mr, beta, clip):
    total = pc.new_zeros(())
    for b in range(mc.shape[0]):
        rw = _loop_reward(pc, rc, mc, b, clip)
        rl = _loop_reward(pr, rr, mr, b, clip)
        total = total - torch.log(torch.sigmoid(beta * (rw - rl)))
    return total / mc.shape[0]


def _loop_kto(policy, ref, mask, desirable, z, beta, wd, wu, clip):
    total = policy.new_zeros(())
    for b in range(mask.shape[0]):
        r = _loop_reward(policy, ref, mask, b, clip)
        if desirable[b]:
            total = total + wd * (1 - torch.sigmoid(beta * (r - z)))
        else:
            total = total + wu * (1 - torch.sigmoid(beta * (z - r)))
    return total / mask.shape[0]


def _loop_grpo(policy, ref, mask, adv, beta_kl, lo, hi, clip):
    total = policy.new_zeros(())
    count = 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            rho = torch.exp(_loop_d(policy, ref, mask, b, t, clip))
            a = float(adv[b])
            surrogate = torch.minimum(a * rho, a * torch.clamp(rho, 1 - lo, 1 + hi))
            x = ref[b, t] - policy[b, t]
            total = total - surrogate + beta_kl * (torch.exp(x) - x - 1)
            count += 1
    return total / count


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# ---- clipping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [CLIP, ASYM])
def test_clip_log_ratios_values_gradients_and_fraction(clip):
    policy, ref, mask = _batch(seed=1)
    clipped, frac = losses.clip_log_ratios(policy, ref, mask, *clip)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            want = float(_loop_d(policy.detach(), ref, mask, b, t, clip)) if mask[b, t] else 0.0
            assert float(clipped[b, t].detach()) == pytest.approx(want, abs=1e-12)
    assert float(frac) == pytest.approx(_loop_unclamped([(policy, ref, mask)], clip))
    assert 0 < float(frac) < 1  # the random batch has tokens on both sides of the range

    grad = _grad(clipped.sum(), policy)
    d = (policy - ref).detach()
    inside = mask & (d > clip[0]) & (d < clip[1])
    assert torch.equal(grad, inside.to(grad.dtype))  # 1 inside, exactly 0 outside and off-mask


def test_clip_log_ratios_ignores_zero_ratios_and_padding_values():
    policy, ref, mask = _batch(seed=2)
    ref = ref.clone()
    ref[0] = policy[0].detach()  # row 0 has d == 0 everywhere: excluded from the fraction
    garbage = policy.detach().clone()
    garbage[~mask] = 123.0  # off-mask values must not matter
    garbage.requires_grad_(True)
    _, frac = losses.clip_log_ratios(garbage, ref, mask, *CLIP)
    assert float(frac) == pytest.approx(_loop_unclamped([(policy, ref, mask)], CLIP))
    clipped, _ = losses.clip_log_ratios(garbage, ref, mask, *CLIP)
    assert torch.all(clipped[~mask] == 0)
    assert torch.all(_grad(clipped.sum(), garbage)[~mask] == 0)


def test_unclamped_fraction_is_one_when_nothing_moved():
    policy, _, mask = _batch(seed=3)
    _, frac = losses.clip_log_ratios(policy, policy.detach(), mask, *CLIP)
    assert float(frac) == 1.0


@pytest.mark.parametrize("bad", [(0.0, 1.5), (-1.5, 0.0), (1.0, -1.0)])
def test_bad_clip_range_is_a_one_line_error(bad):
    policy, ref, mask = _batch()
    with pytest.raises(HumanlineError, match="log_eps_p < 0 < log_eps_r"):
        losses.clip_log_ratios(policy, ref, mask, *bad)


# ---- DPO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [None, CLIP, ASYM])
def test_dpo_matches_loop_values_and_gradients(clip):
    pc, rc, mc = _batch(seed=10)
    pr, rr, mr = _batch(seed=11)
    loss, metrics = losses.dpo_loss(pc, rc, mc, pr, rr, mr, beta=0.3, clip=clip)
    want = _loop_dpo(pc, rc, mc, pr, rr, mr, 0.3, clip)
    assert float(loss) == pytest.approx(float(want), rel=1e-10)
    got_c, got_r = torch.autograd.grad(loss, (pc, pr))
    want_c, want_r = torch.autograd.grad(want, (pc, pr))
    torch.testing.assert_close(got_c, want_c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_r, want_r, rtol=1e-10, atol=1e-12)
    assert torch.all(got_c[~mc] == 0) and torch.all(got_r[~mr] == 0)
    if clip is not None:
        for policy, ref, mask, g in ((pc, rc, mc, got_c), (pr, rr, mr, got_r)):
            d = (policy - ref).detach()
            outside = mask & ((d < clip[0]) | (d > clip[1]))
            assert outside.any() and torch.all(g[outside] == 0)
        frac = _loop_unclamped([(pc, rc, mc), (pr, rr, mr)], clip)
        assert float(metrics["unclamped_frac"]) == pytest.approx(frac)
    else:
        assert float(metrics["unclamped_frac"]) == 1.0

    rw = [float(_loop_reward(pc.detach(), rc, mc, b, clip)) for b in range(4)]
    rl = [float(_loop_reward(pr.detach(), rr, mr, b, clip)) for b in range(4)]
    assert float(metrics["rewards/chosen"]) == pytest.approx(0.3 * sum(rw) / 4, rel=1e-5)
    assert float(metrics["rewards/rejected"]) == pytest.approx(0.3 * sum(rl) / 4, rel=1e-5)
    assert float(metrics["margin"]) == pytest.approx(0.3 * (sum(rw) - sum(rl)) / 4, rel=1e-5, abs=1e-6)
    assert float(metrics["accuracy"]) == sum(w > l for w, l in zip(rw, rl)) / 4


def test_dpo_without_clip_is_textbook_dpo():
    """-log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))) on sequence log-probs."""
    pc, rc, mc = _batch(seed=20)
    pr, rr, mr = _batch(seed=21)
    loss, _ = losses.dpo_loss(pc, rc, mc, pr, rr, mr, beta=0.1)
    pi_logratios = (pc * mc).sum(-1) - (pr * mr).sum(-1)
    ref_logratios = (rc * mc).sum(-1) - (rr * mr).sum(-1)
    textbook = -torch.nn.functional.logsigmoid(0.1 * (pi_logratios - ref_logratios)).mean()
    assert float(loss) == pytest.approx(float(textbook), rel=1e-12)


def test_dpo_at_reference_is_log2_and_float32_for_half_inputs():
    pc, rc, mc = _batch(seed=22, dtype=torch.float32)
    pr, rr, mr = _batch(seed=23, dtype=torch.float32)
    half = [x.detach().to(torch.bfloat16) for x in (pc, pr)]
    loss, metrics = losses.dpo_loss(half[0], half[0], mc, half[1], half[1], mr, beta=0.1, clip=CLIP)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(math.log(2))
    assert float(metrics["unclamped_frac"]) == 1.0 and float(metrics["kl"]) == 0.0


# ---- KTO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [None, CLIP, ASYM])
def test_kto_matches_loop_values_and_gradients(clip):
    policy, ref, mask = _batch(B=6, seed=30)
    desirable = torch.tensor([True, False, True, True, False, False])
    z = 0.37
    loss, metrics = losses.kto_loss(
        policy, ref, mask, desirable, z, beta=0.2, desirable_weight=1.1, undesirable_weight=0.8, clip=clip
    )
    want = _loop_kto(policy, ref, mask, desirable, z, 0.2, 1.1, 0.8, clip)
    assert float(loss) == pytest.approx(float(want), rel=1e-10)
    got, want_g = _grad(loss, policy), _grad(want, policy)
    torch.testing.assert_close(got, want_g, rtol=1e-10, atol=1e-12)
    assert torch.all(got[~mask] == 0)
    r = [float(_loop_reward(policy.detach(), ref, mask, b, clip)) for b in range(6)]
    assert float(metrics["rewards/chosen"]) == pytest.approx(0.2 * (r[0] + r[2] + r[3]) / 3, rel=1e-5)
    assert float(metrics["rewards/rejected"]) == pytest.approx(0.2 * (r[1] + r[4] + r[5]) / 3, rel=1e-5)
    assert float(metrics["reference_point"]) == pytest.approx(z)
    if clip is not None:
        assert float(metrics["unclamped_frac"]) == pytest.approx(_loop_unclamped([(policy, ref, mask)], clip))


@pytest.mark.parametrize("clip", [None, CLIP])
def test_kto_kl_rewards_and_reference_point(clip):
    policy, ref, mask = _batch(B=5, seed=31)
    rewards = losses.kto_kl_rewards(policy, ref, mask, clip=clip)
    assert not rewards.requires_grad
    for b in range(5):
        assert float(rewards[b]) == pytest.approx(float(_loop_reward(policy.detach(), ref, mask, b, clip)), rel=1e-10)

    # the reference point shifts every reward: r - z for desirable, z - r for undesirable
    desirable = torch.tensor([True, False, True, False, True])
    z = torch.tensor(max(0.0, float(rewards.mean())), requires_grad=True)
    loss, metrics = losses.kto_loss(policy, ref, mask, desirable, z, **KTO_EVEN, clip=clip)
    assert float(loss) == pytest.approx(float(_loop_kto(policy, ref, mask, desirable, float(z), 0.1, 1, 1, clip)))
    assert float(metrics["reference_point"]) == pytest.approx(float(z))
    loss.backward()
    assert z.grad is None  # the reference point is detached
    higher, _ = losses.kto_loss(policy, ref, mask, torch.ones(5, dtype=torch.bool), float(z) + 1.0, **KTO_EVEN, clip=clip)
    lower, _ = losses.kto_loss(policy, ref, mask, torch.ones(5, dtype=torch.bool), float(z), **KTO_EVEN, clip=clip)
    assert float(higher) > float(lower)  # a higher reference point makes desirable rows costlier


def test_kto_metrics_omit_an_empty_group():
    policy, ref, mask = _batch(B=3, seed=32)
    _, metrics = losses.kto_loss(policy, ref, mask, torch.ones(3, dtype=torch.bool), 0.0, **KTO_EVEN)
    assert "rewards/chosen" in metrics and "rewards/rejected" not in metrics


# ---- GRPO --------------------------------------------------------------------------------------


def test_group_advantages_match_loops():
    """The one advantage function (pairing and training both call it) against a loop."""
    g = torch.Generator().manual_seed(40)
    rewards = torch.randn(10, generator=g, dtype=torch.float64)
    group_ids = torch.tensor([7, 7, 7, 3, 3, 9, 9, 9, 9, 3])
    got = group_advantages(rewards.numpy(), group_ids.numpy())
    for i in range(10):
        members = [float(rewards[j]) for j in range(10) if group_ids[j] == group_ids[i]]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / len(members))
        assert float(got[i]) == pytest.approx((float(rewards[i]) - mean) / (std + 0.01), rel=1e-10)


def test_group_advantages_of_pairs_are_plus_minus_one():
    rewards = [5.0, -3.0, 0.2, 0.2, 100.0, 0.0]
    got = group_advantages(rewards, [0, 0, 1, 1, 2, 2])
    assert float(got[0]) == pytest.approx(4 / 4.01) and float(got[1]) == pytest.approx(-4 / 4.01)
    assert float(got[2]) == 0.0 and float(got[3]) == 0.0  # a tie carries no signal
    assert float(got[4]) == pytest.approx(1.0, abs=2e-4) and float(got[5]) == pytest.approx(-1.0, abs=2e-4)


@pytest.mark.parametrize("clip", [None, CLIP, ASYM])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.1, 0.28)])
def test_grpo_matches_loop_values_and_gradients(clip, eps):
    policy, ref, mask = _batch(B=5, seed=50, scale=0.6)
    adv = torch.tensor([1.0, -0.5, 0.0, -1.2, 0.8], dtype=torch.float64)
    loss, metrics = losses.grpo_loss(policy, ref, mask, adv, beta_kl=0.05, eps_low=eps[0], eps_high=eps[1], clip=clip)
    want = _loop_grpo(policy, ref, mask, adv, 0.05, eps[0], eps[1], clip)
    assert float(loss) == pytest.approx(float(want), rel=1e-10)
    got, want_g = _grad(loss, policy), _grad(want, policy)
    torch.testing.assert_close(got, want_g, rtol=1e-10, atol=1e-12)
    assert torch.all(got[~mask] == 0)

    n = int(mask.sum())
    clipped = sum(
        1
        for b in range(5)
        for t in range(mask.shape[1])
        if mask[b, t]
        and (
            (math.exp(float(_loop_d(policy.detach(), ref, mask, b, t, clip))) < 1 - eps[0] and adv[b] < 0)
            or (math.exp(float(_loop_d(policy.detach(), ref, mask, b, t, clip))) > 1 + eps[1] and adv[b] > 0)
        )
    )
    assert float(metrics["clip_frac"]) == pytest.approx(clipped / n)
    assert float(metrics["advantage"]) == pytest.approx(float(adv.mean()))
    kl = sum(
        math.exp(float(ref[b, t] - policy[b, t])) - float(ref[b, t] - policy[b, t]) - 1
        for b in range(5)
        for t in range(mask.shape[1])
        if mask[b, t]
    )
    assert float(metrics["kl"]) == pytest.approx(kl / n, rel=1e-5)


def test_grpo_humanline_clip_zeroes_gradient_outside_but_keeps_k3():
    """Outside the clip range only the k3 term (on unclipped log-probs) carries gradient."""
    policy, ref, mask = _batch(B=5, seed=51, scale=2.0)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    loss, _ = losses.grpo_loss(policy, ref, mask, adv, beta_kl=0.0, **GRPO_EPS, clip=CLIP)
    g = _grad(loss, policy)
    d = (policy - ref).detach()
    outside = mask & ((d < CLIP[0]) | (d > CLIP[1]))
    assert outside.any() and torch.all(g[outside] == 0)
    loss_kl, _ = losses.grpo_loss(policy, ref, mask, adv, beta_kl=0.1, **GRPO_EPS, clip=CLIP)
    g_kl = _grad(loss_kl, policy)
    x = (ref - policy).detach()
    torch.testing.assert_close(g_kl[outside], (0.1 * (1 - torch.exp(x)) / int(mask.sum()))[outside])


def test_grpo_at_reference_is_minus_advantage_token_mean():
    policy, _, mask = _batch(B=4, seed=52)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    loss, metrics = losses.grpo_loss(policy, policy.detach(), mask, adv, beta_kl=0.01, **GRPO_EPS, clip=CLIP)
    want = -sum(float(adv[b]) * int(mask[b].sum()) for b in range(4)) / int(mask.sum())
    assert float(loss) == pytest.approx(want, rel=1e-12)
    assert float(metrics["clip_frac"]) == 0.0 and float(metrics["kl"]) == 0.0
    # the policy gradient at rho = 1 is -A / N per completion token
    g = _grad(loss, policy)
    torch.testing.assert_close(g, (-adv[:, None] / int(mask.sum())) * mask)
