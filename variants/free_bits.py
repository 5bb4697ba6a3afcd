"""Free bits (Kingma et al. 2016, NeurIPS, "Improved variational inference with inverse
autoregressive flow", eq. 15): the KL term is sum_g max(lambda, E_batch[KL_g]), so no group of
latent units is pushed below lambda nats. Their code uses lambda = 0.25 per group.

By default each latent unit is its own group; ``groups = G`` splits the units into G contiguous
groups of equal size. ``lambda = 0`` is exactly `vae` (the batch mean is taken before the sum in
both).
"""

from . import register
from .base import ConfigError, Param, Variant


@register("free-bits")
class FreeBits(Variant):
    paper = "Kingma et al. 2016, NeurIPS, eq. 15"
    params = {
        "lambda": Param(0.25, "free nats per group", low=0.0),
        "groups": Param(0, "number of groups of latent units (0: one per unit)", low=0),
    }

    neutral = {"lambda": 0.0}

    def regularizer(self, kl):
        per_unit = kl.mean(0)
        groups = self.hp["groups"]
        if groups:
            if per_unit.shape[-1] % groups:
                raise ConfigError(f"free-bits: groups={groups} does not divide the "
                                  f"{per_unit.shape[-1]} latent units; allowed: a divisor")
            per_unit = per_unit.reshape(groups, -1).sum(-1)
        return per_unit.clamp_min(self.hp["lambda"]).sum()
