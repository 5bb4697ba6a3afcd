"""BN-VAE (Zhu et al. 2020, ACL, "A batch normalized inference network keeps the KL vanishing
away", section 3): BatchNorm on the posterior means, its scale gamma fixed, its shift learned;
the log-variances untouched.

Over a training batch each unit's mean then has mean beta_d and variance gamma^2 (up to BN's
epsilon), so the batch-mean KL is at least sum_d E[mu_d^2] / 2 >= units * gamma^2 / 2: with
gamma = 0.7 and 32 units, 7.84 nats. Every unit is "active" by construction; the mutual
information says how much of that rate is information. Evaluation uses the running statistics
(eval mode). ``gamma`` has no neutral value: the normalization itself changes the model.

Annealing, as the authors' documented image commands do it (valdersoul/bn-vae, ``--warm_up 10``,
KL weight from 0): the KL weight ramps linearly from 0 to 1 over the first ``warmup`` of the
run. Their runs have no fixed length (He et al.'s image schedule, which their image code builds
on, stops after 5 learning-rate halvings, with a cap of 1000 epochs), so no fraction is theirs;
the default 0.1 is this suite's choice: a ramp that ends early and leaves most of a short run at
weight 1. ``warmup = 0`` starts at weight 1.
Reference code vs the shared protocol: that schedule (batch 50, learning rate halved after 20
epochs without a better validation loss, stop at the 5th halving) is not adopted; the shared
``train.*`` settings (Adam, clip 5 as in their code) apply.
"""

import torch
from torch import nn

from . import register
from .annealing import WARMUP_EPOCHS, linear, ramp_steps
from .base import Param, Variant


class MeanBatchNorm(nn.Module):
    """BatchNorm1d on the first half of the encoder's outputs (the means), scale fixed."""

    def __init__(self, units: int, gamma: float):
        super().__init__()
        self.bn = nn.BatchNorm1d(units)
        self.bn.weight.requires_grad_(False)
        with torch.no_grad():
            self.bn.weight.fill_(gamma)

    def forward(self, params, **_):
        mu, logvar = params.chunk(2, dim=-1)
        return torch.cat([self.bn(mu), logvar], dim=-1)


@register("bn-vae")
class BNVAE(Variant):
    paper = "Zhu et al. 2020, ACL, section 3 (BatchNorm on the posterior means, fixed scale)"
    params = {"gamma": Param(0.7, "fixed BN scale of the means", low=0.0, low_open=True),
              "warmup": Param(0.1, "fraction of the run over which the KL weight ramps from 0 "
                              "to 1 (their --warm_up: 10 epochs)", low=0.0, high=1.0),
              "warmup_epochs": WARMUP_EPOCHS}
    neutral = None  # batch-normalized means: no setting gives the plain encoder

    def posterior_head(self, latent):
        return MeanBatchNorm(latent.dim, self.hp["gamma"])

    anneals = True

    def kl_weight(self, step, total_steps):
        ramp = ramp_steps(self, self.hp["warmup"], total_steps)
        return linear(step, ramp) if ramp else 1.0
