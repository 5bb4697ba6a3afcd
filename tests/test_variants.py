"""One contract for every registered variant, plus each variant's own truth."""

import itertools
import math

import pytest
import torch

import variants
from bench.contract import DECODERS, stable, tiny_run
from variants import annealing, gumbel, iwae
from variants.core import VAE
from variants.factory import build_vae
from variants.latents import CategoricalLatent

NAMES = list(variants.REGISTRY)
EVERY = [(n, d) for d in DECODERS for n in NAMES]


def run(tmp_path, variant, decoder="mlp", **hparams):
    return tiny_run(tmp_path, variant, decoder, **hparams)


def model_for(v, decoder="mlp", d=64, latent=8):
    """The model of variant v as the runner builds it: its latent, head and decoder options."""
    return build_vae(v, d, latent, hidden=(32,), **DECODERS[decoder][1])


@pytest.mark.parametrize("name, decoder", EVERY)
def test_loss_is_finite_with_gradients_for_every_parameter(name, decoder):
    torch.manual_seed(0)
    v = variants.create(name)
    model = model_for(v, decoder)
    x = (torch.rand(16, 64) < 0.4).float()
    loss, _ = v.loss(model, x, step=3, total_steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # a fixed parameter (BN-VAE's scale)
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if (name, decoder) == ("decoder-only", "mlp") and pname.endswith(".weight"):
            # no latent: the MLP's input is empty, its hidden layers see the constant tanh(0) = 0
            # at initialization, so only biases move on the first step
            continue
        assert p.grad.abs().sum() > 0 or p.numel() == 0, pname


@pytest.mark.parametrize("name, decoder", EVERY)
def test_neutral_setting_reproduces_vae_exactly(name, decoder, tmp_path):
    neutral = variants.REGISTRY[name].neutral
    if neutral is None:
        pytest.skip(f"{name} declares neutral = None: no setting of it is the plain vae (another "
                    "latent family, a normalization, extra decoder maps)")
    base, _ = run(tmp_path / "vae", "vae", decoder)
    same, _ = run(tmp_path / name, name, decoder, **neutral)
    assert stable(same) == stable(base)


@pytest.mark.parametrize("name, decoder", EVERY)
def test_same_seed_twice_gives_identical_metrics(name, decoder, tmp_path):
    a, _ = run(tmp_path / "a", name, decoder)
    b, _ = run(tmp_path / "b", name, decoder)
    assert stable(a) == stable(b)
    assert all(math.isfinite(a[k]) for k in ("neg_elbo", "nll_is", "kl", "mutual_info"))


@pytest.mark.parametrize("name, decoder", EVERY)
def test_reported_neg_elbo_is_the_unmodified_elbo(name, decoder, tmp_path):
    """Whatever the variant trained on, the reported -ELBO matches an independent computation
    of -E_q log p(x|z) + KL(q || p) with torch.distributions (within 4 Monte-Carlo SE)."""
    from torch.distributions import Bernoulli, Normal, OneHotCategorical, kl_divergence

    from bench.evaluation.metrics import evaluate
    from bench.grid.runner import load_run
    from variants.latents import GaussianLatent

    _, path = run(tmp_path, name, decoder)
    _, model, dataset = load_run(path)
    x, samples = dataset.test[:40].double(), 800 if decoder == "pixelcnn" else 4000
    reported = evaluate(model, x, is_samples=10, elbo_samples=samples)["neg_elbo"]
    torch.manual_seed(0)
    with torch.no_grad():
        params = model.posterior_params(x)
        if isinstance(model.latent, GaussianLatent):
            d = model.latent.dim
            mu, logvar = params[:, :d], params[:, d:]
            q = Normal(mu, torch.exp(0.5 * logvar))
            kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
            z = q.sample((samples,))
        else:
            logits = params.unflatten(-1, (model.latent.n_vars, model.latent.n_classes))
            q = OneHotCategorical(logits=logits)
            kl = kl_divergence(q, OneHotCategorical(logits=torch.zeros_like(logits))).sum(-1)
            z = q.sample((samples,)).flatten(-2)
        log_px = torch.cat([  # (S, B), in chunks of samples
            Bernoulli(logits=model.decoder(zc) if decoder == "mlp"
                      else model.decoder.logits(x, zc)).log_prob(x).sum(-1)
            for zc in z.split(250)])
    independent = (kl - log_px.mean(0)).mean().item()
    se = (log_px.std(0) / math.sqrt(samples)).pow(2).mean().sqrt().item() / math.sqrt(len(x))
    assert abs(reported - independent) < 4 * math.sqrt(2) * se + 1e-9


def test_beta_objective_differs_from_reported_elbo(tmp_path):
    _, path = run(tmp_path, "beta", beta=4.0)
    import pandas as pd

    row = pd.read_csv(path / "history.csv").iloc[-1]
    # loss = recon + 4 KL, -ELBO = recon + KL: they differ by 3 KL (train averages of one epoch)
    assert row["loss"] - row["neg_elbo"] == pytest.approx(3 * row["kl"], rel=1e-9)


@pytest.mark.parametrize("variant, setting, message", [
    ("beta", {"beta": -0.1}, "beta='-0.1'|beta=-0.1"),
    ("gumbel", {"tau0": 0}, "allowed: float > 0"),
    ("gumbel", {"tau_min": "-1"}, "allowed: float > 0"),
    ("free-bits", {"lambda": -1}, "allowed: float >= 0"),
    ("iwae", {"k": 0}, "allowed: int >= 1"),
    ("iwae", {"k": 2.5}, "allowed: int >= 1"),
    ("kl-anneal", {"cycles": 0}, "allowed: int >= 1"),
    ("kl-anneal", {"schedule": "cosine"}, "allowed: one of linear, sigmoid, cyclical"),
    ("kl-anneal", {"warmup": 1.5}, r"allowed: float in \[0, 1\]"),
    ("gumbel", {"hard": "maybe"}, "allowed: true or false"),
    ("vae", {"beta": 1}, "has no hyperparameter 'beta'; allowed: samples"),
    ("decoder-only", {"beta": 1}, "has no hyperparameter 'beta'; allowed: none"),
    ("beta", {"beta": "inf"}, "allowed: float >= 0"),
    ("free-bits", {"mode": "token"}, "allowed: one of batch, example, dimension"),
    ("aggressive", {"patience": 0}, "allowed: int >= 1"),
    ("bn-vae", {"gamma": 0}, "allowed: float > 0"),
    ("mmd", {"alpha": 1.5}, r"allowed: float in \[0, 1\]"),
    ("du-vae", {"p": 1}, r"allowed: float in \[0, 0.99\]"),
])
def test_hyperparameters_are_validated(variant, setting, message):
    with pytest.raises(variants.ConfigError, match=message):
        variants.create(variant, **setting)


# ---- schedules, by hand ---------------------------------------------------------------------
def test_linear_schedule_knots():
    assert annealing.linear(0, 100) == 0.0
    assert annealing.linear(50, 100) == 0.5
    assert annealing.linear(100, 100) == 1.0 and annealing.linear(1000, 100) == 1.0
    assert annealing.linear(0, 0) == 1.0  # no warm-up: the plain VAE


def test_sigmoid_schedule_knots():
    assert annealing.sigmoid(50, 100) == 0.5
    assert annealing.sigmoid(0, 100) == pytest.approx(1 / (1 + math.exp(5)))  # ~0.0067
    assert annealing.sigmoid(100, 100) == pytest.approx(1 / (1 + math.exp(-5)))


def test_cyclical_schedule_knots():
    # T = 400, M = 4: period 100; R = 0.5: ramp over steps 0..50 of each cycle, then 1.
    w = [annealing.cyclical(s, 400, 4, 0.5) for s in (0, 25, 50, 75, 99, 100, 125, 399)]
    assert w == [0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.5, 1.0]


def test_kl_anneal_variant_uses_the_schedule():
    v = variants.create("kl-anneal", schedule="cyclical", cycles=2, ratio=0.5)
    assert [v.kl_weight(s, 100) for s in (0, 25, 50, 75)] == [0.0, 1.0, 0.0, 1.0]
    v = variants.create("kl-anneal", schedule="linear", warmup=0.5)
    assert [v.kl_weight(s, 100) for s in (0, 25, 50, 99)] == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("name", ["kl-anneal", "bn-vae", "du-vae"])
def test_warmup_epochs_counts_the_ramp_in_epochs_whatever_the_run_length(name):
    # 10 epochs of 50 steps: half-way at step 250 in a run of 1,000 or of 100,000 steps, where
    # the fraction (kl-anneal 0.5, bn/du-vae 0.1) would give 500 or 10,000
    v = variants.create(name, warmup_epochs=10)
    v.steps_per_epoch = 50
    for total in (1_000, 100_000):
        assert [v.kl_weight(s, total) for s in (0, 250, 500, 600)] == [0.0, 0.5, 1.0, 1.0]
    assert variants.create(name).kl_weight(250, 100_000) < 0.1  # the fraction, when unset


def test_pretrained_encoder_ramps_warmup_epochs_after_its_autoencoder_phase():
    v = variants.create("pretrained-encoder", warmup_epochs=10)
    v.steps_per_epoch, v.ae_steps = 50, 300  # the phase ended at step 300
    assert [v.kl_weight(s, 100_000) for s in (300, 550, 800)] == [0.0, 0.5, 1.0]


def test_warmup_epochs_is_hashed_only_when_set():
    from bench.config import RunConfig
    from bench.identity import run_id
    base = RunConfig(variant="bn-vae")
    assert run_id(base) == run_id(RunConfig(variant="bn-vae", hparams={"warmup_epochs": 0}))
    assert run_id(base) != run_id(RunConfig(variant="bn-vae", hparams={"warmup_epochs": 10}))


def test_gumbel_temperature_schedule():
    # tau = max(0.5, exp(-1e-4 * t)), t rounded down to a multiple of 1000
    assert gumbel.temperature(999, 1.0, 0.5, 1e-4, 1000) == 1.0
    assert gumbel.temperature(1000, 1.0, 0.5, 1e-4, 1000) == pytest.approx(math.exp(-0.1))
    assert gumbel.temperature(10**6, 1.0, 0.5, 1e-4, 1000) == 0.5


# ---- IWAE -----------------------------------------------------------------------------------
def tiny_model_and_data(latent, seed=0):
    torch.manual_seed(seed)
    model = VAE(64, latent, hidden=(32,)).double()
    from bench.data.builtin import load

    return model, load("digits").test.double()


def test_iwae_bound_matches_direct_computation_from_the_same_samples():
    from variants.latents import GaussianLatent

    model, x = tiny_model_and_data(GaussianLatent(4))
    v = variants.create("iwae", k=7)
    g = torch.Generator().manual_seed(0)
    loss, terms = v.loss(model, x[:50], 0, 1, g)
    w = terms.log_weights.detach().numpy()  # (7, 50)
    import numpy as np

    direct = -np.mean(np.log(np.mean(np.exp(w), axis=0)))
    assert loss.item() == pytest.approx(direct, rel=1e-12)


def test_iwae_log_q_from_the_noise_has_the_value_and_gradient_of_log_q_from_z():
    # The IWAE objective takes log q(z|x) from the reparameterization noise; the straightforward
    # log N(z; mu, sigma^2) of the same samples must give the same loss and the same gradients.
    import dataclasses

    from variants.latents import GaussianLatent

    model, x = tiny_model_and_data(GaussianLatent(4))
    v = variants.create("iwae", k=7)
    grads = []
    for from_noise in (True, False):
        model.zero_grad()
        loss, terms = v.loss(model, x[:50], 0, 1, torch.Generator().manual_seed(3))
        if not from_noise:
            terms = dataclasses.replace(terms, noise=None)
            loss = v.objective(terms, 0, 1)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if from_noise:
            loss_noise = loss.detach()
    torch.testing.assert_close(loss_noise, loss.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_iwae_bound_at_k_is_above_the_bound_at_1_on_average():
    from variants.latents import GaussianLatent

    model, x = tiny_model_and_data(GaussianLatent(4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lw = model(x, 50, g).log_weights  # (50, B)
    l1 = lw.mean(0)  # the average of 50 one-sample bounds
    l50 = iwae.iwae_bound(lw)
    diff = l50 - l1  # >= 0 by Jensen for every point; averaged it must be clearly positive
    assert (diff >= -1e-12).all() and diff.mean() > 0


# ---- Gumbel-Softmax: exact enumeration ------------------------------------------------------
def test_enumeration_matches_brute_force():
    model, x = tiny_model_and_data(CategoricalLatent(2, 3))
    x = x[:5]
    terms = []
    for a, b in itertools.product(range(3), repeat=2):
        z = torch.zeros(1, 1, 6, dtype=torch.float64)
        z[0, 0, a], z[0, 0, 3 + b] = 1, 1
        terms.append(model.log_likelihood(x, z)[0] - 2 * math.log(3))
    ref = torch.logsumexp(torch.stack(terms), 0)
    torch.testing.assert_close(model.exact_log_marginal(x), ref.detach())


def test_gumbel_is_estimate_converges_to_the_enumerated_log_likelihood():
    from bench.evaluation import metrics

    model, x = tiny_model_and_data(CategoricalLatent(2, 3), seed=3)
    with torch.no_grad():
        q = model.encode(x)
        exact = -model.exact_log_marginal(x)
        gaps = {}
        for k in (1, 10, 1000):
            nll, _ = metrics.nll_is_points(model, q, x, k, seed=0)
            gaps[k] = metrics.mean_se(nll - exact)
    gap, se = gaps[1000]
    assert abs(gap) <= 3 * se + 1e-9  # within 3 SE of the truth at K = 1000
    assert gaps[1][0] > gaps[10][0] > abs(gap)  # and approaching it as K grows
