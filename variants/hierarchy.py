"""Two stochastic layers (Burda, Grosse & Salakhutdinov 2016, ICLR, section 5, their 2-layer
MNIST architecture; config keys ``model.latent2_dim`` and ``model.latent2_hidden``):

    q(h1, h2 | x) = q(h1 | x) q(h2 | h1)        p(x, h1, h2) = p(h2) p(h1 | h2) p(x | h1)

q(h1|x) is the core's encoder (x -> 200-200 -> h1 = 100 in Burda et al.), q(h2|h1) an MLP
h1 -> 100-100 -> h2 = 50; p(h2) = N(0, I), p(h1|h2) the mirror MLP h2 -> 100-100 -> h1, and
p(x|h1) the decoder family of ``model.decoder`` reading h1. Every conditional is a diagonal
Gaussian with exp-activated variance (Kingma & Welling 2014, appendix C.2).

A sample z is the concatenation (h1, h2), so the core, the objectives and the metrics see one
latent of d1 + d2 units; the posterior object below answers the latent protocol
(``variants.latents``) for it. What changes:

- the KL has no closed form. Per unit it is estimated from the samples: for h2 the analytic
  KL(q(h2|h1) || N(0, I)) at the sampled h1, for h1 the single-sample log q(h1|x) - log p(h1|h2).
  Summed, an unbiased estimate of KL(q(h1, h2 | x) || p(h1, h2)); the top layer's part
  analytically, which only lowers its variance. The ELBO, free bits per unit and the KL weight
  of beta / annealing use it as they use the analytic KL of one layer;
- log q(z|x) and log p(z) go through the networks of q(h2|h1) and p(h1|h2), so the importance
  weights log p(x, h1, h2) - log q(h1, h2 | x) are Burda et al.'s (their eq. 8 with the 2-layer
  model), and IWAE is their 2-layer IWAE;
- active units per layer (Burda et al. section 5.2 reports them "layer 1 + layer 2"): the
  statistic of an h1 unit is E_q[h1_u | x] = its posterior mean; of an h2 unit
  E_q[h2_u | x] = E_{q(h1|x)} E[h2_u | h1], estimated with ``ACTIVITY_SAMPLES`` samples of h1;
- the mutual information I_q(x; h1, h2) equals I_q(x; h1) (h2 depends on x only through h1); the
  pooled estimator computes it from the joint density, where the q(h2|h1) factor cancels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .core import VAE, Terms
from .decoders import mlp
from .latents import GaussianLatent, GaussianPosterior

LOG_2PI = math.log(2 * math.pi)
#: samples of h1 per point for the second layer's activity statistic E_q[h2 | x]
ACTIVITY_SAMPLES = 100
#: points per chunk in that estimate (memory O(chunk x samples x d2))
ACTIVITY_CHUNK = 500


def _gaussian(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, exp(logvar)) per unit (not summed)."""
    return -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)


def _split(params: Tensor, d: int) -> tuple[Tensor, Tensor]:
    return params[..., :d], params[..., d:]


class TwoLayerLatent:
    """The latent family of the two-layer model: z = (h1, h2) with d1 + d2 units, the encoder
    giving q(h1|x)'s 2 d1 parameters; the networks of q(h2|h1) and p(h1|h2) are the model's."""

    continuous = True

    def __init__(self, d1: int, d2: int, bottom_up: nn.Module, top_down: nn.Module):
        self.d1, self.d2 = d1, d2
        self.dim = self.units = d1 + d2
        self.param_size = 2 * d1
        self.bottom_up, self.top_down = bottom_up, top_down

    def draw_noise(self, n: int, batch: int, generator: torch.Generator | None,
                   like: Tensor) -> Tensor:
        """eps ~ N(0, I) of shape (n, batch, d1 + d2): h1's noise, then h2's."""
        return torch.randn((n, batch, self.dim), generator=generator, dtype=like.dtype,
                           device=like.device)

    def posterior(self, params: Tensor) -> TwoLayerPosterior:
        return TwoLayerPosterior(GaussianPosterior(*_split(params, self.d1)), self.bottom_up,
                                 self.top_down, self.d2)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples: h2 ~ N(0, I), then h1 ~ p(h1 | h2); shape (n, d1 + d2)."""
        like = next(self.top_down.parameters())
        h2 = torch.randn((n, self.d2), generator=generator, dtype=like.dtype, device=like.device)
        mean, logvar = _split(self.top_down(h2), self.d1)
        eps = torch.randn((n, self.d1), generator=generator, dtype=like.dtype, device=like.device)
        return torch.cat([mean + torch.exp(0.5 * logvar) * eps, h2], -1)


class TwoLayerPosterior:
    """q(h1, h2 | x) of a batch: q(h1|x) as a Gaussian posterior, q(h2|h1) through the network.
    Samples z are (h1, h2) concatenated, of shape (..., d1 + d2)."""

    kl_from_samples = True

    def __init__(self, q1: GaussianPosterior, bottom_up: nn.Module, top_down: nn.Module, d2: int):
        self.q1, self.bottom_up, self.top_down, self.d2 = q1, bottom_up, top_down, d2
        self.d1 = q1.mu.shape[-1]
        self.layer_units = (self.d1, d2)

    def _layers(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[..., :self.d1], z[..., self.d1:]

    def _q2(self, h1: Tensor) -> tuple[Tensor, Tensor]:
        return _split(self.bottom_up(h1), self.d2)

    def _p1(self, h2: Tensor) -> tuple[Tensor, Tensor]:
        return _split(self.top_down(h2), self.d1)

    # ---- training: everything from the noise in one pass ------------------------------------
    def reparameterize_terms(self, noise: Tensor) -> dict[str, Tensor]:
        """From noise (S, B, d1 + d2): z, the per-unit KL estimate (B, d1 + d2), log q(z|x) and
        log p(z) (S, B), each network evaluated once. log q uses the noise: (h - mean) / sd = eps
        has the value and pathwise gradient of the density at the sample
        (``GaussianPosterior.log_prob_reparameterized``)."""
        eps1, eps2 = self._layers(noise)
        h1 = self.q1.reparameterize(eps1)
        mu2, lv2 = self._q2(h1)
        h2 = mu2 + torch.exp(0.5 * lv2) * eps2
        mean1, lv1 = self._p1(h2)
        log_q1 = -0.5 * (eps1**2 + self.q1.logvar + LOG_2PI)  # (S, B, d1)
        log_p1 = _gaussian(h1, mean1, lv1)
        kl2 = GaussianPosterior(mu2, lv2).kl()  # analytic, at the sampled h1
        return {"z": torch.cat([h1, h2], -1),
                "kl": torch.cat([(log_q1 - log_p1).mean(0), kl2.mean(0)], -1),
                "log_qz": log_q1.sum(-1) - 0.5 * (eps2**2 + lv2 + LOG_2PI).sum(-1),
                "log_pz": log_p1.sum(-1) - 0.5 * (h2**2 + LOG_2PI).sum(-1)}

    def reparameterize(self, noise: Tensor, **_: object) -> Tensor:
        return self.reparameterize_terms(noise)["z"]

    # ---- the latent protocol --------------------------------------------------------------------
    def sample(self, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        h1 = self.q1.sample(n, generator)
        mu2, lv2 = self._q2(h1)
        eps2 = torch.randn(mu2.shape, generator=generator, dtype=mu2.dtype, device=mu2.device)
        return torch.cat([h1, mu2 + torch.exp(0.5 * lv2) * eps2], -1)

    def log_prob(self, z: Tensor) -> Tensor:
        h1, h2 = self._layers(z)
        return self.q1.log_prob(h1) + self._log_q2(h1, h2)

    def _log_q2(self, h1: Tensor, h2: Tensor) -> Tensor:
        return _gaussian(h2, *self._q2(h1)).sum(-1)

    def log_prob_reparameterized(self, z: Tensor, noise: Tensor) -> Tensor:
        h1, _ = self._layers(z)
        eps1, eps2 = self._layers(noise)
        _, lv2 = self._q2(h1)
        return (self.q1.log_prob_reparameterized(h1, eps1)
                - 0.5 * (eps2**2 + lv2 + LOG_2PI).sum(-1))

    def prior_log_prob(self, z: Tensor) -> Tensor:
        h1, h2 = self._layers(z)
        return _gaussian(h1, *self._p1(h2)).sum(-1) - 0.5 * (h2**2 + LOG_2PI).sum(-1)

    def kl(self, z: Tensor) -> Tensor:
        """The per-unit KL estimate (B, d1 + d2) from samples z (S, B, d1 + d2): h1's units
        log q(h1|x) - log p(h1|h2), h2's the analytic KL(q(h2|h1) || N(0, I)); mean over S."""
        h1, h2 = self._layers(z)
        layer1 = _gaussian(h1, self.q1.mu, self.q1.logvar) - _gaussian(h1, *self._p1(h2))
        layer2 = GaussianPosterior(*self._q2(h1)).kl()
        return torch.cat([layer1.mean(0), layer2.mean(0)], -1)

    def activity(self, generator: torch.Generator | None = None) -> Tensor:
        """(B, d1 + d2, 1): E_q[h1|x] (exact), then E_q[h2|x] = E_{q(h1|x)} E[h2|h1] by Monte
        Carlo with ``ACTIVITY_SAMPLES`` samples of h1 from ``generator``."""
        top = []
        for i in range(0, len(self), ACTIVITY_CHUNK):
            h1 = self.q1.slice(i, i + ACTIVITY_CHUNK).sample(ACTIVITY_SAMPLES, generator)
            top.append(self._q2(h1)[0].mean(0))
        return torch.cat([self.q1.mu, torch.cat(top)], -1).unsqueeze(-1)

    def pairwise_log_prob(self, z: Tensor) -> Tensor:
        """log q(z_a | x_b) for z of shape (A, d1 + d2): q(h1_a | x_b) + q(h2_a | h1_a), whose
        second factor does not depend on b."""
        h1, h2 = self._layers(z)
        return self.q1.pairwise_log_prob(h1) + self._log_q2(h1, h2).unsqueeze(-1)

    def slice(self, i: int, j: int) -> TwoLayerPosterior:
        return TwoLayerPosterior(self.q1.slice(i, j), self.bottom_up, self.top_down, self.d2)

    def __len__(self) -> int:
        return len(self.q1)

    def double(self) -> TwoLayerPosterior:
        return TwoLayerPosterior(self.q1.double(), copy.deepcopy(self.bottom_up).double(),
                                 copy.deepcopy(self.top_down).double(), self.d2)


class TwoLayerVAE(VAE):
    """The core VAE with a second stochastic layer: the encoder and the decoder family are the
    core's (the decoder reads h1), plus ``bottom_up`` (q(h2|h1)) and ``top_down`` (p(h1|h2)),
    MLPs with ``latent2_hidden`` widths (mirrored in ``top_down``) and the core's activation."""

    #: why its runs do not train stacked: its posterior holds the model's networks, which a
    #: stacked pass cannot hand back per run (``bench.training.stacked`` passes tensors)
    stacking = "two stochastic layers: its posterior holds networks, not only tensors"

    generative_modules = ("decoder", "top_down")

    def __init__(self, input_dim: int, latent: GaussianLatent, latent2_dim: int,
                 latent2_hidden: Sequence[int] = (100, 100), activation: str = "tanh",
                 **kwargs):
        super().__init__(input_dim, latent, activation=activation, **kwargs)
        d1, d2 = latent.dim, latent2_dim
        self.bottom_up = nn.Sequential(*mlp(d1, tuple(latent2_hidden), 2 * d2, activation))
        self.top_down = nn.Sequential(*mlp(d2, tuple(latent2_hidden)[::-1], 2 * d1, activation))
        self.latent = TwoLayerLatent(d1, d2, self.bottom_up, self.top_down)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """q(h1|x) and q(h2|h1)."""
        return super().encoder_parameters() + list(self.bottom_up.parameters())

    def decoder_input(self, z: Tensor) -> Tensor:
        return z[..., :self.latent.d1]

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        return super().log_likelihood(x, self.decoder_input(z))

    def forward(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None,
                noise: Tensor | None = None, **sample_opts) -> Terms:
        q = self.encode(x)
        if noise is None:
            noise = self.latent.draw_noise(n_samples, len(x), generator, x)
        t = q.reparameterize_terms(noise)
        return Terms(self.log_likelihood(x, t["z"]), t["kl"], q, t["z"], noise,
                     given_log_qz=t["log_qz"], given_log_pz=t["log_pz"])

    @torch.no_grad()
    def exact_log_marginal(self, x: Tensor) -> Tensor | None:
        """log p(x) where the model is linear-Gaussian: p(x|h1) = N(W h1 + b, s^2 I) (a Gaussian
        likelihood, a decoder without hidden layers) and p(h1|h2) = N(A h2 + a, diag(exp(c)))
        (``top_down`` one linear layer whose log-variance rows have zero weights). Then
        p(h1) = N(a, A A^T + diag(exp(c))) and p(x) = N(b + W a, W Cov(h1) W^T + s^2 I)."""
        td, dec = self.top_down, self.decoder
        d1 = self.latent.d1
        if not (self.likelihood == "gaussian" and isinstance(dec, nn.Sequential)
                and len(dec) == 1 and len(td) == 1
                and bool((td[0].weight[d1:] == 0).all())):
            return None
        a_mat, a = td[0].weight[:d1].double(), td[0].bias[:d1].double()
        cov1 = a_mat @ a_mat.T + torch.diag(torch.exp(td[0].bias[d1:].double()))
        w, b = dec[0].weight.double(), dec[0].bias.double()
        eye = torch.eye(len(b), dtype=w.dtype, device=w.device)
        cov = w @ cov1 @ w.T + torch.exp(self.log_var.double()) * eye
        mvn = torch.distributions.MultivariateNormal(b + w @ a, covariance_matrix=cov)
        return mvn.log_prob(x.double())
