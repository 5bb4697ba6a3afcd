"""Exact log p(x) for latents of 1 or 2 dimensions: quadrature on a grid.

log p(x) = log sum_i p(z_i) p(x|z_i) h^d over the cells of a regular grid of spacing h on the
box [-R, R]^d (the midpoint rule; vsimkus/demiss-vae computes the marginal the same way on
[-15, 15] with 4,000 steps in 1-d and [-10, 10]^2 with 500 x 500 cells in 2-d). For an integrand
that is smooth and negligible at the box's edge the midpoint rule converges faster than any power
of h, so two checks say whether a number can be trusted, per point:

- ``refinement``: the same sum on every other grid line (spacing 2h) differs from the full grid's
  by this much; the full grid's error is far smaller than that difference;
- ``edge_mass``: the share of the posterior mass in the outermost cells (a box that cuts the
  posterior off shows here).

On the same grid: the posterior mean E_p(z|x)[z] (He et al. 2019's posterior-mean space) and the
exact inference gap log p(x) - ELBO(x) = KL(q(z|x) || p(z|x)), with the ELBO's expected log
likelihood under q summed on the grid too (``q_mass`` says how much of q the grid holds).

For one stochastic layer with the N(0, I) prior (``variants.latents.GaussianLatent``). Where the
decoder's logits do not depend on x (the MLP decoder), the grid's logits are computed
once and shared by every point: log p(x|z_i) = x . l_i - sum softplus(l_i), one matmul.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .metrics import mean_se

GRID_CHUNK = 4096  # grid cells per decoder call
#: cells per axis where each point needs its own decoder pass per cell (autoregressive and LSTM
#: decoders): 400 in 1-d (h = 0.03 on [-6, 6]) and 200 in 2-d, against 4000 and 1000 where one
#: grid of logits serves every point; the midpoint rule's error on a Gaussian-like posterior of
#: sd s falls as exp(-2 pi^2 s^2 / h^2), and every record's ``refinement`` (the same sum on
#: every other line) shows what it is
CELLS_PER_POINT = {1: 400, 2: 200}


def grid(dim: int, radius: float, cells: int, dtype=torch.float64,
         device: str | torch.device = "cpu") -> tuple[Tensor, float]:
    """Cell midpoints of [-radius, radius]^dim with ``cells`` per axis (cells^dim, dim), and
    log h^dim."""
    if dim not in (1, 2):
        raise ValueError(f"quadrature needs a latent of 1 or 2 dimensions, not {dim}")
    h = 2 * radius / cells
    axis = -radius + h * (torch.arange(cells, dtype=dtype, device=device) + 0.5)
    pts = axis[:, None] if dim == 1 else torch.cartesian_prod(axis, axis)
    return pts, dim * math.log(h)


def shares_logits(model) -> bool:
    """Whether the decoder's logits depend on z alone (one grid serves every point)."""
    like = next(model.parameters())
    with torch.no_grad():
        return _shared_logits(model, like.new_zeros(1, model.latent.dim)) is not None


def _shared_logits(model, z: Tensor) -> Tensor | None:
    """The decoder's logits at z (G, D) when they do not depend on x, else None."""
    from variants.decoders import AutoregressiveDecoder, MLPDecoder

    dec = model.decoder
    if model.likelihood != "bernoulli":
        return None
    if isinstance(dec, MLPDecoder):
        return dec(z)
    if isinstance(dec, AutoregressiveDecoder) and dec.x_terms(z.new_zeros(1, dec.d)) is None:
        return dec.logits_given(None, None, z)
    return None


@torch.no_grad()
def log_likelihood_grid(model, x: Tensor, z: Tensor) -> Tensor:
    """log p(x_b | z_g) for every grid cell g and point b, (G, B) in float64."""
    dtype = next(model.parameters()).dtype
    zd = model.decoder_input(z.to(dtype))
    logits = _shared_logits(model, zd)
    if logits is not None:
        softplus = torch.nn.functional.softplus(logits.double()).sum(-1)  # (G,)
        return logits.double() @ x.double().T - softplus[:, None]
    return model.log_likelihood(x, zd[:, None, :].expand(len(z), len(x), z.shape[-1])).double()


class _Streaming:
    """Running logsumexp over grid chunks per point, with a weighted sum of z beside it."""

    def __init__(self, b: int, dim: int, like: Tensor):
        self.m = like.new_full((b,), -math.inf)
        self.s = like.new_zeros(b)
        self.sz = like.new_zeros(b, dim)

    def add(self, joint: Tensor, z: Tensor | None = None) -> None:
        if not len(joint):
            return
        m = torch.maximum(self.m, joint.max(0).values)
        scale = torch.exp(self.m - m).nan_to_num(0.0)  # -inf - -inf: nothing summed yet
        e = torch.exp(joint - m)
        self.s = self.s * scale + e.sum(0)
        if z is not None:
            self.sz = self.sz * scale[:, None] + e.T @ z
        self.m = m

    def log(self) -> Tensor:
        return self.m + torch.log(self.s)


@torch.no_grad()
def quadrature(model, x: Tensor, radius: float = 6.0, cells: int | None = None,
               block: int = 1000) -> dict[str, Tensor]:
    """Per point of x: ``log_px`` on the grid, ``log_px_coarse`` (every other grid line),
    ``refinement`` (|log_px - log_px_coarse|), ``edge_mass``, ``posterior_mean`` (B, d),
    ``elbo`` (on the grid, with the analytic KL) and ``inference_gap`` = log_px - elbo, and
    ``q_mass`` (the grid's share of q). ``cells`` per axis (even; default 4000 in 1-d, 1000 in
    2-d); points in blocks of ``block``."""
    dim = model.latent.dim
    cells = cells or (4000 if dim == 1 else 1000)
    if cells % 2:
        raise ValueError(f"cells must be even (the coarse grid takes every other line), not {cells}")
    parts = [_quadrature_block(model, x[i:i + block], radius, cells)
             for i in range(0, len(x), block)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _quadrature_block(model, x: Tensor, radius: float, cells: int) -> dict[str, Tensor]:
    dim, device = model.latent.dim, x.device
    z, log_h = grid(dim, radius, cells, device=device)
    idx = torch.arange(cells, device=device)
    if dim == 1:
        coarse, edge = idx % 2 == 0, (idx == 0) | (idx == cells - 1)
    else:  # cartesian_prod order: the first axis slow, the second fast
        i, j = idx.repeat_interleave(cells), idx.repeat(cells)
        coarse = (i % 2 == 0) & (j % 2 == 0)
        edge = (i == 0) | (i == cells - 1) | (j == 0) | (j == cells - 1)
    q = model.encode(x).double()
    log_pz = -0.5 * (z**2).sum(-1) - 0.5 * dim * math.log(2 * math.pi)  # (G,)
    like = x.new_zeros(0, dtype=torch.float64)
    full, thin, rim = (_Streaming(len(x), dim, like) for _ in range(3))
    q_mass = like.new_zeros(len(x))
    q_ll = like.new_zeros(len(x))
    for g in range(0, len(z), GRID_CHUNK):
        zg = z[g:g + GRID_CHUNK]
        ll = log_likelihood_grid(model, x, zg)  # (G, B)
        joint = ll + log_pz[g:g + GRID_CHUNK, None]
        full.add(joint, zg)
        thin.add(joint[coarse[g:g + GRID_CHUNK]])
        rim.add(joint[edge[g:g + GRID_CHUNK]])
        w_q = torch.exp(q.log_prob(zg[:, None, :]) + log_h)  # (G, B): q's mass per cell
        q_mass += w_q.sum(0)
        q_ll += (w_q * ll).sum(0)
    log_sum = full.log()
    log_px = log_sum + log_h
    elbo = q_ll / q_mass - q.kl().sum(-1)
    return {"log_px": log_px, "log_px_coarse": thin.log() + log_h + dim * math.log(2),
            "refinement": (log_px - (thin.log() + log_h + dim * math.log(2))).abs(),
            "edge_mass": torch.exp(rim.log() - log_sum),
            "posterior_mean": full.sz / full.s[:, None], "elbo": elbo,
            "inference_gap": log_px - elbo, "q_mass": q_mass}


def summary(result: dict[str, Tensor], nll_is: Tensor | None = None) -> dict:
    """The record of a quadrature: nll_exact and the inference gap with their standard errors,
    the worst refinement and edge mass, the least q mass; ``is_gap`` (nll_is - nll_exact, paired
    per point) where the IS estimates of the same points are given."""
    out = {}
    out["nll_exact"], out["nll_exact_se"] = mean_se(-result["log_px"])
    out["inference_gap"], out["inference_gap_se"] = mean_se(result["inference_gap"])
    out["refinement_max"] = result["refinement"].max().item()
    out["edge_mass_max"] = result["edge_mass"].max().item()
    out["q_mass_min"] = result["q_mass"].min().item()
    if nll_is is not None:
        out["is_gap"], out["is_gap_se"] = mean_se(nll_is.double() + result["log_px"])
    return out


#: He et al. 2019's grid for the posterior-mean space (toy.py, ``calc_infer_mean``): z in
#: [-20, 20) in steps of 0.1 for a 1-d latent; a 2-d latent takes 100 x 100 cells on [-10, 10]^2
PM_GRID = {1: (20.0, 400), 2: (10.0, 100)}
#: below this sd over the points, the model's posterior means do not move with x (its posterior
#: is the prior's, whatever x): there is nothing for the encoder to lag behind, and the slope is 0
PM_FLAT = 1e-3


@torch.no_grad()
def posterior_mean_space(model, x: Tensor) -> dict:
    """He et al. 2019's posterior-mean space on the points x: the model's exact posterior mean
    E_p(z|x)[z] on the grid of ``PM_GRID`` against the encoder's mean mu_q(x), and a summary
    pooled over the latent's dimensions: ``slope`` of the regression of mu_q on E_p[z|x] (0: the
    encoder ignores what the model's posterior says, the collapsed lag; 1: caught up), their
    correlation ``corr``, and ``spread``, the sd of E_p[z|x] over the points (where it is below
    ``PM_FLAT`` the slope is 0 and the correlation NaN). The model should be in eval mode."""
    radius, cells = PM_GRID[model.latent.dim]
    exact = _quadrature_block(model, x, radius, cells)["posterior_mean"]
    q = model.encode(x)
    enc = q.mu.double()
    m, e = exact.reshape(-1), enc.reshape(-1)
    spread = float(m.std()) if len(m) > 1 else 0.0
    if spread < PM_FLAT:
        slope, corr = 0.0, float("nan")
    else:
        mc, ec = m - m.mean(), e - e.mean()
        slope = float((mc * ec).sum() / (mc * mc).sum())
        corr = float((mc * ec).sum() / ((mc * mc).sum() * (ec * ec).sum()).sqrt().clamp_min(1e-300))
    return {"model_mean": exact, "encoder_mean": enc, "slope": slope, "corr": corr,
            "spread": spread}


def posterior_mean_row(model, x: Tensor) -> dict:
    """The history columns of one epoch end: ``val_pm_slope``, ``val_pm_corr``,
    ``val_pm_spread``, and the points themselves, space-separated with 4 significant digits
    (``val_pm_model``, ``val_pm_encoder``; a 2-d latent's coordinates point by point), from
    which the figure is drawn."""
    was_training = model.training
    model.eval()
    try:
        pm = posterior_mean_space(model, x)
    finally:
        model.train(was_training)
    text = lambda a: " ".join(f"{v:.4g}" for v in a.reshape(-1).tolist())  # noqa: E731
    return {"val_pm_slope": pm["slope"], "val_pm_corr": pm["corr"], "val_pm_spread": pm["spread"],
            "val_pm_model": text(pm["model_mean"]), "val_pm_encoder": text(pm["encoder_mean"])}
