"""Analytic KL and log-densities of the latent families against torch.distributions and
Monte Carlo."""

import math

import pytest
import torch
from torch.distributions import Categorical, Normal, OneHotCategorical, kl_divergence

from variants.latents import CategoricalLatent, GaussianLatent


def gaussian_posterior(b=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(b, 2 * d, generator=g, dtype=torch.float64)
    return GaussianLatent(d).posterior(params)


def test_gaussian_kl_matches_torch_distributions():
    q = gaussian_posterior()
    ref = kl_divergence(Normal(q.mu, torch.exp(0.5 * q.logvar)),
                        Normal(torch.zeros_like(q.mu), torch.ones_like(q.mu)))
    torch.testing.assert_close(q.kl(), ref, rtol=1e-12, atol=1e-12)  # same closed form, float64


def test_gaussian_kl_matches_monte_carlo():
    # KL = E_q[log q(z) - log p(z)]; with n samples the estimate has standard error sd/sqrt(n).
    q = gaussian_posterior(b=3, d=4)
    z = q.rsample(200_000, torch.Generator().manual_seed(1))
    diff = q.log_prob(z) - q.prior_log_prob(z)  # (n, B)
    mc, se = diff.mean(0), diff.std(0) / math.sqrt(len(diff))
    assert torch.all((mc - q.kl().sum(-1)).abs() < 4 * se)


def test_gaussian_log_prob_and_pairwise_agree_with_normal():
    q = gaussian_posterior(b=6, d=3)
    z = q.sample(4, torch.Generator().manual_seed(2))
    ref = Normal(q.mu, torch.exp(0.5 * q.logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z), ref, rtol=1e-12, atol=1e-12)
    pair = q.pairwise_log_prob(z[0])  # (A=6 samples, B=6 points)
    ref_pair = Normal(q.mu, torch.exp(0.5 * q.logvar)).log_prob(z[0][:, None]).sum(-1)
    torch.testing.assert_close(pair, ref_pair, rtol=1e-10, atol=1e-10)


def test_pairwise_log_prob_of_narrow_posteriors_far_from_zero_is_exact():
    # sigma 1e-13 at |mu| up to 80 (an MMD encoder on synthetic-lstm): the matmul expansion's
    # terms are ~1e29 and cancel to ~1; its rows fall back to the direct form, which must agree
    # with torch.distributions' (z - mu) / sigma to 1e-9 nats, and the own point's density must
    # stay the largest (it was lost to cancellation: I_q came out as -2e7 nats)
    g = torch.Generator().manual_seed(4)
    mu = 80 * torch.rand(50, 1, generator=g, dtype=torch.float64) - 40
    q = GaussianLatent(1).posterior(torch.cat([mu, torch.full_like(mu, -60.0)], -1))
    z = q.sample(1, g)[0]
    ref = Normal(q.mu, torch.exp(0.5 * q.logvar)).log_prob(z[:, None]).sum(-1)
    pair = q.pairwise_log_prob(z)
    own = pair.diagonal()
    torch.testing.assert_close(own, ref.diagonal(), rtol=0, atol=1e-9)
    assert torch.all(pair <= own[:, None])
    far = ref < -1e6  # the others, many sigmas away: hugely negative, as the reference
    assert torch.all(pair[far] < -1e6)


def test_pairwise_log_prob_keeps_the_matmul_form_where_it_is_accurate():
    # a well-conditioned posterior is computed exactly as before the fallback existed (so the
    # committed records' mutual information is unchanged bit for bit)
    q = gaussian_posterior(b=40, d=8)
    z = q.sample(1, torch.Generator().manual_seed(5))[0]
    prec = torch.exp(-q.logvar)
    quad = (z**2) @ prec.T - 2 * z @ (q.mu * prec).T + (q.mu**2 * prec).sum(-1)
    expanded = -0.5 * (quad + (q.logvar + math.log(2 * math.pi)).sum(-1))
    assert torch.equal(q.pairwise_log_prob(z), expanded)


def test_mutual_info_of_distinct_point_masses_is_log_n():
    # every encoder a near point mass at its own mean: I_q(x; z) = log N, the estimator's bound
    from bench.evaluation.metrics import mutual_info
    mu = torch.linspace(-30, 30, 200, dtype=torch.float64)[:, None]
    q = GaussianLatent(1).posterior(torch.cat([mu, torch.full_like(mu, -50.0)], -1))
    mi = mutual_info(q, torch.Generator().manual_seed(0))
    assert abs(mi["mutual_info"] - math.log(200)) < 1e-9


def categorical_posterior(b=5, n=3, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CategoricalLatent(n, c).posterior(torch.randn(b, n * c, generator=g,
                                                        dtype=torch.float64))


def test_categorical_kl_matches_torch_distributions():
    q = categorical_posterior()
    uniform = Categorical(logits=torch.zeros_like(q.log_probs))
    ref = kl_divergence(Categorical(logits=q.log_probs), uniform)
    torch.testing.assert_close(q.kl(), ref, rtol=1e-12, atol=1e-12)


def test_categorical_discrete_samples_have_the_right_log_prob():
    q = categorical_posterior()
    z = q.sample(3, torch.Generator().manual_seed(0))
    assert set(z.unique().tolist()) == {0.0, 1.0}
    ref = OneHotCategorical(logits=q.log_probs).log_prob(z.unflatten(-1, (3, 4))).sum(-1)
    torch.testing.assert_close(q.log_prob(z), ref)
    torch.testing.assert_close(q.pairwise_log_prob(z[0]).diagonal(), ref[0])


def test_categorical_sample_frequencies_match_probabilities():
    q = categorical_posterior(b=1, n=1, c=4)
    z = q.sample(100_000, torch.Generator().manual_seed(3))
    freq = z.mean(0)[0]
    p = q.log_probs.exp()[0, 0]
    se = (p * (1 - p) / 100_000).sqrt()
    assert torch.all((freq - p).abs() < 4 * se)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_is_on_the_simplex_and_straight_through_is_one_hot(hard):
    q = categorical_posterior()
    y = q.rsample(2, torch.Generator().manual_seed(0), tau=0.5, hard=hard).unflatten(-1, (3, 4))
    torch.testing.assert_close(y.sum(-1), torch.ones(y.shape[:-1], dtype=y.dtype))
    assert (y.max(-1).values == 1).all() == hard
