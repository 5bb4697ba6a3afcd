"""log p(x|z) and its gradient in z in one hand-written pass, for annealed importance sampling's
HMC (``bench.ais``), which needs both at every leapfrog step and never the weights' gradients.

For a Bernoulli likelihood d/dl [x l - softplus(l)] = x - sigmoid(l), so the backward pass is
one matmul per layer (no weight gradients, no autograd graph, no saved tensors beyond the
activations), and softplus is summed from the same sigmoids (softplus(l) = relu(l) - log
sigmoid(|l|), the logs of groups of factors taken at once as in ``fast_eval.softplus_sum_``).
Written for the MLP decoder and MADE with tanh or ReLU hidden units; ``latent_gradient``
returns None for anything else, and the caller falls back to autograd. The same values and
gradients as autograd up to float rounding (tests/test_ais.py states the tolerance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast_eval import _group_size
from .independent import MLPDecoder
from .made import MADEDecoder

Gradient = Callable[[Tensor], tuple[Tensor, Tensor]]


def _derivative(act: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The activation's derivative as a function of its output h, where it is one."""
    if isinstance(act, nn.Tanh):
        return lambda h: 1 - h * h
    if isinstance(act, nn.ReLU):
        return lambda h: (h > 0).to(h.dtype)
    return None


def _sigmoid_softplus(logits: Tensor) -> tuple[Tensor, Tensor]:
    """sigmoid(l) (rows, D) and sum_d softplus(l_d) (rows,): softplus(l) = relu(l) - log t with
    t = sigmoid(|l|) = max(sigmoid(l), 1 - sigmoid(l)) in [1/2, 1], whose logs are taken a group
    of factors at a time (``fast_eval.softplus_sum_``)."""
    rows, d = logits.shape
    sig = torch.sigmoid(logits)
    t = torch.maximum(sig, 1 - sig)
    g = _group_size(d)
    return sig, logits.clamp_min(0).sum(-1) - t.view(rows, d // g, g).prod(-1).log_().sum(-1)


def _mlp(dec: MLPDecoder, x: Tensor) -> Gradient | None:
    mods = list(dec)
    linears, acts = mods[0:-1:2], mods[1:-1:2]
    derivs = [_derivative(a) for a in acts]
    if any(d is None for d in derivs):
        return None
    out = mods[-1]
    xw, xb = x @ out.weight, x @ out.bias  # sum_d x_d l_d = h . (x W) + x . b, per point

    def value_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
        s, b, dim = z.shape
        h = z.reshape(s * b, dim)
        hs = []
        for lin, act in zip(linears, acts, strict=True):
            h = act(torch.addmm(lin.bias, h, lin.weight.T))
            hs.append(h)
        sig, softplus = _sigmoid_softplus(torch.addmm(out.bias, h, out.weight.T))
        value = (h.view(s, b, -1) * xw).sum(-1) + xb - softplus.view(s, b)
        g = (xw - (sig @ out.weight).view(s, b, -1)).view(s * b, -1)  # (x - sigmoid(l)) W
        for lin, h_i, deriv in zip(linears[::-1], hs[::-1], derivs[::-1], strict=True):
            g = (g * deriv(h_i)) @ lin.weight
        return value, g.view(s, b, dim)
    return value_and_grad


def _made(dec: MADEDecoder, x: Tensor) -> Gradient | None:
    deriv = _derivative(dec.act)
    if deriv is None or dec.z_maps is None:
        return None
    first, out_x = dec.x_terms(x)
    weights = [dec._masked(i) for i in range(len(dec.layers) + 1)]
    xw, xo = x @ weights[-1], (x * out_x).sum(-1)  # x . l = h . (x W_o) + x . out_x [+ z . x V]
    xv = x @ dec.z_out.weight if dec.z_out is not None else None

    def value_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
        s, b, dim = z.shape
        zr = z.reshape(s * b, dim)
        h = dec.act(first.repeat(s, 1) + dec.z_maps[0](zr))
        hs = [h]
        for i in range(1, len(dec.layers)):
            a = F.linear(h, weights[i], dec.layers[i].bias)
            h = dec.act(a + dec.z_maps[i](zr) if i < len(dec.z_maps) else a)
            hs.append(h)
        logits = (F.linear(h, weights[-1]).view(s, b, -1) + out_x).view(s * b, -1)
        value = (h.view(s, b, -1) * xw).sum(-1) + xo
        if xv is not None:
            logits = logits + dec.z_out(zr)
            value = value + (z * xv).sum(-1)
        sig, softplus = _sigmoid_softplus(logits)
        value = value - softplus.view(s, b)
        gz = (xv - (sig @ dec.z_out.weight).view(s, b, -1)).view(s * b, -1) \
            if xv is not None else zr.new_zeros(zr.shape)
        g = (xw - (sig @ weights[-1]).view(s, b, -1)).view(s * b, -1)
        for i in range(len(dec.layers) - 1, -1, -1):
            g = g * deriv(hs[i])
            if i < len(dec.z_maps):
                gz = gz + g @ dec.z_maps[i].weight
            if i:
                g = g @ weights[i]
        return value, gz.view(s, b, dim)
    return value_and_grad


@torch.no_grad()
def latent_gradient(decoder: nn.Module, x: Tensor) -> Gradient | None:
    """z (S, B, Z) -> (log p(x|z) (S, B), its gradient in z (S, B, Z)) for a Bernoulli decoder
    with a hand-written pass, or None where there is none (the caller uses autograd)."""
    if type(decoder) is MLPDecoder:
        return _mlp(decoder, x)
    if type(decoder) is MADEDecoder:
        return _made(decoder, x)
    return None
