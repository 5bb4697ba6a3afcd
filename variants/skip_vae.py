"""Skip-VAE (Dieng et al. 2019, AISTATS, "Avoiding latent variable collapse with generative skip
models", eq. 6): z feeds every layer of the decoder, not only its first, so that no layer can
wash it out. For the MLP decoder an extra linear map of z into every later hidden layer and the
output; MADE and the gated PixelCNN already add z to every hidden layer, so there it also feeds
the output layer (``model.z_output``: with it on, skip-vae is the same model as vae).
"""

from . import register
from .base import Variant


@register("skip-vae")
class SkipVAE(Variant):
    paper = "Dieng et al. 2019, AISTATS, eq. 6 (z into every decoder layer)"
    neutral = None  # the skip maps are extra parameters; no setting removes them

    def decoder_options(self):
        return {"skip": True}
