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
