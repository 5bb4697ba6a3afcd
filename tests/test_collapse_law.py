"""Lucas et al. 2019's linear-VAE collapse law: the closed form (bench.evaluation.ppca) against a direct
computation, and trained linear VAEs against it on a planted spectrum (the linear-gaussian
data: eigenvalues 45.9, 35.9, 24.7, 13.2, 9.2, then ~0.27)."""

import json
import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from bench.config import RunConfig, apply_overrides
from bench.data import builtin as data
from bench.evaluation import ppca
from bench.grid.runner import execute


def test_the_closed_form_is_the_ppca_maximum_likelihood():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    k, s2 = 3, 0.8
    mean, lam, u = ppca.spectrum(x)
    w = u[:, :k] * np.sqrt(np.maximum(lam[:k] - s2, 0))  # Tipping & Bishop's W, R = I
    cov = w @ w.T + s2 * np.eye(6)
    direct = -multivariate_normal(mean, cov).logpdf(x).mean()
    assert ppca.law(x, x, k, s2)["ppca_nll_train"] == pytest.approx(direct, rel=1e-12)
    # the maximum: any other W of the same rank does worse
    for _ in range(5):
        other = w + 0.05 * rng.normal(size=w.shape)
        assert -multivariate_normal(mean, other @ other.T + s2 * np.eye(6)).logpdf(x).mean() \
            > direct
    # collapse: exactly the directions with lambda_i <= sigma^2 among the k kept
    assert ppca.law(x, x, k, lam[1])["collapsed_predicted"] == 2  # lambda_2 = s2 collapses
    assert ppca.law(x, x, 8, lam[0] + 1)["collapsed_predicted"] == 8


@pytest.mark.parametrize("obs_var, collapsed", [(60.0, 5), (18.0, 2), (3.0, 0)])
def test_a_trained_linear_vae_collapses_exactly_the_units_the_law_predicts(
        tmp_path, obs_var, collapsed):
    """Counts exactly; the trained model's exact test log-likelihood within 0.05 nats of the
    optimum's, its test ELBO (100 samples) within 0.25 nats (float64; He et al.'s decay on
    plateau until its 3rd halving)."""
    cfg = apply_overrides(RunConfig(), {
        "dataset": "linear-gaussian", "dtype": "float64", "model.hidden": "",
        "model.obs_var": obs_var, "train.lr": 0.01, "train.epochs": 300,
        "train.lr_decay_patience": 8, "train.max_decays": 3,
        "eval.is_samples": 50, "eval.elbo_samples": 100})
    m = json.loads((execute(cfg, tmp_path) / "metrics.json").read_text())
    assert m["collapsed_predicted"] == collapsed == m["collapsed_measured"] \
        == m["collapsed_directions"]
    assert m["stop_reason"] == "decays"
    assert abs(m["nll_exact"] - m["ppca_nll"]) < 0.05
    assert abs(m["neg_elbo"] - m["ppca_nll"]) < 0.25
    held = data.hold_out(data.load_linear_gaussian(), data.VALIDATION_SIZES["linear-gaussian"])
    lam = ppca.spectrum(held.train.double().numpy())[1]  # the split the run trained on
    assert m["law_margin"] == pytest.approx(min(abs(math.log(v / obs_var)) for v in lam[:5]))
