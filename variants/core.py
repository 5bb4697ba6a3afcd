"""The shared core: an MLP encoder and decoder around a latent family.

The model returns the *terms* of the bound, never a finished loss (Kingma & Welling 2014, eq. 3):
log p(x|z), log q(z|x), log p(z) for each of S samples, and the analytic KL per latent unit.
Variants assemble their objective from these terms in ``variants.base.Variant``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .latents import GaussianLatent

LOG_2PI = math.log(2 * math.pi)

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}
LIKELIHOODS = ("bernoulli", "gaussian")


def mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), ACTIVATIONS[activation]()]
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(l)) = x l - softplus(l), summed over the last axis (exact, stable)."""
    return (x * logits - F.softplus(logits)).sum(-1)


def bernoulli_log_prob_linear(x: Tensor, h: Tensor, out: nn.Linear) -> Tensor:
    """``bernoulli_log_prob(x, out(h))`` with the x-term through the weights, not the logits.

    With logits l = h W^T + b: sum_d x_d l_d = h . (x W) + x . b, a (B, H) product per point
    shared by all S samples; only softplus is evaluated over the (S, B, D) logits. Same value,
    one pass over the largest tensor instead of three: 6 % faster importance sampling at K = 1000
    (but slower to backpropagate, so training keeps the plain form).
    """
    xw, xb = x @ out.weight, x @ out.bias  # (B, H), (B,)
    return (h * xw).sum(-1) + xb - F.softplus(out(h)).sum(-1)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; mean, exp(log_var) I), summed over the last axis."""
    return -0.5 * ((x - mean) ** 2 * torch.exp(-log_var) + log_var + LOG_2PI).sum(-1)


@dataclass
class Terms:
    """Per-sample terms of the variational bound; S samples for a batch of B points.

    log q(z|x) and log p(z) are computed on first use: objectives with the analytic KL never
    need them, and a training step should not pay for what it does not use.
    """

    log_px_z: Tensor  # (S, B)  log p(x | z_s)
    kl: Tensor  # (B, U)  analytic KL(q(z|x) || p(z)) per latent unit
    posterior: object  # q(z|x) of the batch
    z: Tensor  # (S, B, Z) the samples

    @cached_property
    def log_qz(self) -> Tensor:
        """(S, B) log q(z_s | x)."""
        return self.posterior.log_prob(self.z)

    @cached_property
    def log_pz(self) -> Tensor:
        """(S, B) log p(z_s)."""
        return self.posterior.prior_log_prob(self.z)

    @property
    def log_weights(self) -> Tensor:
        """Importance log-weights log p(x, z_s) - log q(z_s | x), shape (S, B)."""
        return self.log_px_z + self.log_pz - self.log_qz

    def elbo(self) -> Tensor:
        """The unmodified ELBO per data point with the analytic KL, shape (B,)."""
        return self.log_px_z.mean(0) - self.kl.sum(-1)


class VAE(nn.Module):
    """Encoder x -> latent parameters, latent family, decoder z -> likelihood of x.

    ``likelihood='bernoulli'``: the decoder outputs logits. ``'gaussian'``: it outputs the mean,
    and a single learned log-variance is shared by all pixels (the linear-Gaussian model of
    DESIGN.md section 3 when the decoder has no hidden layer).
    """

    def __init__(self, input_dim: int, latent, hidden: Sequence[int] = (200, 200),
                 decoder_hidden: Sequence[int] | None = None, activation: str = "tanh",
                 likelihood: str = "bernoulli"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {likelihood!r} unknown; allowed: {', '.join(LIKELIHOODS)}")
        self.latent = latent
        self.likelihood = likelihood
        dec_hidden = tuple(hidden)[::-1] if decoder_hidden is None else tuple(decoder_hidden)
        self.encoder = mlp(input_dim, hidden, latent.param_size, activation)
        self.decoder = mlp(latent.dim, dec_hidden, input_dim, activation)
        if likelihood == "gaussian":
            self.log_var = nn.Parameter(torch.zeros(()))

    def encode(self, x: Tensor):
        return self.latent.posterior(self.encoder(x))

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for z of shape (S, B, Z) and x of shape (B, D) -> (S, B)."""
        if self.likelihood == "gaussian":
            return gaussian_log_prob(x, self.decoder(z), self.log_var)
        if torch.is_grad_enabled():  # training: the plain form backpropagates faster
            return bernoulli_log_prob(x, self.decoder(z))
        return bernoulli_log_prob_linear(x, self.decoder[:-1](z), self.decoder[-1])

    @torch.no_grad()
    def exact_log_marginal(self, x: Tensor) -> Tensor | None:
        """log p(x) per data point where the model admits it exactly, else None.

        - a latent with a small finite support: log p(x) = logsumexp_z [log p(x|z) + log p(z)];
        - a Gaussian latent with a linear Gaussian decoder, x = W z + b + eps:
          p(x) = N(x; b, W W^T + sigma^2 I) (DESIGN.md section 3).
        """
        support = getattr(self.latent, "support", lambda: None)()
        if support is not None:
            z, log_pz = support
            log_px_z = self.log_likelihood(x, z.to(x).unsqueeze(1))  # (M, B)
            return torch.logsumexp(log_px_z.double() + log_pz, dim=0)
        if self.likelihood == "gaussian" and len(self.decoder) == 1 \
                and isinstance(self.latent, GaussianLatent):
            w, b = self.decoder[0].weight.double(), self.decoder[0].bias.double()
            eye = torch.eye(len(b), dtype=w.dtype, device=w.device)
            cov = w @ w.T + torch.exp(self.log_var.double()) * eye
            mvn = torch.distributions.MultivariateNormal(b, covariance_matrix=cov)
            return mvn.log_prob(x.double())
        return None

    def forward(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None,
                **sample_opts) -> Terms:
        q = self.encode(x)
        z = q.rsample(n_samples, generator, **sample_opts)
        return Terms(self.log_likelihood(x, z), q.kl(), q, z)
