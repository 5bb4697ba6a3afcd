"""The model factory: the VAE of a variant (its latent family, posterior head and decoder
options around the core's encoder and the chosen decoder), with one stochastic layer
(``variants.core.VAE``) or two (``variants.hierarchy.TwoLayerVAE``). Kept apart from both so
that neither model module imports the other, nor the registry."""

from __future__ import annotations

from collections.abc import Sequence

from . import REGISTRY, create
from .core import VAE
from .errors import ConfigError
from .hierarchy import TwoLayerVAE
from .latents import GaussianLatent


def build_vae(variant, input_dim: int, latent_dim: int, latent2_dim: int = 0,
              latent2_hidden: Sequence[int] = (100, 100), **kwargs) -> VAE:
    """The model of ``variant``: its latent family, posterior head and decoder options
    (``variants.base.Variant``) around the core's encoder and the decoder of ``kwargs``
    (``variants.core.VAE``); with ``latent2_dim > 0``, a second stochastic layer above the first
    (``variants.hierarchy.TwoLayerVAE``)."""
    latent = variant.latent(latent_dim)
    kwargs = {**kwargs, **variant.decoder_options()}
    if latent2_dim:
        check_two_layers(variant, latent_dim)
        return TwoLayerVAE(input_dim, latent, latent2_dim, latent2_hidden, **kwargs)
    return VAE(input_dim, latent, head=variant.posterior_head(latent), **kwargs)


def stacking(variant, decoder: str, latent2_dim: int = 0) -> str | None:
    """None where runs of this model can train stacked, seeds together
    (``bench.training.stacked``); else why not: the variant's reason
    (``Variant.stacking``), the decoder family's, or the two-layer model's."""
    from .decoders import stacking as decoder_stacking

    why = variant.stacking()
    if why:
        return f"variant {variant.name}: {why}"
    why = decoder_stacking(decoder)
    if why:
        return f"decoder {decoder}: {why}"
    return TwoLayerVAE.stacking if latent2_dim else None


def check_two_layers(variant, latent_dim: int) -> None:
    """ConfigError unless ``variant`` works with two stochastic layers: a Gaussian latent of
    size > 0 without a posterior head, and no reason of its own (``Variant.two_layers``)."""
    reason = two_layer_refusal(variant, latent_dim)
    if reason:
        allowed = [n for n in REGISTRY if not two_layer_refusal(create(n), max(latent_dim, 1))]
        raise ConfigError(f"variant {variant.name!r} does not work with two stochastic layers "
                          f"(model.latent2_dim > 0): {reason}; allowed: {', '.join(allowed)}")


def two_layer_refusal(variant, latent_dim: int) -> str | None:
    latent = variant.latent(latent_dim)
    if type(latent) is not GaussianLatent:
        return f"its latent is {type(latent).__name__}, not the diagonal Gaussian"
    if latent.dim == 0:
        return "it has no latent"
    if variant.posterior_head(latent) is not None:
        return "it reparameterizes the posterior (a head on the encoder's outputs)"
    return variant.two_layers
