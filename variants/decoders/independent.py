"""The MLP decoder (pixels independent given z; Kingma & Welling 2014) and its Skip-VAE form
(z into every later hidden layer; Dieng et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .autoregressive import AutoregressiveDecoder
from .fast_eval import InferenceDecoder
from .layers import bernoulli_log_prob, load_pretrained, mlp


class MLPDecoder(nn.Sequential):
    """z -> Bernoulli logits through an MLP; pixels independent given z (an nn.Sequential, so
    its parameters keep the names ``decoder.0.weight`` ... of the runs recorded before it)."""

    def __init__(self, z_dim: int, d: int, hidden: Sequence[int], activation: str):
        super().__init__(*mlp(z_dim, hidden, d, activation))

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        # the decoder on (S * B, Z) rows: no 3-d views per layer
        logits = self(z.reshape(math.prod(z.shape[:-1]), z.shape[-1])).view(*z.shape[:-1], -1)
        return bernoulli_log_prob(x, logits)

    def inference(self) -> InferenceDecoder:
        return InferenceDecoder(self)

    @torch.no_grad()
    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.sigmoid(self(z))

    load_pretrained = load_pretrained


class SkipMLPDecoder(AutoregressiveDecoder):
    """The MLP decoder with z fed into every hidden layer (Skip-VAE, Dieng et al. 2019, AISTATS):
    h_1 = f(W_1 z + b_1), h_l = f(W_l h_{l-1} + U_l z + b_l), logits = W_o h_L + b_o, as their MLP
    code does it (adjidieng/skip-vae); the paper's eq. 6 also conditions the likelihood on z.
    The pixels stay independent given z; its layers keep the plain MLP decoder's names
    (``0.weight`` ...), so a pretrained plain decoder loads into it, the skip maps at zero."""

    def __init__(self, z_dim: int, d: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.d = d
        layers = mlp(z_dim, hidden, d, activation)
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        self.body = layers
        self.skip = nn.ModuleList(nn.Linear(z_dim, lin.out_features, bias=False)
                                  for lin in layers[2:-1:2])

    def forward(self, z: Tensor) -> Tensor:
        return self.logits_given(None, None, z)

    def x_terms(self, x: Tensor) -> None:
        return None  # the logits do not depend on x

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        h = self.body[1](self.body[0](z))
        for j, skip in enumerate(self.skip):
            h = self.body[2 * j + 3](self.body[2 * j + 2](h) + skip(z))
        return self.body[-1](h)

    @torch.no_grad()
    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.sigmoid(self.logits_given(None, None, z))
