"""The linear-VAE collapse law (Lucas et al. 2019, NeurIPS, "Don't blame the ELBO!"), in closed
form: the suite's exact ground truth for posterior collapse.

For a linear VAE p(x|z) = N(Wz + mu, sigma^2 I) with a fixed sigma^2 and a diagonal Gaussian
posterior, the ELBO's global optimum is the probabilistic-PCA maximum likelihood (Tipping &
Bishop 1999): with S the data covariance (divided by N) and lambda_1 >= lambda_2 >= ... its
eigenvalues and U their eigenvectors, W = U_k (Lambda_k - sigma^2 I)^{1/2}_+ R and mu the data
mean. Latent direction i collapses (a zero column of W, q(z_i|x) = p(z_i)) exactly when
lambda_i <= sigma^2. The log-likelihood of points x under the optimum is that of
N(mu, C = W W^T + sigma^2 I), with C's eigenvalues max(lambda_i, sigma^2) (i <= k), else sigma^2.
At the optimum the ELBO equals it: the exact posterior is Gaussian with a diagonal covariance
in the rotation R = I.
"""

from __future__ import annotations

import math

import numpy as np


def spectrum(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, eigenvalues descending, eigenvectors as columns) of the training covariance."""
    x = np.asarray(train, dtype=np.float64)
    mean = x.mean(0)
    centred = x - mean
    lam, u = np.linalg.eigh(centred.T @ centred / len(x))
    order = np.argsort(lam)[::-1]
    return mean, np.clip(lam[order], 0, None), u[:, order]


def law(train: np.ndarray, test: np.ndarray, latent_dim: int, obs_var: float) -> dict:
    """The optimum's predictions for a linear VAE of ``latent_dim`` units and noise ``obs_var``
    trained on ``train``: collapsed units, the per-point NLL of ``train`` and ``test`` at the
    pPCA maximum likelihood (nats), and the margin of the eigenvalue nearest to sigma^2
    (min |log(lambda_i / sigma^2)| over i <= k: near 0, a unit converges arbitrarily slowly)."""
    mean, lam, u = spectrum(train)
    d, k = len(lam), min(latent_dim, len(lam))
    c_eig = np.full(d, obs_var)
    c_eig[:k] = np.maximum(lam[:k], obs_var)
    logdet = np.log(c_eig).sum()

    def nll(x: np.ndarray) -> float:
        proj = (np.asarray(x, dtype=np.float64) - mean) @ u  # coordinates in the eigenbasis
        quad = (proj**2 / c_eig).sum(1)
        return float(0.5 * (d * math.log(2 * math.pi) + logdet + quad).mean())

    with np.errstate(divide="ignore"):
        margin = float(np.min(np.abs(np.log(np.maximum(lam[:k], 1e-300) / obs_var))))
    return {"collapsed_predicted": int((lam[:k] <= obs_var).sum()) + (latent_dim - k),
            "ppca_nll_train": nll(train), "ppca_nll": nll(test), "law_margin": margin}
