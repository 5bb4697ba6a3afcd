"""The gated PixelCNN (van den Oord et al. 2016) with vertical and horizontal stacks,
conditioned on z through its gates."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoregressive import AutoregressiveDecoder


def _gate(a: Tensor) -> Tensor:
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def _down_shift(a: Tensor) -> Tensor:
    """Row i receives row i - 1 (zeros in row 0)."""
    return F.pad(a, (0, 0, 1, 0))[:, :, :-1]


class PixelCNNDecoder(AutoregressiveDecoder):
    """Gated PixelCNN (van den Oord et al. 2016, eq. 4 and figure 2) over an image of ``shape``.

    Vertical stack: convolutions over the rows above and the current row ((k//2 + 1) x k
    kernels), used by the horizontal stack only shifted down one row, so pixel (i, j) sees rows
    < i. Horizontal stack: 1 x (k//2 + 1) convolutions over the current row up to column j; in
    the first layer the input is shifted right one column (mask A), so x_ij itself is excluded;
    later layers include column j (mask B) and are residual. Every gate is
    tanh(W_f * . + V_f z) . sigmoid(W_g * . + V_g z), z a learned bias (PixelVAE's cond_z_bias),
    in the first layer's gates only (the base conditioning; Dieng et al.'s base PixelCNN
    concatenates a spatial z map to the first layer's input instead: a per-channel bias is its
    spatially constant equivalent), and with ``z_layers = "all"`` (Skip-VAE) in every layer's.
    Output: ReLU, 1x1 conv (plus V_o z with ``z_output``), ReLU, 1x1 conv to one logit per pixel.
    The first layer's convolutions of x are the x-terms, shared by all samples of z.
    """

    #: why its runs do not train stacked (``bench.training.stacked``): measured, its
    #: convolutions batched over the runs do not give the bits of each run's own
    stacking = "its convolutions batched over runs do not round as alone (measured)"

    def __init__(self, z_dim: int, shape: Sequence[int], layers: int = 3, channels: int = 16,
                 kernel: int = 3, z_output: bool = True, z_layers: str = "first"):
        super().__init__()
        if kernel % 2 == 0 or kernel < 1:
            raise ValueError(f"pixelcnn kernel {kernel} must be odd")
        (self.height, self.width), self.d = shape, math.prod(shape)
        c, r, self.r = channels, kernel // 2, kernel // 2
        ins = [1] + [c] * (layers - 1)
        self.v_convs = nn.ModuleList(nn.Conv2d(i, 2 * c, (r + 1, kernel)) for i in ins)
        self.h_convs = nn.ModuleList(nn.Conv2d(i, 2 * c, (1, r + 1)) for i in ins)
        self.v_to_h = nn.ModuleList(nn.Conv2d(2 * c, 2 * c, 1) for _ in ins)
        self.h_res = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in ins)
        fed = len(ins) if z_layers == "all" else 1
        # the last layer's vertical gate would feed nothing
        self.z_v = nn.ModuleList(nn.Linear(z_dim, 2 * c, bias=False)
                                 for _ in range(min(fed, len(ins) - 1))) if z_dim else None
        self.z_h = nn.ModuleList(nn.Linear(z_dim, 2 * c, bias=False) for _ in range(fed)) \
            if z_dim else None
        self.out_hidden = nn.Conv2d(c, c, 1)
        self.z_out = nn.Linear(z_dim, c, bias=False) if z_dim and z_output else None
        self.out = nn.Conv2d(c, 1, 1)

    def _stacks(self, i: int, v: Tensor, h: Tensor, first: bool) -> tuple[Tensor, Tensor]:
        """Convolutions of layer i, before z and gates: (vertical, horizontal) pre-activations."""
        r = self.r
        v_out = self.v_convs[i](F.pad(v, (r, r, r, 0)))
        if first:  # mask A: shift right one column so that column j is not seen
            h = F.pad(h, (1, 0))[..., :-1]
        h_out = self.h_convs[i](F.pad(h, (r, 0))) + self.v_to_h[i](_down_shift(v_out))
        return v_out, h_out

    def x_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        img = x.view(-1, 1, self.height, self.width)
        return self._stacks(0, img, img, first=True)

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        s, b = z.shape[:2]
        zr = z.reshape(s * b, z.shape[-1])

        def bias(maps, i: int) -> Tensor | float:
            return 0.0 if maps is None or i >= len(maps) else maps[i](zr)[:, :, None, None]

        v_pre, h_pre = (t.repeat(s, 1, 1, 1) for t in terms)
        v = h = None
        last = len(self.v_convs) - 1
        for i in range(last + 1):
            if i:
                v_pre, h_pre = self._stacks(i, v, h, first=False)
            if i < last:  # the last layer's vertical gate would feed nothing
                v = _gate(v_pre + bias(self.z_v, i))
            g = self.h_res[i](_gate(h_pre + bias(self.z_h, i)))
            h = g if h is None else h + g
        u = self.out_hidden(F.relu(h))
        if self.z_out is not None:
            u = u + self.z_out(zr)[:, :, None, None]
        return self.out(F.relu(u)).view(s, b, self.d)
