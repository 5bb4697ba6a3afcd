"""The shared core: an MLP encoder and decoder around a latent family.

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
    """log Bernoulli(x; sigmoid(l)) summed over the last axis: x l - softplus(l), exact and stable.

    Computed by the fused binary cross-entropy kernel (one pass forward and one backward instead
    of four elementwise passes each); x and the logits broadcast against each other.
    """
    if logits.shape != x.shape:
        logits, x = torch.broadcast_tensors(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def _group_size(d: int, limit: int = 126) -> int:
    """The largest divisor of d that is at most limit."""
    return max(g for g in range(1, min(d, limit) + 1) if d % g == 0)


def softplus_sum_(logits: Tensor) -> Tensor:
    """sum_d softplus(l_d) over the last axis of a (rows, D) tensor, which it overwrites.

    softplus(l) = relu(l) - log sigmoid(|l|), and the logs of groups of g <= 126 factors are taken
    as one log of their product: sigmoid(|l|) lies in [1/2, 1], so a product of 126 factors is at
    least 2^-126, still a normal float32. Instead of a log1p and an exp per element (softplus), one
    sigmoid per element and a log per group: 0.49 against 0.81 ns per element, measured here.
    Rounding: each sigmoid is within half an ulp of 1 (6e-8 absolute in its log) and a product of
    g factors adds at most g ulps, the order of float32 rounding of a 784-term sum. Measured on the
    default decoder: the log-likelihood's relative error against float64 is ~2e-7, the same as
    the straightforward float32 computation's (tests/test_metrics.py bounds both).
    """
    rows, d = logits.shape
    g = _group_size(d)
    relu = logits.clamp_min(0).sum(-1)
    products = logits.abs_().sigmoid_().view(rows, d // g, g).prod(-1)
    return relu - products.log_().sum(-1)


#: rows of logits per tile in evaluation: a (1024, 784) float32 tile (3 MB) stays in cache between
#: the matmul that writes it and the passes that read it, and the live memory of the importance
#: sampler no longer holds a whole chunk's logits (peak 36 -> 12.5 MiB at the default model).
#: Measured on the 2-core CI kind: as fast as untiled 5000-row chunks (512-2048 rows all alike).
EVAL_TILE_ROWS = 1024


class InferenceDecoder:
    """The decoder MLP rewritten for no-grad evaluation: the same function in fewer passes.

    - tanh(a) = 2 sigmoid(2a) - 1, and the affine map 2s - 1 is folded into the next layer's weights
      (W' = 2W, b' = b - W 1): a tanh layer becomes one matmul and one in-place sigmoid, whose
      kernel is 4-7x faster than tanh's on the CPUs measured (float32 tanh was a third of the
      importance sampler's non-matmul time). Other activations are kept as they are.
    - For a Bernoulli likelihood, sum_d x_d l_d goes through the weights (h . (x W) + x . b, one
      (B, H) product per point shared by all samples), so only softplus is evaluated over the
      logits, tile by tile (``EVAL_TILE_ROWS``) while they are still in cache.

    Same value as ``decoder`` up to float rounding (tests/test_metrics.py states the tolerance).
    Folded weights are computed in float64 and cast back.
    """

    def __init__(self, decoder: nn.Sequential):
        mods = list(decoder)
        self.layers: list[tuple[Tensor, Tensor, nn.Module | None]] = []
        scale, shift = 1.0, 0.0  # the next layer's input h = scale * stored + shift
        for i in range(0, len(mods) - 1, 2):
            lin, act = mods[i], mods[i + 1]
            w, b = self._affine(lin, scale, shift)
            if isinstance(act, nn.Tanh):
                self.layers.append((2 * w, 2 * b, None))  # stored s = sigmoid(2a); h = 2 s - 1
                scale, shift = 2.0, -1.0
            else:
                self.layers.append((w, b, act))
                scale, shift = 1.0, 0.0
        self.out_weight, self.out_bias = self._affine(mods[-1], scale, shift)

    @staticmethod
    def _affine(lin: nn.Linear, scale: float, shift: float) -> tuple[Tensor, Tensor]:
        w64, b64 = lin.weight.double(), lin.bias.double()
        return ((scale * w64).to(lin.weight.dtype),
                (b64 + shift * w64.sum(1)).to(lin.bias.dtype))

    def hidden(self, z: Tensor) -> Tensor:
        """The last hidden representation (as stored) for rows of z, shape (rows, H)."""
        h = z
        for w, b, act in self.layers:
            h = torch.addmm(b, h, w.T)
            h = h.sigmoid_() if act is None else act(h)
        return h

    def _x_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x W and x . b of the output layer, (B, H) and (B,): the importance sampler calls the
        decoder K / chunk times with the same tensor of points, so its products are kept (keyed by
        identity and version counter, which every in-place change bumps)."""
        cached = getattr(self, "_x_cache", None)  # (x itself, its version, the products)
        if cached is None or cached[0] is not x or cached[1] != x._version:
            cached = self._x_cache = (x, x._version, (x @ self.out_weight, x @ self.out_bias))
        return cached[2]

    def bernoulli_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``bernoulli_log_prob(x, decoder(z))`` for z of shape (S, B, Z), x of shape (B, D)."""
        s, b = z.shape[:2]
        h = self.hidden(z.reshape(s * b, -1))
        softplus = torch.cat([softplus_sum_(torch.addmm(self.out_bias, h[i:i + EVAL_TILE_ROWS],
                                                        self.out_weight.T))
                              for i in range(0, s * b, EVAL_TILE_ROWS)])
        xw, xb = self._x_terms(x)
        return (h.view(s, b, -1) * xw).sum(-1) + xb - softplus.view(s, b)


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

    @property
    def log_qz(self) -> Tensor:
        """(S, B) log q(z_s | x)."""
        if self.noise is None:
            return self.posterior.log_prob(self.z)
        return self.posterior.log_prob_reparameterized(self.z, self.noise)

    @property
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
        if torch.is_grad_enabled():  # the decoder on (S * B, Z) rows: no 3-d views per layer
            logits = self.decoder(z.reshape(-1, z.shape[-1])).view(*z.shape[:-1], -1)
            return bernoulli_log_prob(x, logits)
        return self.inference_decoder().bernoulli_log_prob(x, z)

    def inference_decoder(self) -> InferenceDecoder:
        """The no-grad form of the decoder, rebuilt whenever a decoder parameter changed (every
        in-place update, optimizer steps and load_state_dict included, bumps ``_version``)."""
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.decoder.parameters())
        if getattr(self, "_inference", (None,))[0] != key:
            with torch.no_grad():
                self._inference = (key, InferenceDecoder(self.decoder))
        return self._inference[1]

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
                noise: Tensor | None = None, **sample_opts) -> Terms:
        """The terms for n_samples reparameterized samples per point, from ``noise`` (drawn by
        ``latent.draw_noise``) or, if it is None, from noise drawn here with ``generator``."""
        q = self.encode(x)
        if noise is None:
            noise = self.latent.draw_noise(n_samples, len(x), generator, x)
        z = q.reparameterize(noise, **sample_opts)
        return Terms(self.log_likelihood(x, z), q.kl(), q, z, noise)
