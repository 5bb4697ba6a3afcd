"""MADE (Germain et al. 2015): a masked autoregressive MLP over the pixels in raster order,
conditioned on z; its connectivity masks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoregressive import AutoregressiveDecoder
from .layers import ACTIVATIONS


def made_masks(d: int, hidden: Sequence[int], window: int) -> tuple[list[Tensor], Tensor]:
    """Connectivity masks (out, in) of MADE's layers and of its direct pixel -> logit map.

    Every unit carries the interval of pixels (1-based, raster order) it may depend on: pixel d
    itself for input d; [1, m] for a hidden unit of degree m (m = 1..d-1 in turn, Germain et al.
    2015, section 4); [1, d-1] for the logit of pixel d. A connection u -> t exists iff u's
    interval lies within t's, so no unit ever depends on a pixel outside its interval: logit d
    sees only x_<d. With ``window = w >= 0`` the logit of pixel d may see x_{d-w} .. x_{d-1}, and
    hidden layer l of L has intervals [m - v_l + 1, m] with v_l = round(w l / (L + 1)) growing
    towards w (v_l = 0: a unit that sees no pixel, only z). w = 0 gives pixels that are
    independent given z.
    """
    n = len(hidden)

    def hidden_units(width: int, layer: int) -> tuple[Tensor, Tensor]:
        m = 1 + torch.arange(width) % max(d - 1, 1)
        if d == 1:
            return torch.ones(width, dtype=torch.long), torch.zeros(width, dtype=torch.long)
        if window < 0:
            return torch.ones_like(m), m
        v = round(window * layer / (n + 1))
        return (m - v + 1).clamp_min(1) if v else m + 1, m  # v = 0: lo > hi, empty

    def allowed(lo_u, hi_u, lo_t, hi_t) -> Tensor:
        empty_u = lo_u > hi_u
        inside = (lo_t[:, None] <= lo_u[None, :]) & (hi_u[None, :] <= hi_t[:, None])
        return (empty_u[None, :] | inside).to(torch.get_default_dtype())

    pix = torch.arange(1, d + 1)
    units = [(pix, pix)] + [hidden_units(w, i + 1) for i, w in enumerate(hidden)]
    out_lo = torch.ones(d, dtype=torch.long) if window < 0 else (pix - window).clamp_min(1)
    units.append((out_lo, pix - 1))
    masks = [allowed(*units[i], *units[i + 1]) for i in range(n + 1)]
    return masks, allowed(pix, pix, *units[-1])


class MADEDecoder(AutoregressiveDecoder):
    """Masked autoregressive MLP (Germain et al. 2015, ICML, eq. 13) conditioned on z.

    h_1 = a((W_1 . M_1) x + b_1 + V_1 z),  h_l = a((W_l . M_l) h_{l-1} + b_l [+ V_l z, skip]),
    logits = (W_o . M_o) h_L + b_o [+ (A . M_A) x, ``direct``] [+ V_o z, ``z_output``].
    The base conditioning is Dieng et al.'s base decoder (z into the first layer only; the
    conditional MADE of the literature adds z where x enters); ``z_layers = "all"`` (Skip-VAE)
    adds z to every later hidden layer too. z reaches every pixel through the first hidden layer.
    The x-only product (W_1 . M_1) x + b_1 and the direct term are the x-terms, shared by all
    samples of z.
    """

    def __init__(self, z_dim: int, d: int, hidden: Sequence[int], activation: str,
                 window: int = -1, direct: bool = True, z_output: bool = True,
                 z_layers: str = "first"):
        super().__init__()
        if not hidden:
            raise ValueError("made needs at least one hidden layer (model.decoder_hidden)")
        self.d = d
        widths = (d, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.out = nn.Linear(widths[-1], d)
        self.direct = nn.Linear(d, d, bias=False) if direct else None
        fed = hidden if z_layers == "all" else hidden[:1]
        self.z_maps = nn.ModuleList(nn.Linear(z_dim, h, bias=False) for h in fed) \
            if z_dim else None
        self.z_out = nn.Linear(z_dim, d, bias=False) if z_dim and z_output else None
        self.act = ACTIVATIONS[activation]()
        masks, direct_mask = made_masks(d, hidden, window)
        for i, mask in enumerate(masks):
            self.register_buffer(f"mask{i}", mask, persistent=False)
        self.register_buffer("mask_direct", direct_mask, persistent=False)
        self.zero_masked()

    @torch.no_grad()
    def zero_masked(self) -> None:
        """Masked-out weights are never used: make them zero (also after a re-initialization)."""
        for i, layer in enumerate([*self.layers, self.out]):
            layer.weight.mul_(getattr(self, f"mask{i}"))
        if self.direct is not None:
            self.direct.weight.mul_(self.mask_direct)

    def _masked(self, i: int) -> Tensor:
        layer = ([*self.layers, self.out])[i]
        return layer.weight * getattr(self, f"mask{i}")

    def x_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first = F.linear(x, self._masked(0), self.layers[0].bias)  # (B, H_1)
        out = self.out.bias if self.direct is None \
            else F.linear(x, self.direct.weight * self.mask_direct, self.out.bias)
        return first, out

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        first, out_x = terms
        s, b = z.shape[:2]
        zr = z.reshape(s * b, z.shape[-1])
        h = first.repeat(s, 1)
        if self.z_maps is not None:
            h = h + self.z_maps[0](zr)
        h = self.act(h)
        for i in range(1, len(self.layers)):
            a = F.linear(h, self._masked(i), self.layers[i].bias)
            fed = self.z_maps is not None and i < len(self.z_maps)
            h = self.act(a + self.z_maps[i](zr) if fed else a)
        logits = F.linear(h, self._masked(len(self.layers))).view(s, b, -1) + out_x
        if self.z_out is not None:
            logits = logits + self.z_out(z)
        return logits
