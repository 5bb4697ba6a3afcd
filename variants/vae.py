"""The plain Gaussian VAE (Kingma & Welling 2014): every hook at its neutral default."""

from . import register
from .base import Variant


@register("vae")
class VAE(Variant):
    """Negative ELBO with the analytic KL; the reference all other variants reduce to."""
