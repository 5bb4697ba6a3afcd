"""Importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2016, ICLR, eq. 8).

The training objective is the k-sample bound
    L_k = E[ log (1/k) sum_i p(x, z_i) / q(z_i | x) ],   z_i ~ q(z | x),
with the reparameterized gradient of eq. 10. L_1 is the ELBO; at k = 1 this variant therefore uses
the default objective (analytic KL, the same bound with less variance), which is exactly `vae`.

Reference code vs the shared protocol: Burda et al. train at batch 20 with Adam (eps 1e-4) over
learning-rate stages for 3280 epochs (the ``paper`` profile sets all of it); other profiles use
the shared protocol (Adam, clip 5, ``train.*``).
"""

import math

import torch

from . import register
from .base import Param, Variant


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_i exp(log_w_i) per data point, from log-weights of shape (k, B)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


@register("iwae")
class IWAE(Variant):
    paper = "Burda, Grosse & Salakhutdinov 2016, ICLR, eq. 8"
    params = {"k": Param(5, "importance samples per data point in training", low=1)}

    neutral = {"k": 1}

    def train_samples(self):
        return self.hp["k"]

    def objective(self, terms, step, total_steps):
        if self.hp["k"] == 1:
            return super().objective(terms, step, total_steps)
        return -iwae_bound(terms.log_weights).mean()
