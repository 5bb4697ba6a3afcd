"""Latent families: what a posterior q(z|x) can do, whatever its kind.

The core and every metric talk to a posterior only through this interface, so a metric never
needs to know which variant produced it:

- ``reparameterize(noise, **opts)``: reparameterized training samples from noise drawn by the
  latent family's ``draw_noise``, shape (n, B, ...); ``rsample(n, generator, **opts)`` draws
  the noise itself. Drawing apart from transforming lets a compiled training step take the
  noise as an input (random number generators do not trace).
- ``sample(n, generator)``: evaluation samples (discrete one-hot for a categorical latent).
- ``log_prob(z)``: log q(z|x) summed over the latent, shape (n, B);
  ``log_prob_reparameterized(z, noise)`` the same for z = reparameterize(noise), with the same
  pathwise gradient, computed from the noise where that is cheaper.
- ``prior_log_prob(z)``: log p(z), shape (n, B).
- ``kl()``: analytic KL(q(z|x) || p(z)) per latent unit, shape (B, U).
- ``activity(generator)``: the statistic whose variance over data defines an active unit, shape
  (B, U, G) (the posterior mean for a Gaussian unit; the class probabilities for a categorical
  variable); ``generator`` serves a statistic that has to be estimated by sampling
  (``variants.hierarchy``).
- ``pairwise_log_prob(z)``: log q(z_a | x_b) for every sample a and every data point b of this
  posterior, shape (A, B); the aggregate posterior of the mutual information uses it.
- ``slice(i, j)``: the posterior of data points i..j; ``len(q)``: its number of data points;
  ``double()``: the same posterior in float64.
- ``kl_from_samples``: False where ``kl()`` is analytic; True where it needs the samples,
  ``kl(z)`` (two stochastic layers, ``variants.hierarchy``).

The latent family itself gives ``param_size`` (encoder outputs), ``dim`` (decoder inputs), ``units``
(what active units count), ``continuous`` (whether z can move along gradients: annealed
importance sampling needs it), ``prior_sample(n, generator)`` and
``draw_noise(n, batch, generator, like)`` (the raw noise of n training samples per point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)
# the largest rounding error (nats) pairwise_log_prob lets its matmul form make: a tenth of the
# last digit the mutual information is reported to, far below its standard error
PAIRWISE_TOL = 1e-3


class GaussianLatent:
    """Diagonal Gaussian q(z|x) = N(mu, diag(exp(logvar))) with prior N(0, I).

    Kingma & Welling 2014, "Auto-Encoding Variational Bayes", eq. 10 and appendix B: the variance
    is the exp of a linear output of the encoder, z = mu + sigma * eps, and the KL to the standard
    normal prior is analytic.
    """

    continuous = True  # z moves along gradients (annealed importance sampling's HMC)

    def __init__(self, dim: int):
        self.dim = dim
        self.units = dim
        self.param_size = 2 * dim

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.dim, generator=generator)

    def draw_noise(self, n: int, batch: int, generator: torch.Generator | None,
                   like: Tensor) -> Tensor:
        """eps ~ N(0, I) of shape (n, batch, dim)."""
        return torch.randn((n, batch, self.dim), generator=generator, dtype=like.dtype,
                           device=like.device)

    def posterior(self, params: Tensor) -> GaussianPosterior:
        return GaussianPosterior(params[..., :self.dim], params[..., self.dim:])


@dataclass
class GaussianPosterior:
    mu: Tensor
    logvar: Tensor
    kl_from_samples = False  # a class attribute: the KL is analytic

    def reparameterize(self, eps: Tensor, **_: object) -> Tensor:
        if len(eps) == 1:  # without broadcasting over samples: backward then sums nothing
            return (self.mu + torch.exp(0.5 * self.logvar) * eps[0]).unsqueeze(0)
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def rsample(self, n: int = 1, generator: torch.Generator | None = None, **_: object) -> Tensor:
        eps = torch.randn((n, *self.mu.shape), generator=generator, dtype=self.mu.dtype,
                          device=self.mu.device)
        return self.reparameterize(eps)

    def sample(self, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        return self.rsample(n, generator)

    def log_prob(self, z: Tensor) -> Tensor:
        # log N(z; mu, s^2) = -0.5 [ (z-mu)^2 / s^2 + log s^2 + log 2pi ], summed over dims
        sq = (z - self.mu) ** 2 * torch.exp(-self.logvar)
        return -0.5 * (sq + self.logvar + LOG_2PI).sum(-1)

    def log_prob_reparameterized(self, z: Tensor, eps: Tensor) -> Tensor:
        # (z - mu) / sigma = eps, and its total derivative along z(mu, sigma) is zero, so
        # -0.5 sum(eps^2 + log s^2 + log 2pi) has log_prob(z)'s value and gradient, in fewer ops
        return -0.5 * ((eps**2).sum(-1) + (self.logvar + LOG_2PI).sum(-1))

    def prior_log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z**2 + LOG_2PI).sum(-1)

    def kl(self) -> Tensor:
        # KL(N(mu, s^2) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - log s^2), per dimension
        return 0.5 * (self.mu**2 + torch.exp(self.logvar) - 1.0 - self.logvar)

    def activity(self, generator: torch.Generator | None = None) -> Tensor:
        return self.mu.unsqueeze(-1)

    def pairwise_log_prob(self, z: Tensor) -> Tensor:
        # Expand (z_a - mu_b)^2 / v_b = z_a^2/v_b - 2 z_a mu_b / v_b + mu_b^2 / v_b into matmuls:
        # fast, but the three terms cancel where a posterior is far narrower than its mean is
        # large, and their difference is then lost. Its rounding error is at most
        # (D + 3) eps sum_d (|z_a| + |mu_b|)^2 / v_b (a sum of D products, Higham's gamma_n);
        # the rows where that bound exceeds PAIRWISE_TOL nats are computed directly instead.
        prec = torch.exp(-self.logvar)  # (B, D)
        z2, m2 = (z**2) @ prec.T, (self.mu**2 * prec).sum(-1)
        quad = z2 - 2 * z @ (self.mu * prec).T + m2
        scale = z2 + 2 * z.abs() @ (self.mu.abs() * prec).T + m2
        bound = 0.5 * (z.shape[-1] + 3) * torch.finfo(quad.dtype).eps * scale
        bad = (bound > PAIRWISE_TOL).any(-1).nonzero().flatten()
        if len(bad):
            step = max(1, 2**24 // max(1, self.mu.numel()))  # rows at a time: <= 2^24 elements
            for i in range(0, len(bad), step):
                rows = bad[i:i + step]
                d2 = (z[rows, None, :] - self.mu) ** 2  # 0 * inf (a point mass at z) is 0
                quad[rows] = torch.where(d2 == 0, 0.0, d2 * prec).sum(-1)
        return -0.5 * (quad + (self.logvar + LOG_2PI).sum(-1))

    def slice(self, i: int, j: int) -> GaussianPosterior:
        return GaussianPosterior(self.mu[i:j], self.logvar[i:j])

    def __len__(self) -> int:
        return len(self.mu)

    def double(self) -> GaussianPosterior:
        return GaussianPosterior(self.mu.double(), self.logvar.double())


class CategoricalLatent:
    """N independent categorical variables with C classes each and a uniform prior.

    Training samples are relaxed one-hot vectors from the Gumbel-Softmax (Jang, Gu & Poole 2017,
    eq. 1; Maddison et al. 2017); ``hard=True`` gives the straight-through estimator (one-hot
    forward pass, relaxed gradient; Jang et al. 2017 section 2.2). Evaluation samples are discrete.
    """

    continuous = False  # one-hot codes: no gradient moves between them

    def __init__(self, n_vars: int, n_classes: int):
        self.n_vars, self.n_classes = n_vars, n_classes
        self.units = n_vars
        self.dim = n_vars * n_classes
        self.param_size = n_vars * n_classes

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(self.n_classes, (n, self.n_vars), generator=generator)
        return F.one_hot(idx, self.n_classes).flatten(-2).to(torch.get_default_dtype())

    def support(self, max_size: int = 4096) -> tuple[Tensor, float] | None:
        """Every one-hot configuration (C**N, N*C) and its log prior, if there are few enough."""
        if self.n_classes**self.n_vars > max_size:
            return None
        idx = torch.cartesian_prod(*[torch.arange(self.n_classes)] * self.n_vars)
        idx = idx.reshape(-1, self.n_vars)
        z = F.one_hot(idx, self.n_classes).flatten(-2).to(torch.get_default_dtype())
        return z, -self.n_vars * math.log(self.n_classes)

    def draw_noise(self, n: int, batch: int, generator: torch.Generator | None,
                   like: Tensor) -> Tensor:
        """u ~ U(0, 1) of shape (n, batch, N, C), turned into Gumbel noise by reparameterize."""
        return torch.rand((n, batch, self.n_vars, self.n_classes), generator=generator,
                          dtype=like.dtype, device=like.device)

    def posterior(self, params: Tensor) -> CategoricalPosterior:
        logits = params.unflatten(-1, (self.n_vars, self.n_classes))
        return CategoricalPosterior(torch.log_softmax(logits, dim=-1))


@dataclass
class CategoricalPosterior:
    log_probs: Tensor  # (B, N, C), normalized
    kl_from_samples = False  # a class attribute: the KL is analytic

    def rsample(self, n: int = 1, generator: torch.Generator | None = None, **opts: object) -> Tensor:
        u = torch.rand((n, *self.log_probs.shape), generator=generator,
                       dtype=self.log_probs.dtype, device=self.log_probs.device)
        return self.reparameterize(u, **opts)

    def reparameterize(self, u: Tensor, tau: float = 1.0, hard: bool = False,
                       **_: object) -> Tensor:
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        y = torch.softmax((self.log_probs + gumbel) / tau, dim=-1)
        if hard:
            one_hot = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
            y = one_hot - y.detach() + y
        return y.flatten(-2)

    def sample(self, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        probs = self.log_probs.exp().reshape(-1, self.log_probs.shape[-1])
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)  # (B*N, n)
        idx = idx.T.reshape(n, *self.log_probs.shape[:-1])
        return F.one_hot(idx, self.log_probs.shape[-1]).to(self.log_probs.dtype).flatten(-2)

    def log_prob(self, z: Tensor) -> Tensor:
        # sum_n log pi_{n, z_n} for one-hot z; for a relaxed z, the cross-entropy sum_nc z_nc log pi_nc
        return (z * self.log_probs.flatten(-2)).sum(-1)

    def log_prob_reparameterized(self, z: Tensor, u: Tensor) -> Tensor:
        return self.log_prob(z)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        n_vars, n_classes = self.log_probs.shape[-2:]
        return torch.full(z.shape[:-1], -n_vars * math.log(n_classes),
                          dtype=z.dtype, device=z.device)

    def kl(self) -> Tensor:
        # KL(Cat(pi) || Uniform(C)) = sum_c pi_c log pi_c + log C, per variable
        n_classes = self.log_probs.shape[-1]
        return (self.log_probs.exp() * self.log_probs).sum(-1) + math.log(n_classes)

    def activity(self, generator: torch.Generator | None = None) -> Tensor:
        return self.log_probs.exp()

    def pairwise_log_prob(self, z: Tensor) -> Tensor:
        return z @ self.log_probs.flatten(-2).T

    def slice(self, i: int, j: int) -> CategoricalPosterior:
        return CategoricalPosterior(self.log_probs[i:j])

    def __len__(self) -> int:
        return len(self.log_probs)

    def double(self) -> CategoricalPosterior:
        return CategoricalPosterior(self.log_probs.double())
