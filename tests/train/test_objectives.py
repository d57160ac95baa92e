"""The objective registry and the objectives added through it (IPO, SimPO), each against an
explicit loop computation; KTO's step-wide reference point and mismatched pairing."""

from __future__ import annotations

import math

import pytest
import torch

from humanline_train import objectives
from humanline_train.batches import kl_partners
from humanline_train.objectives.ipo import ipo_loss
from humanline_train.objectives.kto import reference_point
from humanline_train.objectives.simpo import simpo_loss

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")


def _rows(B=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * mask
    policy = (ref + torch.randn(B, T, generator=g, dtype=torch.float64) * 2.5) * mask
    return policy.requires_grad_(True), ref, mask


def test_registry_lists_every_objective_with_its_declarations():
    registry = objectives.all_objectives()
    assert sorted(registry) == ["dpo", "grpo", "ipo", "kto", "simpo"]
    assert {n: c.layout for n, c in registry.items()} == {
        "dpo": "paired", "ipo": "paired", "simpo": "paired", "kto": "unpaired", "grpo": "grouped"}
    assert [n for n, c in registry.items() if not c.needs_reference] == ["simpo"]
    assert objectives.get("simpo").Settings() == objectives.get("simpo").Settings(beta=2.0, gamma=1.0)
    with pytest.raises(Exception, match="--loss 'orpo': expected one of dpo, grpo, ipo, kto, simpo"):
        objectives.get("orpo")


@pytest.mark.parametrize("clip", [None, (-1.5, 1.5), (-0.3, 0.8)])
def test_ipo_matches_a_loop(clip):
    pw, rw, mw = _rows(seed=1)
    pl, rl, ml = _rows(seed=2)
    tau = 0.25
    loss, metrics = ipo_loss(pw, rw, mw, pl, rl, ml, tau=tau, clip=clip)

    def mean_ratio(p, r, m, b):
        ds = [float(p[b, t] - r[b, t]) for t in range(m.shape[1]) if m[b, t]]
        if clip is not None:
            ds = [min(max(d, clip[0]), clip[1]) for d in ds]
        return sum(ds) / len(ds)

    hs = [mean_ratio(pw, rw, mw, b) - mean_ratio(pl, rl, ml, b) for b in range(3)]
    expected = sum((h - 1 / (2 * tau)) ** 2 for h in hs) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    assert float(metrics["margin"]) == pytest.approx(sum(hs) / 3, rel=1e-6)
    loss.backward()
    if clip is not None:  # a clamped token gets no gradient
        outside = mw & (((pw - rw).detach() <= clip[0]) | ((pw - rw).detach() >= clip[1]))
        assert outside.any() and torch.all(pw.grad[outside] == 0)


def test_ipo_at_step_zero_is_exactly_one_over_two_tau_squared():
    p, _, m = _rows(seed=3)
    loss, _ = ipo_loss(p, p.detach(), m, p, p.detach(), m, tau=0.1, clip=(-1.5, 1.5))
    assert float(loss) == (1 / (2 * 0.1)) ** 2


def test_simpo_matches_a_loop():
    pw, _, mw = _rows(seed=4)
    pl, _, ml = _rows(seed=5)
    loss, metrics = simpo_loss(pw, mw, pl, ml, beta=2.0, gamma=1.0)
    expected = 0.0
    for b in range(3):
        avg_w = sum(float(pw[b, t]) for t in range(6) if mw[b, t]) / int(mw[b].sum())
        avg_l = sum(float(pl[b, t]) for t in range(6) if ml[b, t]) / int(ml[b].sum())
        expected += -math.log(1 / (1 + math.exp(-(2.0 * avg_w - 2.0 * avg_l - 1.0))))
    assert float(loss) == pytest.approx(expected / 3, rel=1e-6)
    assert float(metrics["accuracy"]) in (0.0, 1 / 3, 2 / 3, 1.0)


def test_kto_reference_point_is_the_clamped_step_mean():
    assert float(reference_point(torch.tensor(-6.0), torch.tensor(3.0))) == 0.0  # max(0, .)
    assert float(reference_point(torch.tensor(6.0), torch.tensor(4.0))) == 1.5
    assert float(reference_point(torch.tensor(0.0), torch.tensor(0.0))) == 0.0  # no KL row in the step


def test_kl_partners_never_share_a_prompt():
    ids = ["a", "a", "b", "c", "c", "c", "a"]
    partners = kl_partners(ids)
    for i, j in enumerate(partners):
        assert j is not None and ids[j] != ids[i]
    assert partners[0] == 2 and partners[2] == 3 and partners[5] == 6 and partners[6] == 2  # the next that differs
    assert kl_partners(["x", "x"]) == [None, None]
