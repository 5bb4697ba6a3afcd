"""The data's own likelihood where the data come from a known generating model with a 2-d latent
(``synthetic-lstm``: ``bench.data.tokens``): log p_gen(x) = log integral p(z) p(x|z) dz by
adaptive quadrature, the floor under every fitted model's expected NLL.

A fitted model's test NLL minus the generator's estimates KL(p_gen || p_model) per sequence (the
cross-entropy less the data's entropy), and E[log p_gen(x|z) - log p_gen(x)] over the test
sequences with their generating z (the dataset's oracle) estimates the generator's mutual
information I(x; z): how much a latent *could* carry about x here.

Quadrature (the midpoint rule, as ``bench.evaluation.quadrature``): a coarse grid of spacing
``coarse`` on [-radius, radius]^2 finds where the posterior lives; every coarse cell whose log
joint is within ``window`` nats of the point's best is split into ``split`` x ``split`` cells,
the rest keep their coarse value (each below e^-window of the best cell). Checks: ``edge_mass``
per point, the posterior's share in the outermost coarse ring (a box that cuts it off), and
``reference`` recomputes its first points on a grid twice as fine, wider and with a wider window
and records how far apart the two are.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

LogJoint = Callable[[Tensor, Tensor], Tensor]  # (tokens (rows, T), z (rows, 2)) -> (rows,)
ROWS = 16_384  # (point, cell) rows per call of the log joint
#: the grid: [-9, 9]^2 holds the prior's 4 unit Gaussians at (+-2, +-2) to 7 sd; coarse cells of
#: 0.5 within 30 nats of a point's best are split 5 x 5 (h = 0.1, against posterior sds of
#: 0.12-0.46 measured on the first test points)
GRID = {"radius": 9.0, "coarse": 0.5, "split": 5, "window": 30.0}
CHECK_POINTS = 20


def _cells(radius: float, h: float, dtype) -> Tensor:
    n = round(2 * radius / h)
    axis = -radius + h * (torch.arange(n, dtype=dtype) + 0.5)
    return torch.cartesian_prod(axis, axis)


def _offsets(h: float, split: int, dtype) -> Tensor:
    """Midpoints of a cell of side h split ``split`` x ``split``, relative to its centre."""
    axis = h * ((torch.arange(split, dtype=dtype) + 0.5) / split - 0.5)
    return torch.cartesian_prod(axis, axis)


def _rows(log_joint: LogJoint, x: Tensor, z: Tensor) -> Tensor:
    """log p(x_r, z_r) for paired rows, in chunks."""
    return torch.cat([log_joint(x[i:i + ROWS], z[i:i + ROWS]) for i in range(0, len(z), ROWS)])


def log_marginal(log_joint: LogJoint, x: Tensor, radius: float = GRID["radius"],
                 coarse: float = GRID["coarse"], split: int = GRID["split"],
                 window: float = GRID["window"]) -> dict[str, Tensor]:
    """Per point of ``x`` (n, T): ``log_px`` by the adaptive grid, ``edge_mass``, the
    posterior mean and sd of z (``mean``, ``sd``: (n, 2)) and ``cells`` (fine cells summed)."""
    dtype = torch.float64
    grid = _cells(radius, coarse, dtype)
    m = len(grid)
    edge = (grid.abs() > radius - coarse).any(1)
    lc = _rows(log_joint, x.repeat_interleave(m, 0), grid.repeat(len(x), 1)).view(len(x), m)
    off = _offsets(coarse, split, dtype)
    out = {k: [] for k in ("log_px", "edge_mass", "mean", "sd", "cells")}
    for xi, li in zip(x, lc, strict=True):
        sel = li > li.max() - window
        z = (grid[sel][:, None, :] + off).reshape(-1, 2)
        lf = _rows(log_joint, xi.expand(len(z), -1), z) + 2 * math.log(coarse / split)
        lw = torch.cat([lf, li[~sel] + 2 * math.log(coarse)])
        zs = torch.cat([z, grid[~sel]])
        log_px = torch.logsumexp(lw, 0)
        w = (lw - log_px).exp()
        mean = w @ zs
        out["log_px"].append(log_px)
        out["edge_mass"].append((li + 2 * math.log(coarse) - log_px).exp()[edge].sum())
        out["mean"].append(mean)
        out["sd"].append((w @ (zs - mean) ** 2).sqrt())
        out["cells"].append(torch.tensor(len(z)))
    return {k: torch.stack(v) for k, v in out.items()}


def reference(name: str, ds, check_points: int = CHECK_POINTS, grid: dict | None = None) -> dict:
    """The record of the data's generating model on the test split of dataset ``name``: its
    NLL (mean, SE over points, and per point), its mutual information I(x; z) estimated with
    each sequence's generating z, the quadrature's checks, and the first ``check_points``
    points again on a grid twice as fine, wider, with a wider window."""
    from ..data import GENERATING_MODELS
    from ..results import environment
    from .metrics import mean_se

    log_joint, log_prior, z_true = GENERATING_MODELS[name](ds)
    x = ds.test
    grid = dict(GRID if grid is None else grid)
    finer = {**grid, "radius": grid["radius"] + 1, "coarse": grid["coarse"] / 2,
             "window": grid["window"] + 20}
    start = time.perf_counter()
    q = log_marginal(log_joint, x, **grid)
    seconds = time.perf_counter() - start
    log_px_given_z = _rows(log_joint, x, z_true) - log_prior(z_true.double())
    k = min(check_points, len(x))
    fine = log_marginal(log_joint, x[:k], **finer)
    diff = fine["log_px"] - q["log_px"][:k]
    rec = {"kind": "generator", "dataset": name, "points": len(x),
           "test_sha256": ds.digests.get("test"), "seconds": seconds,
           "grid": grid,
           "edge_mass_max": q["edge_mass"].max().item(),
           "fine_cells_median": q["cells"].double().median().item(),
           "posterior_sd_median": q["sd"].median().item(),
           "check": {"points": k, "grid": finer,
                     "max_abs_diff": diff.abs().max().item(), "mean_diff": diff.mean().item()},
           "per_point": {"log_px": q["log_px"].tolist()}}
    env = environment("cpu", {}, {})
    rec["env"] = {k: env.get(k) for k in ("git_commit", "git_dirty", "torch", "cpu_model",
                                          "cpu_capability", "threads", "host")}
    rec["nll"], rec["nll_se"] = mean_se(-q["log_px"])
    rec["mi"], rec["mi_se"] = mean_se(log_px_given_z - q["log_px"])
    return rec


def record_path(results: Path, profile: str, dataset: str) -> Path:
    return Path(results) / profile / f"generator-{dataset}.json"


def attach(profile, results: Path, data_dir: str | None, runs: list) -> dict:
    """After the grid: the generating model's record of every dataset of the profile's runs
    whose generator is known (``bench.data.GENERATING_MODELS``), where it is missing; written
    whole or not at all."""
    from ..data import GENERATING_MODELS, load
    from ..results import write_json

    counts = {}
    for name in sorted({run.config.dataset for _, run in runs} & set(GENERATING_MODELS)):
        path = record_path(results, profile.name, name)
        if path.is_file():
            continue
        print(f"vae-bench: {name}: the generating model's log p(x) on the test split "
              "(quadrature)", file=sys.stderr)
        rec = reference(name, load(name, data_dir))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, rec)
        counts["generator reference done"] = counts.get("generator reference done", 0) + 1
    return counts
