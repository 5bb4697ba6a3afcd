"""The hand-written baselines that throughput is a ratio against: minimal PyTorch training
loops for the MLP, MADE and PixelCNN decoders, deliberately independent of ``variants.core``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from variants.decoders import made_masks

#: the decoders `vae-bench throughput --decoder` measures, at CPU-sized defaults
DECODER_SETUPS = {
    "mlp": {},
    "made": {"decoder": "made", "decoder_hidden": (500,)},
    "pixelcnn": {"decoder": "pixelcnn", "image_shape": (28, 28), "layers": 3, "channels": 16},
}


class HandWrittenVAE(nn.Module):
    """The baseline: the plainest VAE step one would write by hand for the same model.

    Gaussian latent of size d_z (k > 1: the k-sample IWAE bound), or with ``categorical=(N, C)``
    the Gumbel-Softmax VAE through ``F.gumbel_softmax`` and the categorical KL.
    """

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_z: int, k: int = 1,
                 categorical: tuple[int, int] | None = None):
        super().__init__()
        self.k, self.categorical = k, categorical
        d_enc = 2 * d_z if categorical is None else categorical[0] * categorical[1]
        enc, dec, w = [], [], d_in
        for h in hidden:
            enc += [nn.Linear(w, h), nn.Tanh()]
            w = h
        self.enc = nn.Sequential(*enc, nn.Linear(w, d_enc))
        w = d_z if categorical is None else d_enc
        for h in reversed(hidden):
            dec += [nn.Linear(w, h), nn.Tanh()]
            w = h
        self.dec = nn.Sequential(*dec, nn.Linear(w, d_in))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.categorical is not None:
            logits = self.enc(x).unflatten(-1, self.categorical)
            y = F.gumbel_softmax(logits, tau=1.0).flatten(-2)
            rec = F.binary_cross_entropy_with_logits(self.dec(y), x, reduction="sum") / len(x)
            logp = torch.log_softmax(logits, -1)
            kl = (logp.exp() * (logp + math.log(self.categorical[1]))).sum() / len(x)
            return rec + kl
        if self.k > 1:
            mu, logvar = self.enc(x).chunk(2, dim=-1)
            std = torch.exp(0.5 * logvar)
            eps = torch.randn(self.k, *mu.shape)
            z = mu + std * eps
            log_px = -F.binary_cross_entropy_with_logits(
                self.dec(z), x.expand(self.k, *x.shape), reduction="none").sum(-1)
            log_w = log_px - 0.5 * (z**2).sum(-1) + 0.5 * (eps**2 + logvar).sum(-1)
            return -(torch.logsumexp(log_w, 0) - math.log(self.k)).mean()
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.dec(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
        return rec + kl


def tanh_encoder(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    """A plain tanh MLP, the hand-written baselines' encoder."""
    layers, w = [], d_in
    for h in hidden:
        layers += [nn.Linear(w, h), nn.Tanh()]
        w = h
    return nn.Sequential(*layers, nn.Linear(w, d_out))


class HandWrittenMADEVAE(nn.Module):
    """The baseline for the MADE decoder, written as one would by hand: an MLP encoder and a
    MADE whose every layer is a masked Linear applied to the full input (Germain et al. 2015),
    z added to the first hidden layer and the output (the decoder's base conditioning). Masks
    from ``made_masks``, so it is the same architecture; nothing of ``variants.decoders`` runs
    in it."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_z: int, dec_hidden: tuple[int, ...]):
        super().__init__()
        self.enc = tanh_encoder(d_in, hidden, 2 * d_z)
        widths = (d_in, *dec_hidden, d_in)
        self.lins = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.zs = nn.ModuleList(nn.Linear(d_z, b, bias=False) for b in (widths[1], d_in))
        self.direct = nn.Linear(d_in, d_in, bias=False)
        masks, direct = made_masks(d_in, dec_hidden, -1)
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m)
        self.register_buffer("direct_mask", direct)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        h = x
        last = len(self.lins) - 1
        for i, lin in enumerate(self.lins):
            h = F.linear(h, lin.weight * getattr(self, f"mask{i}"), lin.bias)
            if i in (0, last):
                h = h + self.zs[0 if i == 0 else 1](z)
            h = torch.tanh(h) if i < last else h
        logits = h + F.linear(x, self.direct.weight * self.direct_mask)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
        return rec + kl


class HandWrittenPixelCNNVAE(nn.Module):
    """The baseline for the PixelCNN decoder: the minimal loop (encoder, reparameterization,
    BCE on the logits, analytic KL) around a ``PixelCNNDecoder`` of the same size. The
    convolutions are the work here; how well they run is judged against the conv peak."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_z: int, **decoder_kwargs):
        super().__init__()
        from variants.decoders import PixelCNNDecoder

        self.enc = tanh_encoder(d_in, hidden, 2 * d_z)
        kw = {k: v for k, v in decoder_kwargs.items() if k != "decoder"}
        self.dec = PixelCNNDecoder(d_z, kw.pop("image_shape"), **kw)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.dec.logits(x, z[None])[0]
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
        return rec + kl


def hand_written_model(decoder: str, d_in: int, hidden: tuple[int, ...], latent: int, k: int,
                       categorical) -> nn.Module:
    kwargs = DECODER_SETUPS[decoder]
    if decoder == "made":
        return HandWrittenMADEVAE(d_in, hidden, latent, kwargs["decoder_hidden"])
    if decoder == "pixelcnn":
        return HandWrittenPixelCNNVAE(d_in, hidden, latent, **kwargs)
    return HandWrittenVAE(d_in, hidden, latent, k, categorical)
