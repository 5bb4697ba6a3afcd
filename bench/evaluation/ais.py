"""Annealed importance sampling (AIS) for log p(x), and bidirectional Monte Carlo (BDMC).

AIS (Neal 2001) moves C chains per data point through T intermediate densities
f_t(z) = f_0(z)^(1 - b_t) (p(z) p(x|z))^b_t, 0 = b_0 < ... < b_T = 1, from an initial density f_0
it can sample exactly: the encoder's q(z|x) ("AIS + encoder", Wu et al. 2017, the default) or the
prior p(z) (``start="prior"``: then f_t = p(z) p(x|z)^b_t, Wu et al.'s section 2.2). Each chain's
log-weight log w = sum_t (b_t - b_{t-1}) [log p(z, x) - log f_0(z)] at the state before the t-th
transition is an unbiased estimate of p(x) in exp (E w = p(x)), so logmeanexp over chains is a
stochastic lower bound on log p(x) (Jensen), and so is IS: with T = 1 AIS *is* IS with K = C
samples from f_0 (``tests/test_ais.py`` checks it bit for bit with the same noise).

Transition: one Hamiltonian Monte Carlo trajectory of L leapfrog steps per intermediate
distribution (Wu et al.: L = 10), with a diagonal mass matrix whose inverse is q(z|x)'s variance
where the posterior gives one (``mass="posterior"``: the chains move in q's whitened
coordinates; ``"identity"`` otherwise), and a Metropolis correction, so that each transition
leaves f_t invariant.

Step size: one per data point and stage of the schedule, tuned toward an acceptance rate of
0.65 (Wu et al.'s target) in a short **pilot** run with its own noise, then **frozen** for the
annealing run. Every public implementation adapts the step size during annealing itself
(tonywu95/eval_gen ``sampling/samplers.py``: x1.02 / x0.98 per step from the running acceptance;
lxuechen/BDMC ``ais.py``: per chain from its cumulative acceptance). An adapting kernel makes
the transition at step t depend on the chain's own earlier states, so the product of weights is
no longer the ratio of a fixed sequence of invariant kernels and E w = p(x) no longer holds
exactly. Here the kernel at every step depends on x, the pilot's noise and t only: the weights
are unbiased given the tuned step sizes (``tests/test_ais.py`` checks the frozen estimator
against the closed form of a linear-Gaussian model).

Schedule: the sigmoid schedule of eval_gen ``algorithms/ais.py`` (rad = 4): b_t = sigma(rad (2 t
/ T - 1)), rescaled to [0, 1].

BDMC (Grosse, Ghahramani & Adams 2015): on data simulated from the model (z ~ p(z), x ~ p(x|z)),
forward AIS is a stochastic lower bound on log p(x), and AIS run backwards from the z that
generated x (an exact posterior sample) a stochastic upper bound; their gap bounds the forward
estimate's error on data like the model's own (Wu et al.: "not guaranteed to hold for the real
data").

Memory is O(block x chains x latent) whatever T: blocks of ``AIS_BLOCK`` points are annealed in
turn, and each block's noise depends on (seed, block) only. What an autoregressive decoder
computes from x alone is computed once per block (``variants.decoders`` x-terms).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from variants.latents import GaussianPosterior

from ..seeding import generator

AIS_BLOCK = 100  # data points annealed together (fixes which noise each point gets)
STARTS = ("encoder", "prior")
MASSES = ("posterior", "identity")
TARGET_ACCEPT = 0.65  # Wu et al. 2017 and eval_gen's HMC target
STEP_BOUNDS = (1e-4, 10.0)  # in whitened units (eval_gen clips a raw step to [1e-4, 0.5])


class AISError(ValueError):
    """A model AIS cannot anneal (a categorical latent: HMC needs a continuous one)."""


@dataclass(frozen=True)
class AISSettings:
    """What an AIS estimate depends on besides the model, the points and the seed."""

    steps: int = 500  # T: intermediate distributions (b_1 .. b_T)
    chains: int = 16  # C: chains per data point (Wu et al.: 16)
    leapfrog: int = 10  # L: leapfrog steps per HMC trajectory (Wu et al.: 10)
    start: str = "encoder"  # f_0: the encoder's q(z|x) or the prior p(z)
    mass: str = "posterior"  # inverse mass matrix: q's variances, or the identity
    pilot_steps: int = 0  # intermediate distributions of the tuning pilot (0: max(40, T / 10))
    stages: int = 4  # the schedule's stages, each with its own tuned step size per point
    target_accept: float = TARGET_ACCEPT

    def __post_init__(self) -> None:
        if self.steps < 1 or self.chains < 1 or self.leapfrog < 1 or self.stages < 1:
            raise AISError("AIS steps, chains, leapfrog steps and stages must be >= 1")
        if self.start not in STARTS:
            raise AISError(f"ais start {self.start!r} unknown; allowed: {', '.join(STARTS)}")
        if self.mass not in MASSES:
            raise AISError(f"ais mass {self.mass!r} unknown; allowed: {', '.join(MASSES)}")

    @property
    def pilot(self) -> int:
        return self.pilot_steps or max(40, self.steps // 10)

    def as_dict(self) -> dict:
        return {**asdict(self), "pilot_steps": self.pilot}


def sigmoid_schedule(steps: int, rad: float = 4.0) -> Tensor:
    """b_0 = 0 < ... < b_T = 1 (float64, T + 1 values): eval_gen's ``sigmoid_schedule(T + 1,
    rad)``; with T = 1 it is (0, 1), plain importance sampling."""
    if steps == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    t = torch.linspace(-rad, rad, steps + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


def check_model(model) -> None:
    """AISError unless the model's latent is continuous (HMC moves z along gradients)."""
    if not getattr(model.latent, "continuous", False):
        raise AISError(f"AIS needs a continuous latent; this model's is "
                       f"{type(model.latent).__name__} (no HMC on discrete codes); allowed: "
                       "Gaussian latents, one or two stochastic layers")


def differentiable_log_likelihood(model, x: Tensor) -> Callable[[Tensor], Tensor]:
    """z (S, B, Z) -> log p(x|z) (S, B), differentiable in z. What an autoregressive decoder
    computes from x alone (its x-terms) is computed once here, without a graph."""
    from variants.decoders import AutoregressiveDecoder, bernoulli_log_prob

    dec = model.decoder
    if model.likelihood == "bernoulli" and isinstance(dec, AutoregressiveDecoder):
        with torch.no_grad():
            terms = dec.x_terms(x)

        def log_lik(z: Tensor) -> Tensor:
            return bernoulli_log_prob(x, dec.logits_given(terms, x, model.decoder_input(z)))
        return log_lik
    return lambda z: model.log_likelihood(x, z)


class _Block:
    """The densities of one block of points: log f_0, log p(x, z), and their gradients."""

    def __init__(self, model, x: Tensor, q, settings: AISSettings):
        self.model, self.q, self.settings = model, q, settings
        self.prior = settings.start == "prior"
        # a diagonal Gaussian q with the N(0, I) prior: its densities' gradients in closed form
        self.gaussian = isinstance(q, GaussianPosterior)
        self.log_lik = differentiable_log_likelihood(model, x)
        logvar = getattr(q, "logvar", None)
        if settings.mass == "posterior" and logvar is not None:
            self.scale = torch.exp(0.5 * logvar).detach()  # (B, Z): sigma_q, whitening
        else:
            self.scale = torch.ones(len(q), model.latent.dim, dtype=x.dtype, device=x.device)

    def evaluate(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """log f_0(z), log p(x, z) (S, B) and their gradients in z (S, B, Z)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_pz = self.q.prior_log_prob(z)
            log_joint = log_pz + self.log_lik(z)
            g_joint, = torch.autograd.grad(log_joint.sum(), z,
                                           retain_graph=self.prior and not self.gaussian)
            if not self.gaussian:
                log_init = log_pz if self.prior else self.q.log_prob(z)
                g_init, = torch.autograd.grad(log_init.sum(), z)
        z = z.detach()
        if self.gaussian and self.prior:
            log_init, g_init = log_pz, -z
        elif self.gaussian:
            log_init = self.q.log_prob(z)
            g_init = -(z - self.q.mu) * torch.exp(-self.q.logvar)
        return log_init.detach(), log_joint.detach(), g_init.detach(), g_joint.detach()

    def initial(self, n: int, gen: torch.Generator) -> Tensor:
        """n exact samples per point from f_0, (n, B, Z)."""
        if not self.prior:
            return self.q.sample(n, gen)
        b, dim = self.scale.shape
        z = self.model.prior_sample(n * b, gen).to(self.scale)
        return z.view(n, b, dim)


class _State:
    """Chains at their current positions with the densities there (no re-evaluation)."""

    def __init__(self, block: _Block, z: Tensor):
        self.block, self.z = block, z
        self.log_init, self.log_joint, self.g_init, self.g_joint = block.evaluate(z)

    def log_f(self, beta: float) -> Tensor:
        return (1 - beta) * self.log_init + beta * self.log_joint

    def grad(self, beta: float) -> Tensor:
        return (1 - beta) * self.g_init + beta * self.g_joint

    def increment(self) -> Tensor:
        """log p(x, z) - log f_0(z) in float64: the weight's increment per unit of b."""
        return self.log_joint.double() - self.log_init.double()


def _hmc(state: _State, beta: float, eps: Tensor, leapfrog: int,
         gen: torch.Generator) -> tuple[_State, Tensor]:
    """One HMC trajectory leaving f_beta invariant, in q's whitened coordinates: momentum
    r ~ N(0, I), dz = eps * scale * r, dr = eps * scale * grad log f. ``eps`` (B,) per point.
    Returns the new state and the acceptance indicator (C, B)."""
    block = state.block
    step = (eps[:, None] * block.scale).to(state.z.dtype)  # (B, Z)
    r0 = torch.randn(state.z.shape, generator=gen, dtype=state.z.dtype, device=state.z.device)
    r = r0 + 0.5 * step * state.grad(beta)
    new = state
    for i in range(leapfrog):
        z = new.z + step * r
        new = _State(block, z)
        if i < leapfrog - 1:
            r = r + step * new.grad(beta)
    r = r + 0.5 * step * new.grad(beta)
    log_ratio = (new.log_f(beta).double() - 0.5 * (r.double() ** 2).sum(-1)) \
        - (state.log_f(beta).double() - 0.5 * (r0.double() ** 2).sum(-1))
    u = torch.rand(log_ratio.shape, generator=gen, dtype=torch.float64, device=log_ratio.device)
    accept = (torch.log(u) < log_ratio) & torch.isfinite(log_ratio)
    keep = accept[..., None]
    merged = object.__new__(_State)
    merged.block = block
    merged.z = torch.where(keep, new.z, state.z)
    merged.log_init = torch.where(accept, new.log_init, state.log_init)
    merged.log_joint = torch.where(accept, new.log_joint, state.log_joint)
    merged.g_init = torch.where(keep, new.g_init, state.g_init)
    merged.g_joint = torch.where(keep, new.g_joint, state.g_joint)
    return merged, accept


def _stage_of(t: int, steps: int, stages: int) -> int:
    """The stage of transition t (1 .. T - 1) of a T-step schedule: equal shares of t."""
    return min(stages - 1, (t - 1) * stages // max(steps - 1, 1))


def _anneal(block: _Block, z0: Tensor, betas: Tensor, log_eps: Tensor, settings: AISSettings,
            gen: torch.Generator, adapt: bool = False,
            reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Run the chains from z0 through ``betas`` (forward: b_0 -> b_T; ``reverse``: b_T -> b_0)
    and return the log-weights (C, B) in float64 and the mean acceptance per point (B,).
    ``log_eps`` (stages, B): the log step sizes per stage and point; with ``adapt`` (the pilot)
    updated in place toward the target acceptance as the chains go."""
    steps = len(betas) - 1
    state = _State(block, z0)
    log_w = torch.zeros(z0.shape[:2], dtype=torch.float64, device=z0.device)
    accepted = torch.zeros(z0.shape[1], dtype=torch.float64, device=z0.device)
    moves = 0
    order = range(1, steps + 1) if not reverse else range(steps, 0, -1)
    for t in order:
        delta = float(betas[t] - betas[t - 1])
        log_w = log_w + (delta if not reverse else -delta) * state.increment()
        last = t == (steps if not reverse else 1)
        if last:
            break
        beta = float(betas[t] if not reverse else betas[t - 1])
        stage = _stage_of(t if not reverse else t - 1, steps, settings.stages)
        state, acc = _hmc(state, beta, log_eps[stage].exp(), settings.leapfrog, gen)
        rate = acc.double().mean(0)
        accepted += rate
        moves += 1
        if adapt:  # the pilot only: a Robbins-Monro step on log eps
            lo, hi = STEP_BOUNDS
            log_eps[stage] = (log_eps[stage] + (rate - settings.target_accept)).clamp(
                math.log(lo), math.log(hi)).to(log_eps.dtype)
            log_eps[stage + 1:] = log_eps[stage]  # later stages start from here
    return log_w, accepted / max(moves, 1)


def tune_steps(block: _Block, settings: AISSettings, gen: torch.Generator) -> Tensor:
    """The pilot: a forward AIS run of ``settings.pilot`` distributions whose step size adapts
    per point toward the target acceptance; returns the log step sizes (stages, B) it ended
    each stage with, frozen for the annealing run."""
    b = len(block.q)
    log_eps = torch.full((settings.stages, b), math.log(0.1), dtype=torch.float64,
                         device=block.scale.device)
    pilot = AISSettings(**{**asdict(settings), "steps": settings.pilot})
    z0 = block.initial(settings.chains, gen)
    _anneal(block, z0, sigmoid_schedule(pilot.steps), log_eps, pilot, gen, adapt=True)
    return log_eps


def ais_points(model, x: Tensor, settings: AISSettings, seed: int,
               stream: str = "ais") -> dict[str, Tensor]:
    """Per point of x: ``log_px`` (logmeanexp of the C chains' log-weights), the chains'
    log-weights ``log_w`` (C, N), the mean acceptance ``accept`` and the frozen step sizes
    ``step`` (stages, N). Noise: block b of x anneals with ``generator(seed, stream, b)``, its
    pilot with ``generator(seed, stream + "-pilot", b)``."""
    check_model(model)
    model.eval()
    out = {"log_px": [], "log_w": [], "accept": [], "step": []}
    betas = sigmoid_schedule(settings.steps)
    for block_index, i in enumerate(range(0, len(x), AIS_BLOCK)):
        xb = x[i:i + AIS_BLOCK]
        with torch.no_grad():
            q = model.encode(xb)  # its tensors need no graph: AIS differentiates in z only
        block = _Block(model, xb, q, settings)
        log_eps = tune_steps(block, settings,
                             generator(seed, f"{stream}-pilot", block_index, device=x.device)) \
            if settings.steps > 1 else torch.zeros(settings.stages, len(xb), dtype=torch.float64)
        gen = generator(seed, stream, block_index, device=x.device)
        z0 = block.initial(settings.chains, gen)
        log_w, accept = _anneal(block, z0, betas, log_eps, settings, gen)
        out["log_px"].append(torch.logsumexp(log_w, 0) - math.log(settings.chains))
        out["log_w"].append(log_w)
        out["accept"].append(accept)
        out["step"].append(log_eps.exp())
    return {"log_px": torch.cat(out["log_px"]), "log_w": torch.cat(out["log_w"], 1),
            "accept": torch.cat(out["accept"]), "step": torch.cat(out["step"], 1)}


@torch.no_grad()
def simulate(model, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """n points from the model itself: z ~ p(z), x ~ p(x|z) (ancestral sampling, pixel by pixel
    in raster order, for an autoregressive decoder). Returns (x (n, D), z (n, Z))."""
    from variants.decoders import AutoregressiveDecoder

    check_model(model)
    like = next(model.parameters())
    z = model.prior_sample(n, gen).to(dtype=like.dtype, device=like.device)
    zd = model.decoder_input(z)
    dec = model.decoder
    if model.likelihood == "gaussian":
        mean = dec(zd)
        eps = torch.randn(mean.shape, generator=gen, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * model.log_var) * eps, z
    if isinstance(dec, AutoregressiveDecoder) and dec.x_terms(like.new_zeros(1, dec.d)) is not None:
        x = like.new_zeros(n, dec.d)
        for d in range(dec.d):
            p = torch.sigmoid(dec.logits(x, zd.unsqueeze(0))[0, :, d])
            x[:, d] = (torch.rand(p.shape, generator=gen, dtype=p.dtype, device=p.device)
                       < p).to(x.dtype)
        return x, z
    logits = dec.logits_given(None, None, zd) if isinstance(dec, AutoregressiveDecoder) \
        else dec(zd)
    p = torch.sigmoid(logits)
    return (torch.rand(p.shape, generator=gen, dtype=p.dtype, device=p.device) < p).to(p.dtype), z


def bdmc(model, n: int, settings: AISSettings, seed: int) -> dict[str, Tensor]:
    """BDMC on n points simulated from the model (``generator(seed, "bdmc-data")``): the forward
    AIS lower bound and the reverse AIS upper bound per point (chains of the reverse run all start
    at the generating z), and their gap. Step sizes are tuned by a forward pilot on the same
    simulated x and shared by both directions."""
    check_model(model)
    model.eval()
    x, z_true = simulate(model, n, generator(seed, "bdmc-data", device=next(model.parameters()).device))
    lower = ais_points(model, x, settings, seed, stream="bdmc-forward")
    betas = sigmoid_schedule(settings.steps)
    upper, accept = [], []
    for block_index, i in enumerate(range(0, n, AIS_BLOCK)):
        xb, zb = x[i:i + AIS_BLOCK], z_true[i:i + AIS_BLOCK]
        with torch.no_grad():
            q = model.encode(xb)
        block = _Block(model, xb, q, settings)
        log_eps = lower["step"][:, i:i + AIS_BLOCK].log()
        gen = generator(seed, "bdmc-reverse", block_index, device=x.device)
        z0 = zb.unsqueeze(0).expand(settings.chains, *zb.shape).clone()
        log_w, acc = _anneal(block, z0, betas, log_eps, settings, gen, reverse=True)
        # E exp(log_w) = 1 / p(x): -logmeanexp is a stochastic upper bound on log p(x)
        upper.append(-(torch.logsumexp(log_w, 0) - math.log(settings.chains)))
        accept.append(acc)
    upper_t = torch.cat(upper)
    return {"lower": lower["log_px"], "upper": upper_t, "gap": upper_t - lower["log_px"],
            "accept_forward": lower["accept"], "accept_reverse": torch.cat(accept)}
