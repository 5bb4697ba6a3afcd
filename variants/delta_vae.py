"""delta-VAE (Razavi et al. 2019, ICLR, "Preventing posterior collapse with delta-VAEs", section
2.1): the posterior family is constrained so that every unit's KL to the prior is at least delta,
for every input and whatever the mean: a committed rate.

With the N(0, 1) prior, KL_d = (mu^2 + v - 1 - ln v) / 2 >= (v - 1 - ln v) / 2 = f(v), and f
decreases on (0, 1]. The paper keeps the posterior standard deviation in an interval
[sigma_l, sigma_u] on which f >= delta; its upper end is the smaller root l of
ln v - v + 1 + 2 delta = 0 (l = -W_0(-e^-(1 + 2 delta)), Lambert W). Here
ln v = ln l - softplus(raw_v), so v lies in (0, l] and KL_d >= f(l) = delta for every mean; the
lower end is left open (the paper's sigma_l only keeps the variance away from zero). The mean is
the encoder's output, free, both signs.

The paper's experiments use an AR(1) prior, where the same bound depends on the correlation
alpha; with an N(0, I) prior (this suite's) it is the interval above. The re-implementation in
the BN-VAE repository (used in later comparisons) differs: a clamped-sigmoid std over [l, u]
(both roots) and a mean derived from it, sqrt(2 delta + 1 + ln v - v + relu(raw)), never
negative: a restricted family, not the paper's. The authors' training (their code is not
public) is not otherwise reproduced; the shared protocol (Adam, clip 5) applies. There is no
neutral setting: delta = 0 still constrains the family (v <= 1).
"""

import math

import torch
import torch.nn.functional as F
from scipy.special import lambertw
from torch import nn

from . import register
from .base import Param, Variant


def variance_interval(delta: float) -> tuple[float, float]:
    """The roots l <= 1 <= u of ln v - v + 1 + 2 delta = 0: f(v) >= delta outside (l, u)."""
    a = -math.exp(-(1.0 + 2.0 * delta))
    return float(-lambertw(a, 0).real), float(-lambertw(a, -1).real)


class CommittedRate(nn.Module):
    """(mu, raw_v) -> (mu, ln v) with ln v = ln l - softplus(raw_v) <= ln l."""

    def __init__(self, delta: float):
        super().__init__()
        self.log_high = math.log(variance_interval(delta)[0])

    def forward(self, params, **_):
        mu, raw_v = params.chunk(2, dim=-1)
        return torch.cat([mu, self.log_high - F.softplus(raw_v)], dim=-1)


@register("delta-vae")
class DeltaVAE(Variant):
    paper = "Razavi et al. 2019, ICLR, section 2.1 (committed rate delta per unit)"
    params = {"delta": Param(0.15, "the committed rate: least KL per unit, nats (at most 50: "
                             "beyond it the bounded variance underflows float32)", low=0.0,
                             high=50.0)}
    neutral = None

    def posterior_head(self, latent):
        return CommittedRate(self.hp["delta"])
