"""The autoregressive decoder contract: all D logits from one pass over (x, z), split into
x-terms (once per point) and the rest (per sample of z); ancestral sampling for previews."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fast_eval import TiledInference
from .layers import bernoulli_log_prob, load_pretrained


class AutoregressiveDecoder(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d | x_<d, z), all D logits from one pass over (x, z).

    Subclasses split the pass in two: ``x_terms(x)`` (what depends on x alone, computed once per
    point) and ``logits_given(t, x, z)`` (the rest, for S samples of z per point).
    """

    def x_terms(self, x: Tensor):
        raise NotImplementedError

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        raise NotImplementedError

    def logits(self, x: Tensor, z: Tensor) -> Tensor:
        """(S, B, D) logits for x of shape (B, D) and z of shape (S, B, Z)."""
        return self.logits_given(self.x_terms(x), x, z)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        return bernoulli_log_prob(x, self.logits(x, z))

    def inference(self) -> TiledInference:
        return TiledInference(self)

    @torch.no_grad()
    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling in raster order (D passes); returns each pixel's probability given
        the pixels sampled before it, for z of shape (B, Z)."""
        d = self.d
        x = z.new_zeros(len(z), d)
        probs = z.new_zeros(len(z), d)
        for i in range(d):
            p = torch.sigmoid(self.logits(x, z.unsqueeze(0))[0, :, i])
            probs[:, i] = p
            x[:, i] = (torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device) < p)
        return probs

    load_pretrained = load_pretrained
