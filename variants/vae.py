"""The plain Gaussian VAE (Kingma & Welling 2014): every hook at its neutral default.

``samples = k`` averages the ELBO over k samples of z per point in training (Burda et al. 2016's
"VAE" rows with k > 1, against which IWAE with the same k is compared); 1 is the default.

Reference code vs the shared protocol: Kingma & Welling trained with Adagrad at batch 100; the
shared protocol (Adam, gradient norm clipped at 5, ``train.*``) is that of He et al.'s
``image.py`` for its plain VAE baseline (``--aggressive 0``), so every row of a comparison
differs from this one by its own change only.
"""

from . import register
from .base import Param, Variant


@register("vae")
class VAE(Variant):
    """Negative ELBO with the analytic KL; the reference all other variants reduce to."""

    params = {"samples": Param(1, "samples of z per point in training (the k-sample ELBO)",
                               low=1, late=True)}
    neutral = {"samples": 1}

    def train_samples(self):
        return self.hp["samples"]
