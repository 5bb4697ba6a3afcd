"""Decoder families: p(x|z) over binary pixels, from a latent z of any size (0 included).

Every decoder gives
- ``log_prob(x, z)``: log p(x|z) for x of shape (B, D) and z of shape (S, B, Z) -> (S, B),
  exact and differentiable (training);
- ``inference()``: the same function for no-grad evaluation, rewritten for speed; what depends
  on x alone is computed once per point and shared by all S samples;
- ``mean(z, generator)``: pixel probabilities for previews (ancestral sampling where the pixels
  depend on each other);
- ``load_pretrained(state)``: start from the weights of the same decoder trained without a
  latent (the lagging set-up); what carries z starts at zero, so the model starts as exactly
  the pretrained decoder.

Families (``model.decoder``):
- ``mlp``: z -> logits, pixels conditionally independent given z (Kingma & Welling 2014)
  (``independent``);
- ``made``: a masked autoregressive MLP over the pixels in raster order (Germain et al. 2015),
  z added to the first hidden layer (every hidden layer with Skip-VAE) through its own linear
  map (``made``);
- ``lstm``: token sequences, an LSTM over the tokens with z in its initial state and every input
  (Bowman et al. 2016; He et al. 2019) (``lstm``; its ``log_prob`` reads ids, not pixels);
- ``pixelcnn``: a gated PixelCNN with vertical and horizontal stacks (van den Oord et al. 2016,
  "Conditional image generation with PixelCNN decoders", eq. 4), z a learned bias in the first
  layer's gates (every layer's with Skip-VAE) (``pixelcnn``).

One idea per module: ``layers`` (the MLP stack, the Bernoulli likelihood, the pretrained start),
``fast_eval`` (the no-grad evaluation of independent pixels and the shared tile kernels),
``autoregressive`` (the autoregressive contract with its own no-grad path, ``TiledInference``),
the families ``independent``, ``made`` and ``pixelcnn``; this module holds the factory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .autoregressive import AutoregressiveDecoder, TiledInference
from .fast_eval import EVAL_TILE_ROWS, InferenceDecoder, softplus_sum_
from .independent import MLPDecoder, SkipMLPDecoder
from .layers import ACTIVATIONS, bernoulli_log_prob, load_pretrained, mlp
from .lstm import LSTMDecoder
from .made import MADEDecoder, made_masks
from .pixelcnn import PixelCNNDecoder

DECODERS = ("mlp", "made", "pixelcnn", "lstm")


def stacking(kind: str) -> str | None:
    """None where decoder family ``kind``'s runs can train stacked (its kernels batched over
    runs give each run's own bits: ``tests/test_stacked.py``), else why not: a family says it
    with a class attribute ``stacking``."""
    family = {"mlp": MLPDecoder, "made": MADEDecoder, "pixelcnn": PixelCNNDecoder,
              "lstm": LSTMDecoder}[kind]
    return getattr(family, "stacking", None)


def check_options(kind: str, hidden: Sequence[int], skip: bool = False, **_) -> None:
    """ConfigError for decoder options that mean nothing for this decoder."""
    from ..errors import ConfigError

    if skip and kind == "mlp" and len(hidden) < 2:
        raise ConfigError("z into every later layer (skip-vae) with the mlp decoder needs at "
                          "least two hidden layers (z is the first one's input); allowed: "
                          "model.decoder_hidden=W,W[,...]")


def make_decoder(kind: str, z_dim: int, d: int, *, hidden: Sequence[int], activation: str,
                 image_shape: Sequence[int] | None = None, window: int = -1,
                 direct: bool = True, z_output: bool = True, layers: int = 3,
                 channels: int = 16, kernel: int = 3, skip: bool = False, vocab: int = 0,
                 embed: int = 50, lstm_hidden: int = 50, lstm_layers: int = 1,
                 dropout: float = 0.0, word_dropout: float = 0.0) -> nn.Module:
    """The decoder family ``kind`` (one of DECODERS) for a latent of size z_dim and D pixels.

    Base conditioning (Dieng et al. 2019's base decoders): z is the MLP's input, and enters the
    first layer of MADE and of the PixelCNN (and their output layer with ``z_output``).
    ``skip`` (Skip-VAE, as adjidieng/skip-vae ``models_img_skip.py`` does it): z also enters every
    later hidden layer of the MLP (not its output), and every later layer and the output of MADE
    and the PixelCNN."""
    check_options(kind, hidden, skip=skip)
    layers_fed = "all" if skip else "first"
    z_output = z_output or skip
    if kind == "mlp":
        return SkipMLPDecoder(z_dim, d, hidden, activation) if skip \
            else MLPDecoder(z_dim, d, hidden, activation)
    if kind == "made":
        return MADEDecoder(z_dim, d, hidden, activation, window, direct, z_output, layers_fed)
    if kind == "pixelcnn":
        if image_shape is None or math.prod(image_shape) != d:
            raise ValueError("pixelcnn needs image data; allowed datasets: digits, mnist, "
                             "fashion-mnist, or an .npz file whose points are 2-d images")
        return PixelCNNDecoder(z_dim, image_shape, layers, channels, kernel, z_output,
                               layers_fed)
    if kind == "lstm":  # d: the sequence length; skip-vae: z into every step's output
        return LSTMDecoder(z_dim, vocab, d, embed, lstm_hidden, lstm_layers, dropout,
                           word_dropout, z_output=skip)
    raise ValueError(f"unknown decoder {kind!r}; allowed: {', '.join(DECODERS)}")


__all__ = ["ACTIVATIONS", "DECODERS", "EVAL_TILE_ROWS", "AutoregressiveDecoder",
           "InferenceDecoder", "LSTMDecoder", "MADEDecoder", "MLPDecoder", "PixelCNNDecoder",
           "SkipMLPDecoder",
           "TiledInference", "bernoulli_log_prob", "check_options", "load_pretrained",
           "made_masks", "make_decoder", "mlp", "softplus_sum_", "stacking"]
