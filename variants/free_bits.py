"""Free bits: no part of the KL term is pushed below a floor of lambda nats. Three versions exist
in the literature and they are not interchangeable (``mode``):

- ``batch`` (Kingma et al. 2016, NeurIPS, "Improved variational inference with inverse
  autoregressive flow", eq. 15; their code): sum_g max(lambda, E_batch[KL_g]) over groups g of
  latent units, lambda = 0.25 per group in their code. By default each unit is its own group;
  ``groups = G`` splits the units into G contiguous groups of equal size.
- ``example`` (Li et al. 2019, EMNLP-IJCNLP, "A surprisingly effective fix for deep latent variable
  modeling of text", their code's ``fb=1``): per data point, the total KL enters the loss only
  where it exceeds the target lambda * units (0.25 * 32 = their target 8).
- ``dimension`` (Li et al. 2019, ``fb=2``): per data point and unit, KL_{x,d} enters only where it
  exceeds lambda (their target 8 / nz 32 = 0.25).

Li et al. mask the term (its value is 0 below the target), so their loss value differs from a
clamp's while the gradients are the same. ``lambda = 0`` is exactly `vae` in ``batch`` mode.

Reference code vs the shared protocol: Kingma et al.'s IAF code trains with Adamax and
data-dependent initialization; Li et al.'s with SGD on text; here the shared protocol (Adam,
clip 5, ``train.*``) applies.
"""

from torch import Tensor

from . import register
from .base import Param, Variant
from .errors import ConfigError

MODES = ("batch", "example", "dimension")


def free_bits(kl: Tensor, lam: float, mode: str = "batch", groups: int = 0) -> Tensor:
    """The free-bits KL term from the per-unit KL of shape (B, U) (see the module's doc)."""
    if mode == "example":
        total = kl.sum(-1)
        return (total * (total > lam * kl.shape[-1])).mean()
    if mode == "dimension":
        return (kl * (kl > lam)).sum(-1).mean()
    per_unit = kl.mean(0)
    if groups:
        if per_unit.shape[-1] % groups:
            raise ConfigError(f"free-bits: groups={groups} does not divide the "
                              f"{per_unit.shape[-1]} latent units; allowed: a divisor")
        per_unit = per_unit.reshape(groups, -1).sum(-1)
    return per_unit.clamp_min(lam).sum()


@register("free-bits")
class FreeBits(Variant):
    paper = "Kingma et al. 2016, NeurIPS, eq. 15 (batch); Li et al. 2019, EMNLP-IJCNLP (example, dimension)"
    params = {
        "lambda": Param(0.25, "free nats per group (batch), per unit (dimension); the target "
                        "per example is lambda x units (example)", low=0.0),
        "groups": Param(0, "batch mode: number of groups of latent units (0: one per unit)", low=0),
        "mode": Param("batch", "where the floor applies", choices=MODES, late=True),
    }

    neutral = {"lambda": 0.0}

    def regularizer(self, kl):
        return free_bits(kl, self.hp["lambda"], self.hp["mode"], self.hp["groups"])
