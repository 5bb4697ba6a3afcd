"""The shared core: an MLP encoder, a latent family and a decoder family (``variants.decoders``).

The model returns the *terms* of the bound, never a finished loss (Kingma & Welling 2014, eq. 3):
log p(x|z), log q(z|x), log p(z) for each of S samples, and the analytic KL per latent unit.
Variants assemble their objective from these terms in ``variants.base.Variant``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .decoders import make_decoder, mlp
from .decoders.lstm import LSTMEncoder
from .latents import GaussianLatent

LOG_2PI = math.log(2 * math.pi)

LIKELIHOODS = ("bernoulli", "gaussian", "categorical")  # categorical: token ids, lstm

#: optimizer steps taken in this process, by any torch optimizer (a global post-step hook):
#: part of the key of the cached evaluation decoder
OPTIMIZER_STEPS = [0]


def _count_step(optimizer, args, kwargs) -> None:
    OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; mean, exp(log_var) I), summed over the last axis."""
    return -0.5 * ((x - mean) ** 2 * torch.exp(-log_var) + log_var + LOG_2PI).sum(-1)


@dataclass
class Terms:
    """Per-sample terms of the variational bound; S samples for a batch of B points.

    log q(z|x) and log p(z) are computed when asked for: objectives with the analytic KL never
    need them, and a training step should not pay for what it does not use. (Plain properties,
    not cached ones: ``functools.cached_property`` takes a lock that torch.compile cannot trace.)
    """

    log_px_z: Tensor  # (S, B)  log p(x | z_s)
    kl: Tensor  # (B, U)  analytic KL(q(z|x) || p(z)) per latent unit
    posterior: object  # q(z|x) of the batch
    z: Tensor  # (S, B, Z) the samples
    noise: Tensor | None = None  # the noise z was reparameterized from
    #: log q(z|x) and log p(z) where the model computed them on the way (two stochastic layers)
    given_log_qz: Tensor | None = None
    given_log_pz: Tensor | None = None

    @property
    def log_qz(self) -> Tensor:
        """(S, B) log q(z_s | x)."""
        if self.given_log_qz is not None:
            return self.given_log_qz
        if self.noise is None:
            return self.posterior.log_prob(self.z)
        return self.posterior.log_prob_reparameterized(self.z, self.noise)

    @property
    def log_pz(self) -> Tensor:
        """(S, B) log p(z_s)."""
        if self.given_log_pz is not None:
            return self.given_log_pz
        return self.posterior.prior_log_prob(self.z)

    @property
    def log_weights(self) -> Tensor:
        """Importance log-weights log p(x, z_s) - log q(z_s | x), shape (S, B)."""
        return self.log_px_z + self.log_pz - self.log_qz

    def elbo(self) -> Tensor:
        """The unmodified ELBO per data point with the analytic KL, shape (B,)."""
        return self.log_px_z.mean(0) - self.kl.sum(-1)


class NoEncoder(nn.Module):
    """The encoder of a model without a latent: no parameters, an empty output per point."""

    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(len(x), 0)


class SoftplusScale(nn.Module):
    """The encoder's last step when the posterior scale is a softplus (Davidson et al. 2018's
    code: sigma = softplus(linear output)): [mu, r] -> [mu, log sigma^2 = 2 log softplus(r)],
    so every consumer keeps reading (mu, log-variance). For r < -20, log softplus(r) = r to
    within float64 rounding (log1p(e^r) = e^r (1 - e^r / 2 + ...)), which also keeps it finite
    where softplus underflows."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, params: Tensor) -> Tensor:
        mu, r = params[..., :self.dim], params[..., self.dim:]
        log_sigma = torch.where(r < -20, r, F.softplus(r.clamp_min(-20)).log())
        return torch.cat([mu, 2 * log_sigma], -1)


class VAE(nn.Module):
    """Encoder x -> latent parameters, latent family, decoder z -> likelihood of x.

    ``likelihood='bernoulli'``: the decoder outputs logits. ``'gaussian'``: it outputs the mean,
    and a single learned log-variance is shared by all pixels (the linear-Gaussian model of
    docs/design.md, section 3, when the decoder has no hidden layer).
    """

    def __init__(self, input_dim: int, latent, hidden: Sequence[int] = (200, 200),
                 decoder_hidden: Sequence[int] | None = None, activation: str = "tanh",
                 likelihood: str = "bernoulli", decoder: str = "mlp",
                 head: nn.Module | None = None, posterior_scale: str = "exp",
                 obs_var: float = 0.0, encoder: str = "mlp", **decoder_options):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {likelihood!r} unknown; allowed: {', '.join(LIKELIHOODS)}")
        if likelihood == "gaussian" and decoder != "mlp":
            raise ValueError(f"decoder {decoder!r} models binary pixels; allowed for a Gaussian "
                             "likelihood: mlp")
        if (likelihood == "categorical") != (decoder == "lstm"):
            raise ValueError("token ids (a categorical likelihood) take the lstm decoder, and it "
                             f"takes them; got {likelihood} with {decoder}")
        self.latent = latent
        self.likelihood = likelihood
        dec_hidden = tuple(hidden)[::-1] if decoder_hidden is None else tuple(decoder_hidden)
        if not latent.param_size:
            self.encoder = NoEncoder()
        elif encoder == "lstm":
            self.encoder = LSTMEncoder(decoder_options["vocab"], latent.param_size,
                                       decoder_options.get("embed", 50),
                                       decoder_options.get("lstm_hidden", 50))
        else:
            self.encoder = nn.Sequential(*mlp(input_dim, hidden, latent.param_size, activation))
        if posterior_scale == "softplus" and latent.param_size:
            self.encoder.append(SoftplusScale(latent.dim))  # no parameters: names unchanged
        elif posterior_scale != "exp":
            raise ValueError(f"posterior_scale {posterior_scale!r} unknown; allowed: exp, softplus")
        self.head = head  # the variant's posterior parameterization, if any
        self.decoder = make_decoder(decoder, latent.dim, input_dim, hidden=dec_hidden,
                                    activation=activation, **decoder_options)
        if likelihood == "gaussian" and obs_var > 0:  # a fixed observation noise (Lucas et al.)
            self.register_buffer("log_var", torch.tensor(math.log(obs_var)))
        elif likelihood == "gaussian":
            self.log_var = nn.Parameter(torch.zeros(()))

    #: the modules of the generative model p(x, z) that a reset to the initial weights covers
    generative_modules: tuple[str, ...] = ("decoder",)

    def decoder_input(self, z: Tensor) -> Tensor:
        """The part of a latent sample the decoder p(x|z) reads (all of it here)."""
        return z

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of z from the prior p(z), shape (n, Z)."""
        return self.latent.prior_sample(n, generator)

    def posterior_params(self, x: Tensor, **options) -> Tensor:
        """The parameters of q(z|x): the encoder's outputs, through the variant's head if any."""
        params = self.encoder(x)
        return params if self.head is None else self.head(params, **options)

    def encode(self, x: Tensor, **options):
        return self.latent.posterior(self.posterior_params(x, **options))

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The inference network's parameters: q(z|x)'s (encoder and head)."""
        head = list(self.head.parameters()) if self.head is not None else []
        return list(self.encoder.parameters()) + head

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The generative model's parameters: p(x|z)'s."""
        own = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in own]

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for z of shape (S, B, Z) and x of shape (B, D) -> (S, B)."""
        if self.likelihood == "gaussian":
            return gaussian_log_prob(x, self.decoder(z), self.log_var)
        if torch.is_grad_enabled() or self.likelihood == "categorical":
            return self.decoder.log_prob(x, z)
        return self.inference_decoder().bernoulli_log_prob(x, z)

    def inference_decoder(self):
        """The no-grad form of the decoder, rebuilt whenever a decoder parameter may have changed:
        an in-place edit or load_state_dict bumps the parameter's ``_version``; a fused optimizer
        step does not (torch 2.13's fused Adam leaves it), so every optimizer step counts too."""
        key = (OPTIMIZER_STEPS[0],
               *((p.data_ptr(), p._version, p.dtype, p.device) for p in self.decoder.parameters()))
        if getattr(self, "_inference", (None,))[0] != key:
            with torch.no_grad():
                self._inference = (key, self.decoder.inference())
        return self._inference[1]

    @torch.no_grad()
    def exact_log_marginal(self, x: Tensor) -> Tensor | None:
        """log p(x) per data point where the model admits it exactly, else None.

        - no latent at all (dimension 0): log p(x) is the decoder's own, exact;
        - a latent with a small finite support: log p(x) = logsumexp_z [log p(x|z) + log p(z)];
        - a Gaussian latent with a linear Gaussian decoder, x = W z + b + eps:
          p(x) = N(x; b, W W^T + sigma^2 I) (docs/design.md, section 3).
        """
        if self.latent.dim == 0:  # no latent: p(x) = p(x | the empty z)
            return self.log_likelihood(x, x.new_zeros(1, len(x), 0))[0].double()
        support = getattr(self.latent, "support", lambda: None)()
        if support is not None:
            z, log_pz = support
            log_px_z = self.log_likelihood(x, z.to(x).unsqueeze(1))  # (M, B)
            return torch.logsumexp(log_px_z.double() + log_pz, dim=0)
        if self.likelihood == "gaussian" and isinstance(self.decoder, nn.Sequential) \
                and len(self.decoder) == 1 \
                and isinstance(self.latent, GaussianLatent):
            w, b = self.decoder[0].weight.double(), self.decoder[0].bias.double()
            eye = torch.eye(len(b), dtype=w.dtype, device=w.device)
            cov = w @ w.T + torch.exp(self.log_var.double()) * eye
            mvn = torch.distributions.MultivariateNormal(b, covariance_matrix=cov)
            return mvn.log_prob(x.double())
        return None

    def forward(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None,
                noise: Tensor | None = None, **sample_opts) -> Terms:
        """The terms for n_samples reparameterized samples per point, from ``noise`` (drawn by
        ``latent.draw_noise``) or, if it is None, from noise drawn here with ``generator``."""
        q = self.encode(x, **sample_opts)
        if noise is None:
            noise = self.latent.draw_noise(n_samples, len(x), generator, x)
        z = q.reparameterize(noise, **sample_opts)
        return Terms(self.log_likelihood(x, z), q.kl(), q, z, noise)
