"""beta-VAE (Higgins et al. 2017, ICLR, eq. 4): loss = recon + beta * KL. beta = 1 is `vae`."""

from . import register
from .base import Param, Variant


@register("beta")
class BetaVAE(Variant):
    paper = "Higgins et al. 2017, beta-VAE, ICLR, eq. 4"
    params = {"beta": Param(1.0, "weight of the KL term", low=0.0)}
    neutral = {"beta": 1.0}

    def regularizer(self, kl):
        return self.hp["beta"] * super().regularizer(kl)
