"""Two stochastic layers (variants.hierarchy) against exact answers: the two-layer
linear-Gaussian model, whose log p(x) is closed-form, and whose exact posterior the model can
represent when the layers are chosen so that it is diagonal."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import multivariate_normal

from bench.config import RunConfig, apply_overrides, resolve
from bench.evaluation import metrics
from bench.grid.runner import execute
from bench.training.trainer import Trainer
from variants import create
from variants.errors import ConfigError
from variants.hierarchy import TwoLayerPosterior, TwoLayerVAE
from variants.latents import GaussianLatent, GaussianPosterior

F64 = torch.float64


def linear_model(d_obs, d1, d2, hidden=(), latent2_hidden=(), seed=0):
    """A two-layer model made linear-Gaussian: p(h1|h2) = N(A h2 + a, diag(exp(c))) (the
    log-variance rows of the top-down layer have zero weights), p(x|h1) = N(W h1 + b, s^2 I)."""
    torch.manual_seed(seed)
    model = TwoLayerVAE(d_obs, GaussianLatent(d1), d2, latent2_hidden=latent2_hidden,
                        hidden=hidden, decoder_hidden=(), likelihood="gaussian").double()
    with torch.no_grad():
        model.top_down[0].weight[d1:] = 0.0
        model.top_down[0].bias[d1:] = torch.linspace(-1.0, 0.5, d1, dtype=F64)
        model.decoder[0].weight.mul_(3.0)
        model.log_var.fill_(2 * math.log(0.6))
    return model


def parameters(model):
    d1 = model.latent.d1
    td, dec = model.top_down[0], model.decoder[0]
    return (td.weight[:d1].detach(), td.bias[:d1].detach(), torch.exp(td.bias[d1:]).detach(),
            dec.weight.detach(), dec.bias.detach(), torch.exp(model.log_var).item())


def sample_data(model, n, seed=1):
    a_mat, a, var1, w, b, s2 = parameters(model)
    g = torch.Generator().manual_seed(seed)
    h2 = torch.randn(n, a_mat.shape[1], generator=g, dtype=F64)
    h1 = h2 @ a_mat.T + a + var1.sqrt() * torch.randn(n, len(a), generator=g, dtype=F64)
    return h1 @ w.T + b + math.sqrt(s2) * torch.randn(n, len(b), generator=g, dtype=F64)


def test_exact_log_marginal_against_scipy_joint_gaussian():
    # The reference builds the joint of (h2, h1, x) as one linear map of independent standard
    # normals and takes the x block of its covariance: a different route to the same p(x).
    model = linear_model(d_obs=6, d1=3, d2=2)
    a_mat, a, var1, w, b, s2 = [t.numpy() if torch.is_tensor(t) else t for t in parameters(model)]
    d2, d1, d = a_mat.shape[1], len(a), len(b)
    lin = np.zeros((d2 + d1 + d, d2 + d1 + d))  # rows: h2, h1, x; columns: e2, e1, e0
    lin[:d2, :d2] = np.eye(d2)
    lin[d2:d2 + d1, :d2] = a_mat
    lin[d2:d2 + d1, d2:d2 + d1] = np.diag(np.sqrt(var1))
    lin[d2 + d1:] = w @ lin[d2:d2 + d1]
    lin[d2 + d1:, d2 + d1:] += math.sqrt(s2) * np.eye(d)
    cov = (lin @ lin.T)[d2 + d1:, d2 + d1:]
    x = sample_data(model, 40)
    ref = multivariate_normal(mean=w @ a + b, cov=cov).logpdf(x.numpy())
    np.testing.assert_allclose(model.exact_log_marginal(x).numpy(), ref, rtol=1e-10)


def test_exact_log_marginal_against_numerical_integration():
    # One unit per layer: log p(x) = log of a double integral over (h1, h2), by quadrature.
    model = linear_model(d_obs=2, d1=1, d2=1, seed=3)
    (a_mat, a, var1, w, b, s2) = parameters(model)
    x = sample_data(model, 3, seed=4)
    w0, w1, b0, b1 = w[0, 0].item(), w[1, 0].item(), b[0].item(), b[1].item()
    slope, shift, v1 = a_mat[0, 0].item(), a[0].item(), var1[0].item()

    def normal(u, mean, var):
        return math.exp(-0.5 * (u - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)

    for point, exact in zip(x.tolist(), model.exact_log_marginal(x), strict=True):
        def density(h1, h2, point=point):
            px = normal(point[0], w0 * h1 + b0, s2) * normal(point[1], w1 * h1 + b1, s2)
            return px * normal(h1, slope * h2 + shift, v1) * normal(h2, 0.0, 1.0)

        value, _ = integrate.dblquad(density, -9, 9, -25, 25, epsabs=1e-14, epsrel=1e-10)
        assert math.log(value) == pytest.approx(exact.item(), abs=1e-6)


def exact_posterior_model():
    """d1 = 2, d2 = 1, observations 3, chosen so that the exact posterior
    p(h1, h2 | x) = p(h1 | x) p(h2 | h1) is a diagonal Gaussian in h1 with mean linear in x and a
    Gaussian in h2 with mean linear in h1 and constant variance: A's second row is 0 (Cov(h1)
    diagonal) and W's columns are orthogonal (W^T W diagonal). The encoder and q(h2|h1) are then
    set to it in closed form."""
    model = TwoLayerVAE(3, GaussianLatent(2), 1, latent2_hidden=(), hidden=(), decoder_hidden=(),
                        likelihood="gaussian").double()
    alpha, a, var1 = 1.3, torch.tensor([0.4, -0.2], dtype=F64), torch.tensor([0.5, 0.8], dtype=F64)
    w = torch.tensor([[1.5, 0.0], [0.0, -0.7], [0.0, 0.0]], dtype=F64)
    b, s2 = torch.tensor([0.1, 0.2, -0.3], dtype=F64), 0.36
    cov1 = torch.tensor([alpha**2, 0.0], dtype=F64) + var1  # diagonal Cov(h1)
    post_var = 1 / (1 / cov1 + (w**2).sum(0) / s2)
    lam = 1 + alpha**2 / var1[0]  # precision of p(h2 | h1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        td, enc, bu = model.top_down[0], model.encoder[0], model.bottom_up[0]
        td.weight[0, 0], td.bias[:2], td.bias[2:] = alpha, a, var1.log()
        model.decoder[0].weight.copy_(w)
        model.decoder[0].bias.copy_(b)
        model.log_var.fill_(math.log(s2))
        # E[h1 | x] = post_var (W^T (x - b) / s^2 + a / cov1)
        enc.weight[:2] = (post_var[:, None] * w.T) / s2
        enc.bias[:2] = post_var * (-(w.T @ b) / s2 + a / cov1)
        enc.bias[2:] = post_var.log()
        # E[h2 | h1] = alpha / (var1_0 lam) (h1_0 - a_0), Var = 1 / lam
        bu.weight[0, 0] = alpha / (var1[0] * lam)
        bu.bias[0] = -alpha * a[0] / (var1[0] * lam)
        bu.bias[1] = -torch.log(lam)
    x = torch.tensor([[0.3, -1.0, 0.2], [2.0, 0.5, -0.6], [-1.2, 0.0, 0.9]], dtype=F64)
    return model, x


def test_is_with_the_exact_posterior_is_exact_at_k1():
    # q = p(h1, h2 | x): every weight p(x, h1, h2) / q(h1, h2 | x) equals p(x), so the IS
    # estimate is exact with one sample - through the evaluator and through the training terms.
    model, x = exact_posterior_model()
    exact = model.exact_log_marginal(x)
    q = metrics.encode(model, x)
    log_w = metrics.is_log_weights(model, q, x, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_w, exact.expand_as(log_w), rtol=0, atol=1e-10)
    nll, _ = metrics.nll_is_points(model, q, x, 1, seed=0)
    torch.testing.assert_close(nll, -exact, rtol=0, atol=1e-10)
    terms = model(x, n_samples=7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(terms.log_weights, exact.expand(7, -1), rtol=0, atol=1e-10)
    # the evaluator reports the estimator's own error as zero
    out = metrics.evaluate(model, x, is_samples=1)
    assert abs(out["is_gap"]) < 1e-10 and out["nll_exact"] == pytest.approx(-exact.mean().item())


def small_model(seed, n_points):
    """A small float64 two-layer model with hidden layers everywhere, and n binary points."""
    torch.manual_seed(seed)
    model = TwoLayerVAE(10, GaussianLatent(4), 3, latent2_hidden=(8,), hidden=(12,)).double()
    return model, (torch.rand(n_points, 10, dtype=F64) < 0.5).double()


def test_training_terms_agree_with_the_evaluation_interface():
    # The training pass (everything from the noise) and the posterior's methods at the same
    # samples: log q, log p, the per-unit KL estimate and the reparameterized log q agree.
    model, x = small_model(0, 6)
    terms = model(x, n_samples=5, generator=torch.Generator().manual_seed(2))
    q = terms.posterior
    torch.testing.assert_close(terms.log_qz, q.log_prob(terms.z), rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.log_pz, q.prior_log_prob(terms.z), rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.kl, q.kl(terms.z), rtol=0, atol=1e-10)
    torch.testing.assert_close(q.log_prob_reparameterized(terms.z, terms.noise), terms.log_qz,
                               rtol=0, atol=1e-10)
    assert terms.kl.shape == (6, 7)


def test_kl_estimate_is_unbiased_for_the_two_layer_kl():
    # E_q[log q(h1, h2 | x) - log p(h1, h2)] by many plain samples against the mean of the
    # per-unit estimate: equal within 4 standard errors.
    model, x = small_model(1, 3)
    with torch.no_grad():
        q = model.encode(x)
        z = q.sample(20000, torch.Generator().manual_seed(3))
        mc = q.log_prob(z) - q.prior_log_prob(z)
        est = q.kl(z[:2000]).sum(-1)
    se = mc.std(0) / math.sqrt(len(mc))
    assert torch.all((mc.mean(0) - est).abs() < 4 * se + 4 * mc.std(0) / math.sqrt(2000))


@pytest.fixture(scope="module")
def trained_proposal():
    """A fixed linear-Gaussian 2-layer model whose Cov(h1 | x) is not diagonal, and its q
    networks (an encoder with a hidden layer; q(h2|h1) linear, the exact family for this model)
    trained on its samples by the ELBO of the training path."""
    model = linear_model(d_obs=6, d1=3, d2=2, hidden=(32,), seed=5)
    x = sample_data(model, 2000, seed=6)
    variant = create("vae")
    opt = torch.optim.Adam(model.encoder_parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(7)
    for step in range(1500):
        batch = x[(step * 100) % 2000:][:100]
        loss, _ = variant.loss(model, batch, step, 1500, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, sample_data(model, 300, seed=8)


def test_trained_proposal_is_estimate_within_3_se_of_exact(trained_proposal):
    model, x = trained_proposal
    m = metrics.evaluate(model, x, is_samples=1000, seed=0)
    assert abs(m["nll_is"] - m["nll_exact"]) <= 3 * m["nll_is_se"]
    assert -3 * m["is_gap_se"] <= m["is_gap"] <= 0.05  # IS is biased up, by little at K = 1000
    assert m["nll_exact"] <= m["neg_elbo"]  # the ELBO (its KL estimated) stays a bound
    assert len(m["active_units_by_layer"]) == 2


def test_active_units_per_layer_count_planted_units():
    # h1: units 0 and 1 vary over x, unit 2 does not; h2 unit 0 follows h1 unit 0, h2 unit 1
    # follows nothing: 2 + 1 active units.
    n = 400
    g = torch.Generator().manual_seed(0)
    mu = torch.zeros(n, 3, dtype=F64)
    mu[:, :2] = torch.randn(n, 2, generator=g, dtype=F64)
    bottom_up = torch.nn.Linear(3, 4).double()
    top_down = torch.nn.Linear(2, 6).double()
    with torch.no_grad():
        bottom_up.weight.zero_()
        bottom_up.bias.zero_()
        bottom_up.weight[0, 0] = 1.0
        bottom_up.bias[2:] = -4.0  # small conditional variance
    q = TwoLayerPosterior(GaussianPosterior(mu, torch.full_like(mu, -4.0)), bottom_up, top_down,
                          2)
    out = metrics.active_units(q, torch.Generator().manual_seed(1))
    assert out["active_units_by_layer"] == [2, 1]
    assert out["active_units"] == 3


def test_mutual_information_terms_reduce_to_the_first_layer():
    # I(x; h1, h2) = I(x; h1): log q(z_a | x_b) - log q(z_a | x_a) does not depend on h2.
    model, x = small_model(2, 9)
    with torch.no_grad():
        q = model.encode(x)
        z = q.sample(1, torch.Generator().manual_seed(0))[0]
        two = q.pairwise_log_prob(z) - q.log_prob(z)[:, None]
        one = q.q1.pairwise_log_prob(z[:, :4]) - q.q1.log_prob(z[:, :4])[:, None]
    torch.testing.assert_close(two, one, rtol=0, atol=1e-10)


def test_reset_of_the_decoder_covers_the_top_down_network():
    model, x = small_model(3, 2)
    trainer = Trainer.for_step(model, torch.optim.Adam(model.parameters()), None, 0, 1, x)
    trainer.remember_initial()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    trainer.reset("decoder")
    after = model.state_dict()
    for name, value in before.items():
        restored = torch.equal(after[name], value)
        assert restored == name.startswith(("decoder.", "top_down.")), name


def two_layer_config(variant, **extra):
    return apply_overrides(RunConfig(), {
        "variant": variant, "dataset": "digits", "train.epochs": 2, "model.hidden": "32",
        "model.latent_dim": 8, "model.latent2_dim": 4, "model.latent2_hidden": "16",
        "eval.is_samples": 20, **extra})


@pytest.mark.parametrize("variant,hp", [
    ("vae", {"samples": 2}), ("beta", {}), ("kl-anneal", {}), ("free-bits", {}),
    ("iwae", {"k": 3}), ("aggressive", {"max_inner": 3}), ("pretrained-encoder", {}),
    ("skip-vae", {"model.decoder_hidden": "32,32"})])
def test_variants_train_and_evaluate_with_two_layers(tmp_path, variant, hp):
    run = execute(two_layer_config(variant, **hp), tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "ok"
    assert math.isfinite(m["nll_is"]) and m["nll_is"] <= m["neg_elbo"] + 1.0
    assert len(m["active_units_by_layer"]) == 2 and len(m["kl_per_dim"]) == 12
    assert sum(m["active_units_by_layer"]) == m["active_units"]


@pytest.mark.parametrize("variant", ["gumbel", "decoder-only", "bn-vae", "delta-vae", "du-vae",
                                     "mmd"])
def test_variants_without_a_two_layer_meaning_are_refused_in_one_line(variant):
    with pytest.raises(ConfigError) as err:
        resolve(two_layer_config(variant))
    msg = str(err.value)
    assert "\n" not in msg and "two stochastic layers" in msg and "allowed: vae, beta" in msg


def test_latent2_hidden_without_a_second_layer_is_refused():
    cfg = apply_overrides(RunConfig(), {"model.latent2_hidden": "64"})
    with pytest.raises(ConfigError, match="no second stochastic layer"):
        resolve(cfg)
