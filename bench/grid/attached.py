"""Evaluations attached to a finished run: AIS (with BDMC) and exact quadrature, each its own
record beside ``metrics.json`` that never changes the run's id, its metrics or any of its files.

A record is named by what decides its numbers (``ais-T500-C16-L10-encoder-N200-s0.json``), so
evaluations with other settings sit side by side, one computed once is found again, and a
record is written whole (a temporary file renamed into place) or not at all. The points are a
fixed subset of the run's test split: ``subset`` draws them from the evaluation seed alone, so
every run of a profile is evaluated on the same points.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from variants.errors import ConfigError
from variants.latents import GaussianLatent

from ..evaluation import ais as ais_mod
from ..evaluation.metrics import encode, mean_se, nll_is_points
from ..machine import numerics
from ..results import write_json
from ..seeding import generator

RECORD_PREFIX = "ais-"


class NotAnnealable(ConfigError):
    """The run's model has a latent AIS cannot anneal (categorical codes)."""


def settings_of(eval_cfg, **override) -> tuple[ais_mod.AISSettings, int, int]:
    """(AIS settings, points, BDMC points) of an eval config, with CLI overrides where given."""
    get = {k: (override.get(k) if override.get(k) is not None else getattr(eval_cfg, f"ais_{k}"))
           for k in ("steps", "chains", "leapfrog", "start", "points")}
    bdmc = override.get("bdmc")
    bdmc = eval_cfg.bdmc_points if bdmc is None else bdmc
    settings = ais_mod.AISSettings(steps=get["steps"], chains=get["chains"],
                                   leapfrog=get["leapfrog"], start=get["start"])
    return settings, get["points"], bdmc


def record_name(settings: ais_mod.AISSettings, points: int, seed: int, bdmc: int = 0) -> str:
    """The file name of an AIS record: every setting that decides its numbers (``points`` as
    asked for; the record says how many the test split had)."""
    name = (f"{RECORD_PREFIX}T{settings.steps}-C{settings.chains}-L{settings.leapfrog}-"
            f"{settings.start}-N{points}-s{seed}")
    if settings.mass != "posterior":
        name += f"-{settings.mass}"
    if bdmc:
        name += f"-bdmc{bdmc}"
    return name + ".json"


def subset(n_test: int, points: int, seed: int) -> torch.Tensor:
    """Indices of the evaluated test points: all of them if ``points`` >= the split, else a
    uniformly drawn subset (``generator(seed, "ais-points")``), in increasing order."""
    if points >= n_test:
        return torch.arange(n_test)
    perm = torch.randperm(n_test, generator=generator(seed, "ais-points"))
    return perm[:points].sort().values


def read_record(run_dir: Path, name: str) -> dict | None:
    """The attached record ``name`` of a run, or None where it is missing or unreadable."""
    path = Path(run_dir) / name
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and ("nll_ais" in record or "skipped" in record) \
        else None


def compute(model, cfg, x_test: torch.Tensor, settings: ais_mod.AISSettings, points: int,
            bdmc_points: int = 0) -> dict:
    """The AIS record of a model on its test split (already cut to ``eval.test_points``): AIS
    on the subset, IS with the run's K on the same points (paired per point), and where the
    latent has 1 or 2 dimensions the quadrature's exact log p(x) on them too; BDMC on
    ``bdmc_points`` simulated points."""
    from ..evaluation import quadrature
    from ..results import environment

    model.eval()  # every number of the record is the eval-mode model's (dropout off), as a run's
    seed = cfg.eval.seed
    idx = subset(len(x_test), points, seed)
    x = x_test[idx.to(x_test.device)]
    start = time.perf_counter()
    if model.latent.dim == 0:  # no latent: log p(x) is the decoder's, exact
        with torch.no_grad():
            log_px = model.exact_log_marginal(x)
        result = {"log_px": log_px, "accept": torch.ones_like(log_px)}
    else:
        result = ais_mod.ais_points(model, x, settings, seed)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        nll_is, ess = nll_is_points(model, encode(model, x), x, cfg.eval.is_samples, seed)
    nll_ais = -result["log_px"]
    record = {"kind": "ais", "settings": settings.as_dict(), "seed": seed,
              "points": len(idx), "test_points": len(x_test),
              "is_samples": cfg.eval.is_samples, "seconds": seconds,
              "seconds_per_point": seconds / len(idx),
              "accept": result["accept"].mean().item(),
              "accept_min": result["accept"].min().item(),
              "per_point": {"index": idx.tolist(), "nll_ais": nll_ais.tolist(),
                            "nll_is": nll_is.double().tolist()}}
    record["nll_ais"], record["nll_ais_se"] = mean_se(nll_ais)
    record["nll_is_subset"], record["nll_is_subset_se"] = mean_se(nll_is)
    record["is_minus_ais"], record["is_minus_ais_se"] = mean_se(nll_is.double() - nll_ais)
    record["ess_subset"] = ess.mean().item()
    if model.latent.dim in (1, 2) and isinstance(model.latent, GaussianLatent):
        # exact log p(x) on the grid: on the whole split where one grid serves every point or
        # the latent is 1-d (400 decoder passes a point: an LSTM's split of 2,000 in 44 s where
        # AIS took 380 s for 200 points), its IS per point then the run's own nll_is (same seed
        # and blocks); else (2-d, a pass per cell and point) on the subset
        shared = quadrature.shares_logits(model)
        whole = shared or model.latent.dim == 1
        xq = x_test if whole else x
        cells = None if shared else quadrature.CELLS_PER_POINT[model.latent.dim]
        quad = quadrature.quadrature(model, xq, cells=cells)
        with torch.no_grad():
            is_q = nll_is_points(model, encode(model, xq), xq, cfg.eval.is_samples, seed)[0] \
                if whole else nll_is
        exact = quadrature.summary(quad, is_q)
        exact["points"] = "split" if whole else "subset"
        exact["cells"] = cells or (4000 if model.latent.dim == 1 else 1000)
        log_px_sub = quad["log_px"][idx.to(quad["log_px"].device)] if whole else quad["log_px"]
        exact["nll_exact_subset"] = -log_px_sub.mean().item()
        exact["ais_minus_exact"], exact["ais_minus_exact_se"] = mean_se(nll_ais + log_px_sub)
        record["exact"] = exact
    if bdmc_points:
        b = ais_mod.bdmc(model, bdmc_points, settings, seed)
        record["bdmc"] = {"points": bdmc_points, "lower": mean_se(b["lower"])[0],
                          "upper": mean_se(b["upper"])[0],
                          "accept_reverse": b["accept_reverse"].mean().item()}
        record["bdmc"]["gap"], record["bdmc"]["gap_se"] = mean_se(b["gap"])
        record["bdmc_gap"] = record["bdmc"]["gap"]
    env = environment(cfg.device, {}, {})
    record["env"] = {**{k: env.get(k) for k in ("git_commit", "git_dirty", "torch", "cpu_model",
                                                "cpu_capability", "threads", "host")},
                     "numerics": numerics.active()}
    for k, v in record.items():  # NaN would not be JSON
        if isinstance(v, float) and not math.isfinite(v):
            record[k] = None
    return record


def evaluate_ais(run_dir: Path, data_dir: str | None = None, force: bool = False,
                 **override) -> tuple[Path, dict]:
    """The AIS record of a finished run with the run's eval.ais_* settings (or ``override``:
    steps, chains, leapfrog, start, points, bdmc): read where it exists, else computed and
    written beside metrics.json. Returns (its path, the record)."""
    from ..config import from_dict
    from ..results import read_json
    from .runner import load_run

    try:
        mode = from_dict(read_json(Path(run_dir) / "config.json")).numerics
    except (OSError, ValueError, KeyError, TypeError):
        mode = None  # load_run names what is wrong
    if mode is not None and mode != numerics.active():  # its kernels, as it was trained
        return numerics.run_in_mode(mode, _evaluate_in_mode, run_dir, data_dir, force, override)
    cfg, model, dataset = load_run(Path(run_dir), data_dir)
    numerics.apply(cfg.numerics)
    try:
        settings, points, bdmc_points = settings_of(cfg.eval, **override)
    except ais_mod.AISError as e:
        raise ConfigError(str(e)) from None
    try:
        ais_mod.check_model(model)
    except ais_mod.AISError as e:
        raise NotAnnealable(str(e)) from None
    if points < 1:
        raise ConfigError("AIS needs test points: eval.ais_points=0 here; allowed: "
                          "--ais-points N or --set eval.ais_points=N with N >= 1")
    path = Path(run_dir) / record_name(settings, points, cfg.eval.seed, bdmc_points)
    existing = read_record(run_dir, path.name)
    if existing is not None and not force:
        return path, existing
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    record = compute(model, cfg, dataset.test.to(dtype=dtype, device=device), settings, points,
                     bdmc_points)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    record["run_id"] = metrics.get("run_id")
    record["suite_version"] = metrics.get("suite_version")
    write_json(path, record)
    return path, record


def _evaluate_in_mode(run_dir, data_dir, force, override):
    return evaluate_ais(run_dir, data_dir, force, **override)


def profile_record(run_dir: Path, cfg) -> dict | None:
    """The AIS record a run's eval config asks for (eval.ais_points > 0), if the run has it."""
    if not cfg.eval.ais_points:
        return None
    settings, points, bdmc_points = settings_of(cfg.eval)
    return read_record(run_dir, record_name(settings, points, cfg.eval.seed, bdmc_points))


#: the scalars of an AIS record a summary row carries (flattened)
SUMMARY_KEYS = ("nll_ais", "nll_ais_se", "is_minus_ais", "is_minus_ais_se", "nll_is_subset",
                "accept", "seconds_per_point", "bdmc_gap")


def summary_scalars(record: dict, nll_is: float | None) -> dict:
    """What a summary row shows of an AIS record: ``nll_ais`` and the paired IS - AIS gap on its
    points, the whole split's IS NLL corrected by that gap (``nll_is_corrected``), the BDMC gap,
    and from the quadrature ``nll_exact`` and the exact inference gap."""
    out = {k: record[k] for k in SUMMARY_KEYS if record.get(k) is not None}
    out = {("ais_" + k if k in ("accept", "seconds_per_point") else k): v for k, v in out.items()}
    out["ais_points"] = record.get("points")
    if nll_is is not None and record.get("is_minus_ais") is not None:
        out["nll_is_corrected"] = nll_is - record["is_minus_ais"]
    exact = record.get("exact")
    if exact:  # quadrature: nll_exact and is_gap over its points (the split, or the subset)
        for k in ("nll_exact", "nll_exact_se", "is_gap", "is_gap_se", "inference_gap",
                  "nll_exact_subset", "ais_minus_exact"):
            if exact.get(k) is not None:
                out[k] = exact[k]
        out["exact_points"] = exact.get("points")
    return out


def pending_records(profile, results: Path,
                    runs: list | None = None) -> tuple[list[tuple[str, Path]], int]:
    """The finished runs of a profile whose eval config asks for an AIS record they lack
    ((label, run directory) in grid order; those without ``model.pt`` are trained again first),
    and how many of the grid ask for one."""
    from ..results import finished, read_json
    from .profile import grid
    from .suite import runs_dir

    out, asked = [], 0
    for label, run in grid(profile) if runs is None else runs:
        cfg = run.config
        if not cfg.eval.ais_points:
            continue
        asked += 1
        path = runs_dir(results, profile) / run.name
        if not finished(path) or read_json(path / "metrics.json").get("status") != "ok":
            continue
        if profile_record(path, cfg) is None:
            out.append((label, path))
    return out, asked


def pending_line(profile, results: Path, runs: list | None = None) -> list[str]:
    """The dry run's line on AIS records (none where the profile asks for none)."""
    todo, asked = pending_records(profile, results, runs)
    if not asked:
        return []
    bare = sum(not (p / "model.pt").is_file() for _, p in todo)
    return [f"AIS (eval.ais_points): {len(todo)} finished runs lack their record"
            + (f" ({bare} without weights: trained again first)" if bare else "")
            + "; runs still to train get theirs as each finishes (one local job), else after "
            "the grid"]


def attach_all(profile, results: Path, data_dir: str | None = None,
               runs: list | None = None, generating_model: bool = True) -> dict:
    """The AIS record of every finished run (of ``runs``) that lacks the one its profile asks
    for, one run at a time (each written when done, so an interrupted pass resumes). A run
    without weights (a committed record) is trained again first (``runner.rebuild_weights``: its
    weights are kept only if its metrics equal the record's). A run whose latent AIS cannot
    anneal (categorical) is named and recorded as such. Then the data's generating model's
    record where the profile's dataset has one (``bench.evaluation.oracle``) unless
    ``generating_model`` is off (the suite's pass after each run); counts of what was done."""
    from .profile import grid
    from .runner import rebuild_weights

    runs = grid(profile) if runs is None else runs  # (label, resolved run): the grid, once
    todo, _ = pending_records(profile, results, runs)
    by_name = {run.name: run for _, run in runs}
    counts = {}
    for label, path in todo:
        ev = by_name[path.name].config.eval  # the profile's settings, not the record's config.json
        if not (path / "model.pt").is_file():  # records are committed without their weights
            print(f"vae-bench: {label}: no weights for AIS; training {path.name} again (its "
                  "weights are kept only if its metrics equal the record's)", file=sys.stderr)
            rebuild_weights(by_name[path.name], path, data_dir)
            counts["weights rebuilt"] = counts.get("weights rebuilt", 0) + 1
        try:
            evaluate_ais(path, data_dir, steps=ev.ais_steps, chains=ev.ais_chains,
                         leapfrog=ev.ais_leapfrog, start=ev.ais_start, points=ev.ais_points,
                         bdmc=ev.bdmc_points)
            key = "ais done"
        except NotAnnealable as e:  # recorded, so that the next pass does not try again
            settings, points, bdmc_points = settings_of(ev)
            write_json(path / record_name(settings, points, ev.seed, bdmc_points),
                   {"kind": "ais", "skipped": str(e), "nll_ais": None})
            print(f"vae-bench: {label}: AIS does not apply ({e})", file=sys.stderr)
            key = "ais not applicable"
        counts[key] = counts.get(key, 0) + 1
    if generating_model:
        from ..evaluation import oracle  # the data's own likelihood, where its generator is known
        counts.update(oracle.attach(profile, results, data_dir, runs))
    return counts
