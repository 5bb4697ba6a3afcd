"""The throughput instruments (their figures are benchmarks, never asserted here)."""

import torch

from bench import throughput
from variants import create
from variants.core import VAE


def test_peak_tensor_memory_counts_live_storage():
    with throughput.PeakTensorMemory() as mem:
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB live
        del a, b
        c = torch.ones(500, 1000)  # 2 MB, after the others were freed
    assert mem.peak == 8_000_000 and mem.current == 2_000_000
    del c


def test_is_evaluation_memory_does_not_grow_with_k():
    assert throughput.eval_peak_memory(100, points=50) == \
        throughput.eval_peak_memory(2000, points=50)


def test_flop_model_counts_every_linear_layer():
    model = VAE(784, create("vae").latent(50), hidden=(200, 200))
    enc = 2 * (784 * 200 + 200 * 200 + 200 * 100)
    dec = 2 * (50 * 200 + 200 * 200 + 200 * 784)
    assert throughput.linear_flops(model.encoder) == enc
    assert throughput.step_flops(model, batch=100, samples=5) == 3 * (100 * enc + 500 * dec)


def test_hand_written_baseline_computes_the_negative_elbo():
    torch.manual_seed(0)
    base = throughput.HandWrittenVAE(20, (8,), 3).double()
    x = (torch.rand(4, 20, dtype=torch.float64) < 0.5).double()
    torch.manual_seed(1)
    loss = base.loss(x)
    torch.manual_seed(1)  # the same eps, computed with the core's formulas
    mu, logvar = base.enc(x).chunk(2, -1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    rec = torch.distributions.Bernoulli(logits=base.dec(z)).log_prob(x).sum(-1)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)),
        torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(loss, (kl - rec).mean())


def test_hand_written_made_baseline_is_the_same_model():
    """With our MADE decoder's weights copied in, the hand-written loop's loss is our -ELBO on the
    same noise: the baseline measures the same architecture, written independently."""
    torch.manual_seed(0)
    model = VAE(12, create("vae").latent(3), hidden=(8,), decoder="made",
                decoder_hidden=(10, 9)).double()
    base = throughput.HandWrittenMADEVAE(12, (8,), 3, (10, 9)).double()
    dec = model.decoder
    with torch.no_grad():
        for mine, theirs in zip(model.encoder, base.enc, strict=True):
            for name, p in mine.named_parameters():
                getattr(theirs, name).copy_(p)
        for mine, theirs in zip([*dec.layers, dec.out], base.lins, strict=True):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
        for mine, theirs in zip([dec.z_maps[0], dec.z_out], base.zs, strict=True):
            theirs.weight.copy_(mine.weight)
        base.direct.weight.copy_(dec.direct.weight)
    x = (torch.rand(5, 12, dtype=torch.float64) < 0.5).double()
    torch.manual_seed(1)
    loss = base.loss(x)
    torch.manual_seed(1)
    mu = model.encoder(x)[:, :3]  # the same randn_like draw as the baseline's
    eps = torch.randn_like(mu)
    terms = model(x, noise=eps[None])
    torch.testing.assert_close(loss, -terms.elbo().mean())


def test_conv_flop_model_by_hand():
    from variants.decoders import PixelCNNDecoder

    dec = PixelCNNDecoder(0, (4, 5), layers=2, channels=3, kernel=3)
    c, px = 3, 20
    per_layer = [2 * cin * 2 * c * (2 * 3 + 1 * 2) + 2 * (2 * c) * (2 * c) + 2 * c * c
                 for cin in (1, c)]  # vertical 2x3, horizontal 1x2, v->h 1x1, residual 1x1
    out = 2 * c * c + 2 * c * 1
    assert throughput.conv_flops(dec, px) == px * (sum(per_layer) + out)
