"""The autoregressive decoder contract: all D logits from one pass over (x, z), split into
x-terms (once per point) and the rest (per sample of z); its no-grad evaluation path
(``TiledInference``: the x-terms once per point, the logits tile by tile); ancestral sampling
for previews."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fast_eval import EVAL_TILE_ROWS, softplus_sum_
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


class TiledInference:
    """No-grad log p(x|z) of an autoregressive decoder: its x-terms once per point (kept while
    the same x tensor is passed again, as the importance sampler does for each chunk of samples),
    then tiles of about ``EVAL_TILE_ROWS`` (sample, point) rows, each reduced to
    sum_d x_d l_d - sum_d softplus(l_d) while its logits are in cache."""

    def __init__(self, decoder: AutoregressiveDecoder, tile_rows: int = EVAL_TILE_ROWS):
        self.decoder, self.tile_rows = decoder, tile_rows

    def _x_terms(self, x: Tensor):
        cached = getattr(self, "_x_cache", None)
        if cached is None or cached[0] is not x or cached[1] != x._version:
            cached = self._x_cache = (x, x._version, self.decoder.x_terms(x))
        return cached[2]

    def bernoulli_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        terms, (s, b) = self._x_terms(x), z.shape[:2]
        step = max(1, self.tile_rows // b)
        out = []
        for i in range(0, s, step):
            logits = self.decoder.logits_given(terms, x, z[i:i + step])
            xl = (logits * x).sum(-1)
            out.append(xl - softplus_sum_(logits.reshape(-1, x.shape[-1])).view(xl.shape))
        return torch.cat(out)
