"""DU-VAE (Shen et al. 2021, "Regularizing variational autoencoder with diversity and uncertainty
awareness", IJCAI): BatchNorm on the posterior means whose learnable scale gamma is rescaled, at
every forward pass, to root-mean-square ``gamma`` (0.5 for images) - diversity - and, once KL
annealing has ended, a floor 1 / (2 pi e) under the variance plus dropout (p = 0.1 for images) on
the variance above it - uncertainty.

Annealing, as the authors' documented image command does it (SmilesDZgk/DU-VAE, ``--warm_up
10``, KL weight from 0): the KL weight ramps linearly from 0 to 1 over the first ``warmup`` of
the run (default 0.1, this suite's choice for short runs, as for ``bn-vae``: their runs stop on
a validation plateau, so their 10 epochs are no fixed fraction; 0 starts at weight 1, and floor
and dropout then act from the first step). The head keeps whether annealing has ended in a
buffer, so evaluation after training uses the floor. Dropout is inverted dropout (survivors
scaled by 1 / (1 - p)) and is off in evaluation (their ``training=False``). Their ``image.py``
argparse default for the dropout is 0.2, their README's image command 0.1 (used here). There is
no neutral setting (the normalization itself changes the model).
Reference code vs the shared protocol: their image script follows He et al.'s schedule (batch
50, learning rate halved on a validation plateau); here the shared ``train.*`` settings (Adam,
clip 5 as in their code) apply.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .annealing import WARMUP_EPOCHS, linear, ramp_steps
from .base import Param, Variant

FLOOR = 1.0 / (2.0 * math.pi * math.e)


class DiversityUncertainty(nn.Module):
    def __init__(self, units: int, gamma: float, p: float, annealed: bool):
        super().__init__()
        self.gamma, self.p = gamma, p
        self.weight = nn.Parameter(torch.ones(units))
        self.bias = nn.Parameter(torch.zeros(units))
        self.register_buffer("running_mean", torch.zeros(units))
        self.register_buffer("running_var", torch.ones(units))
        self.register_buffer("annealed", torch.tensor(annealed))

    def forward(self, params, annealed: bool | None = None, **_):
        mu, logvar = params.chunk(2, dim=-1)
        scale = self.gamma * self.weight / self.weight.pow(2).mean().sqrt()
        mu = F.batch_norm(mu, self.running_mean, self.running_var, scale, self.bias,
                          self.training, 0.1, 1e-5)
        if annealed is None:  # evaluation, or no annealing: whatever training reached
            annealed = bool(self.annealed)
        elif self.training:
            self.annealed.fill_(annealed)
        if annealed:
            var = F.dropout(torch.exp(logvar), self.p, self.training)
            logvar = torch.log(FLOOR + var)
        return torch.cat([mu, logvar], dim=-1)


@register("du-vae")
class DUVAE(Variant):
    paper = "Shen et al. 2021, IJCAI (BN with RMS-rescaled scale; variance floor and dropout)"
    params = {
        "gamma": Param(0.5, "target RMS of the BN scales (images 0.5)", low=0.0, low_open=True),
        "p": Param(0.1, "dropout rate on the variance above the floor (images 0.1)",
                   low=0.0, high=0.99),
        "warmup": Param(0.1, "fraction of the run over which the KL weight ramps from 0 to 1; "
                        "floor and dropout act once it has ended (their --warm_up: 10 epochs)",
                        low=0.0, high=1.0),
        "warmup_epochs": WARMUP_EPOCHS,
    }
    neutral = None

    def posterior_head(self, latent):
        return DiversityUncertainty(latent.dim, self.hp["gamma"], self.hp["p"],
                                    annealed=not (self.hp["warmup"] or self.hp["warmup_epochs"]))

    anneals = True

    def kl_weight(self, step, total_steps):
        ramp = ramp_steps(self, self.hp["warmup"], total_steps)
        return linear(step, ramp) if ramp else 1.0

    def stacking(self):
        return "its dropout on the variances draws from torch's global generator"

    def sample_options(self, step, total_steps):
        ramp = ramp_steps(self, self.hp["warmup"], total_steps)
        return {"annealed": step >= ramp} if ramp else {}
