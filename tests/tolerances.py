"""One rule for comparing float32 results that two computations should share up to rounding.

Two float32 computations of the same numbers by different kernels (another CPU's vector width,
another thread count, another batch shape, summation order or layout) agree only up to rounding,
and which single entry of a large tensor rounds worst is a property of the machine: an element-wise
``atol`` on a tensor of millions of entries fails on some machine. What float32 arithmetic bounds
is the error relative to the whole tensor:

    ||actual - expected||_2 <= sqrt(terms) * eps32 * ||expected||_2,   eps32 = 2**-23

Derivation: float32 rounds every operation with a relative error of at most u = 2**-24 = eps32 / 2.
A number summed from ``terms`` addends carries at most (terms - 1) * u of their magnitude in the
worst case, but the rounding errors are independent, zero-mean and of either sign, so they grow
like a random walk, sqrt(terms) * u (Higham & Mary, "A new approach to probabilistic rounding
error analysis", SIAM J. Sci. Comput. 41(5), 2019). The 2-norm over a tensor averages many such
errors, so the bound holds for the norm although one entry may exceed it (the failure this rule
exists for). Each side carries one such error, so the two differ by at most sqrt(terms) * 2u =
sqrt(terms) * eps32 of the addends' magnitude. That is the entries' own (``||expected||``) unless
``scale`` gives it per entry (``||expected||`` becomes ``scale * sqrt(entries)``): for sums that
cancel to well below their addends (GRPO's losses, a score summed from heads of either sign), and
for log-probs, whose rounding is that of a log-sum-exp of terms exp(logit - max) <= 1, however
far below 0 the log-prob itself lies (about -ln 49152 = -10.8 for a random model).

``terms`` counts the addends whose rounding reaches one compared number along its chain of sums
(dot products, softmax denominators, the tokens a weight gradient sums over). Through an LM head
the vocabulary-wide sums dominate the chain (log-softmax forward, the hidden state's gradient
backward: 49,152 addends against about a thousand for the rest of the tiny model), so log-probs,
gradients and losses of the tiny Llama use ``conftest.VOCAB``: sqrt(49152) * eps32 = 2.6e-5.
Measured there (AVX-512, AVX2 and no-vector kernels; 1 and 2 threads): packed vs padded
gradients differ by at most 0.2 of the bound; one wrong entry of the attention mask moves the
gradients by about 1e3 times the bound and the log-probs by 3 to 100 times it.
"""

from __future__ import annotations

import torch

EPS32 = 2.0**-23
# a loss averages terms of size about 1 (-log sigmoid of a margin near 0 is ln 2; GRPO's
# advantage x ratio has |advantage| ~ 1), which GRPO's zero-mean advantages cancel to ~0
LOSS_SCALE = 1.0
# a log-prob's addends: the log-sum-exp's exp(logit - max) <= 1 (the tiny model's logits are
# below ~1.3, so their own rounding is no larger)
LOGPROB_SCALE = 1.0


def assert_close_fp32(actual, expected, terms: int, what: str = "values", scale: float | None = None) -> None:
    """Assert ``||actual - expected||_2 <= sqrt(terms) * eps32 * ||expected||_2`` (module doc).

    ``actual``/``expected``: tensors or sequences of floats of one shape (compared in float64);
    ``terms``: the addends behind each number; ``scale``: the size of one entry's addends where
    it is not the entry's own (then ``||expected||`` is ``scale * sqrt(entries)``); ``what``
    names the numbers."""
    a = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    e = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert bool(torch.isfinite(a).all() and torch.isfinite(e).all()), f"{what}: not all finite"
    magnitude = float(e.norm()) if scale is None else scale * e.numel() ** 0.5
    error, bound = float((a - e).norm()), terms**0.5 * EPS32 * magnitude
    assert error <= bound, (
        f"{what}: ||actual - expected|| = {error:.3g} > sqrt({terms}) * eps32 * {magnitude:.3g} = {bound:.3g} "
        f"(largest entry difference {float((a - e).abs().max()):.3g})"
    )
