"""The decoder alone: no latent (dimension 0), so q = p, KL = 0 and log p(x) is exact.

The "PixelCNN alone" row of He et al. 2019 (ICLR, "Lagging inference networks and posterior
collapse in variational autoencoders", Table 1): a collapsed VAE lands near it, and a mitigation
is worth something when it beats it. Its training run is also the pretrained decoder of the
lagging set-up (``train.decoder_pretrain_epochs``; this project's construction after He et al.'s
explanation of collapse, not an experiment of theirs).

Reference code vs the shared protocol: He et al. train it with their image script's schedule
(learning-rate halving on a validation plateau); here the shared protocol (Adam, gradient norm
clipped at 5 as in their script, ``train.*``) applies, as to every row.
"""

from . import register
from .base import Variant
from .latents import GaussianLatent


@register("decoder-only")
class DecoderOnly(Variant):
    paper = "He et al. 2019, ICLR, Table 1 ('PixelCNN alone'): the decoder without a latent"
    neutral = None  # no latent at all: no setting reduces it to vae

    def latent(self, dim):
        return GaussianLatent(0)
