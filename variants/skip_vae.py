"""Skip-VAE (Dieng et al. 2019, AISTATS, "Avoiding latent variable collapse with generative skip
models", eq. 6): z feeds every layer of the decoder, not only its first, so that no layer can
wash it out.

What each decoder's base conditioning is, and what skip-vae adds (``variants.decoders``):

- mlp: z is the first layer's input; skip-vae adds a linear map of z into every later hidden
  layer (not the output, as their MLP code does it; the paper's eq. 6 also feeds the likelihood).
  It needs at least two hidden decoder layers.
- made: z enters the first hidden layer (and the output with ``model.z_output``); skip-vae adds
  z to every later hidden layer and to the output.
- pixelcnn: z is a learned bias of the first layer's gates (their base PixelCNN concatenates a
  spatial z map to the first layer's input); skip-vae adds it to every layer's gates and to the
  output 1x1 convolution, as their ``models_img_skip.py`` does with concatenated z maps.

With a one-hidden-layer MADE (the default profile's), the only new path is z into the logits:
for that decoder this is the whole of eq. 6. Reference code vs the shared protocol: the
optimizer, batch size and schedule of their training scripts are not adopted (not checked
here: the repository is not among the stored sources); the shared protocol (Adam, clip 5,
``train.*``) applies as to every row.
"""

from . import register
from .base import Variant


@register("skip-vae")
class SkipVAE(Variant):
    paper = "Dieng et al. 2019, AISTATS, eq. 6 (z into every decoder layer)"
    neutral = None  # the skip maps are extra parameters; no setting removes them

    def decoder_options(self):
        return {"skip": True}
