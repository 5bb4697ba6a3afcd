"""pytest-benchmark suite (`make bench-speed`): train steps of every variant and of the two
hand-written baseline loops (default Adam; the fused Adam training uses), and the IS evaluator.
Figures only; nothing here passes or fails on speed. Compare `ours` with the hand-written loops
within one saved run (same process, same machine); `vae-bench throughput` interleaves them."""

import pytest
import torch

import variants
from bench.evaluation.metrics import encode, nll_is_points
from bench.throughput import HandWrittenVAE
from bench.training.trainer import make_optimizer, train_step
from variants.core import VAE
from variants.factory import build_vae
from variants.latents import GaussianLatent

BATCH, D, HIDDEN, Z = 100, 784, (200, 200), 50


@pytest.fixture(scope="module")
def x():
    return (torch.rand(BATCH, D, generator=torch.Generator().manual_seed(0)) < 0.3).float()


@pytest.mark.parametrize("name", list(variants.REGISTRY))
def test_train_step_ours(benchmark, name, x):
    v = variants.create(name)
    model = build_vae(v, D, Z, hidden=HIDDEN)
    opt = make_optimizer(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    benchmark.group = "train step, batch 100, 784-200-200-50"
    benchmark.pedantic(train_step, args=(model, v, opt, x, 0, 1, gen), rounds=30,
                       iterations=5, warmup_rounds=2)


@pytest.mark.parametrize("optimizer", ["default-adam", "fused-adam"])
def test_train_step_hand_written(benchmark, x, optimizer):
    model = HandWrittenVAE(D, HIDDEN, Z)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4) if optimizer == "default-adam" \
        else make_optimizer(model.parameters(), lr=1e-4)

    def step():
        loss = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.group = "train step, batch 100, 784-200-200-50"
    benchmark.pedantic(step, rounds=30, iterations=5, warmup_rounds=2)


@pytest.mark.parametrize("k", [1000, 10000])
def test_is_evaluation(benchmark, k):
    model = VAE(D, GaussianLatent(Z), hidden=HIDDEN).eval()
    xs = (torch.rand(100, D, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with torch.no_grad():
        q = encode(model, xs)
        benchmark.group = "IS evaluation, 100 points"
        benchmark.extra_info["point_samples"] = 100 * k
        benchmark.pedantic(nll_is_points, args=(model, q, xs, k, 0), rounds=3, iterations=1,
                           warmup_rounds=1)
