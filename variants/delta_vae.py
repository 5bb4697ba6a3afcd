"""delta-VAE (Razavi et al. 2019, ICLR, "Preventing posterior collapse with delta-VAEs", section
2.1): the posterior family is constrained so that every unit's KL to N(0, 1) is at least delta,
for every input: a committed rate.

The parameterization of the re-implementation used in later comparisons: with
c = 1 + 2 delta, the variance lies in [l, u], the two roots of ln v - v + c = 0
(l = -W_0(-e^-c), u = -W_-1(-e^-c), Lambert W), as v = l + (u - l) sigmoid(raw_v); the mean is
mu = sqrt(c + ln v - v + relu(raw_mu)). Then KL_d = (mu^2 + v - 1 - ln v) / 2
= delta + relu(raw_mu) / 2 >= delta. (The constraint is on the variance v, which is where the KL
puts it.) The mean is never negative. A 1e-6 inside the square root keeps its gradient finite
at the interval's ends and adds 5e-7 nats. There is no neutral setting: delta = 0 still
constrains the family.
"""

import math

import torch
import torch.nn.functional as F
from scipy.special import lambertw
from torch import nn

from . import register
from .base import Param, Variant


def variance_interval(delta: float) -> tuple[float, float]:
    """The roots l < 1 < u of ln v - v + 1 + 2 delta = 0."""
    a = -math.exp(-(1.0 + 2.0 * delta))
    return float(-lambertw(a, 0).real), float(-lambertw(a, -1).real)


class CommittedRate(nn.Module):
    def __init__(self, delta: float, tiny: float = 1e-6):
        super().__init__()
        self.c, self.tiny = 1.0 + 2.0 * delta, tiny
        self.low, self.high = variance_interval(delta)

    def forward(self, params, **_):
        raw_mu, raw_v = params.chunk(2, dim=-1)
        v = self.low + (self.high - self.low) * torch.sigmoid(raw_v)
        logvar = torch.log(v)
        mu = torch.sqrt((self.c + logvar - v).clamp_min(0) + F.relu(raw_mu) + self.tiny)
        return torch.cat([mu, logvar], dim=-1)


@register("delta-vae")
class DeltaVAE(Variant):
    paper = "Razavi et al. 2019, ICLR, section 2.1 (committed rate delta per unit)"
    params = {"delta": Param(0.15, "the committed rate: least KL per unit, nats", low=0.0)}
    neutral = None

    def posterior_head(self, latent):
        return CommittedRate(self.hp["delta"])
