"""One run, end to end, as named stages: ``execute`` resolves the run once (``bench.identity``)
and gets its ``dependencies`` (the pretrained decoder a lagging run starts from), then
``prepare`` (data, numerics, the model and a copy of the variant, the validation hooks, the
environment) -> ``train`` (``bench.training.trainer.fit``) -> ``evaluate_trained`` -> ``record`` (the run
directory). None of them calls another run's ``execute``. The runner knows the Variant protocol
and never a concrete variant."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from variants.base import Variant
from variants.core import VAE
from variants.errors import ConfigError

from .. import data
from ..config import SUITE_VERSION, RunConfig, check_fields, from_dict, to_dict, validate
from ..data import builtin
from ..evaluation.metrics import (
    active_directions,
    encode,
    evaluate,
    mean_se,
    svae_tf_ll_points,
    validation_diagnostics,
    validation_loss,
    validation_minibatch_mi,
)
from ..evaluation.quadrature import posterior_mean_row
from ..identity import ResolvedRun, checkpoint_dir, resolve_run, variant_source
from ..machine import isolation, numerics
from ..results import (
    damage,
    ensure_writable,
    environment,
    finished,
    read_json,
    retry_reason,
    run_lock,
    set_aside,
    too_big,
    write_run,
)
from ..seeding import Streams, derive, set_deterministic
from ..training.checkpoints import Checkpoints
from ..training.model import build_model, check_device
from ..training.trainer import FitResult, fit

#: metrics that measure the machine, not the model: never compared between two trainings
TIMINGS = ("train_seconds", "train_samples_per_s", "eval_seconds", "diagnostics_seconds")


# ---- the stages of one run: execute = dependencies, then prepare -> train -> evaluate -> record


def execute(run: ResolvedRun | RunConfig, out: Path, data_dir: str | None = None,
            progress: bool = False) -> Path:
    """Train and evaluate one run; return its directory (an existing finished one is reused).
    ``run``: a resolved run, or a config, resolved here once (``identity.resolve_run``)."""
    run = resolve_run(run)
    # whatever code ran before (another run's variant, this one's constructor) changed globally
    isolation.reset(numerics.PORTABLE_THREADS if run.config.numerics == "portable" else None)
    check_device(run.config.device)
    ensure_writable(Path(out))
    target = Path(out) / run.name
    if finished(target):
        return target
    if run.config.numerics != numerics.active():  # the libraries read it as torch loads
        return numerics.run_in_mode(run.config.numerics, execute, run.config, out, data_dir,
                                    False)
    return _train_once(run, target, data_dir, progress, dependencies(run, Path(out), data_dir))


def dependencies(run: ResolvedRun, out: Path, data_dir: str | None) -> tuple[str, dict] | None:
    """(run name, decoder state) of the pretrained decoder a lagging run starts from (None from
    scratch), trained in ``out`` first if it is not there (under its own lock, so concurrent
    runs train it once), its weights rebuilt if its record has none. A pretrained decoder is a
    decoder-only run from scratch: it has no dependency of its own."""
    pre = run.pretrained
    if pre is None:
        return None
    path = _train_once(pre, out / pre.name, data_dir, False, None)
    if not (path / "model.pt").is_file():
        status = read_json(path / "metrics.json").get("status")
        if status != "ok":
            raise ConfigError(f"pretrained decoder run {path.name} has status {status!r}; "
                              "allowed: a finished run (remove it to retrain)")
        _retrain_beside(pre, path, data_dir, None)
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    return path.name, {k.removeprefix("decoder."): v for k, v in state.items()
                       if k.startswith("decoder.")}


def rebuild_weights(run: ResolvedRun | RunConfig, path: Path, data_dir: str | None) -> None:
    """Weights for a finished record that has none (records are committed without weights, so
    a fresh clone has only their numbers): train the run again beside it, from its pretrained
    decoder in the same results (``dependencies``), and install its weights only if its metrics
    are the record's, value for value; otherwise a ConfigError says which metric differs (the
    record is left as it was)."""
    run = resolve_run(run)
    _retrain_beside(run, path, data_dir, dependencies(run, path.parent, data_dir))


def _retrain_beside(run: ResolvedRun, path: Path, data_dir: str | None,
                    pre: tuple[str, dict] | None) -> None:
    rebuilt = path.parent / f".{path.name}.rebuild-{os.getpid()}"
    shutil.rmtree(rebuilt, ignore_errors=True)
    try:
        fresh = read_json(_train_once(run, rebuilt / path.name, data_dir, False, pre)
                          / "metrics.json")
        recorded = read_json(path / "metrics.json")
        moved = sorted(k for k in set(fresh) | set(recorded)
                       if k not in TIMINGS and fresh.get(k) != recorded.get(k))
        if moved:
            raise ConfigError(f"run {path.name} has no weights, and training it again here gives "
                              f"other numbers ({moved[0]}: {fresh.get(moved[0])!r} against the "
                              f"record's {recorded.get(moved[0])!r}); allowed: remove the run "
                              "to retrain it")
        os.replace(rebuilt / path.name / "model.pt", path / "model.pt")
    finally:
        shutil.rmtree(rebuilt, ignore_errors=True)


def _train_once(run: ResolvedRun, target: Path, data_dir: str | None, progress: bool,
                pre: tuple[str, dict] | None) -> Path:
    """The run trained into ``target`` unless it is there: under the run's lock (a second
    suite on the same results waits, then finds it done); a damaged record, or one that
    failed for a reason of the machine, set aside first."""
    ensure_writable(target.parent)
    if finished(target):
        return target
    with run_lock(target):
        if finished(target):
            return target
        if target.exists():
            set_aside(target, damage(target) or retry_reason(target))
        prepared = prepare(run, data_dir, pre, target)
        result = train(run, prepared, progress)
        return record(run, prepared, result, evaluate_trained(run, prepared, result), target)


def load_dataset(cfg: RunConfig, data_dir: str | None) -> builtin.Dataset:
    """The run's dataset: its validation split held out of the training split, the training
    split cut to its first ``train.train_points`` and the test split to its first
    ``eval.test_points`` points where those are set."""
    dataset = builtin.hold_out(data.load(cfg.dataset, data_dir), cfg.train.validation_size)
    m = cfg.train.train_points
    if m:
        if m > len(dataset.train):
            raise ConfigError(f"train.train_points={m} is invalid for {cfg.dataset}; allowed: "
                              f"0 .. {len(dataset.train)} (the training split after the "
                              "validation hold-out)")
        dataset = dataclasses.replace(dataset, train=dataset.train[:m])
    n = cfg.eval.test_points
    if n > len(dataset.test):
        raise ConfigError(f"eval.test_points={n} is invalid for {cfg.dataset}; allowed: 0 (all) "
                          f"or 2 .. {len(dataset.test)}")
    if n and n < len(dataset.test):
        dataset = dataclasses.replace(dataset, test=dataset.test[:n])
    return dataset


@dataclass
class Prepared:
    """What one training of a run works with, built by ``prepare``."""

    dataset: builtin.Dataset
    model: VAE
    variant: Variant
    env: dict  # the environment as the run starts: the code that trains is the code checked out
    pretrained: str | None  # the pretrained decoder run's name
    checkpoints: Checkpoints
    epoch_end: Callable[[int], dict] | None = None  # the validation diagnostics of an epoch
    minibatch_mi: Callable[[int], float] | None = None  # a procedure's validation MI


def prepare(run: ResolvedRun, data_dir: str | None, pre: tuple[str, dict] | None,
            target: Path) -> Prepared:
    """The run's data, its numerics and determinism, its model initialized from the seed (the
    decoder from ``pre``'s state where it has one), a copy of its variant, the validation hooks,
    the environment record and its mid-run checkpoints beside ``target``."""
    cfg = run.config
    dataset = load_dataset(cfg, data_dir)
    numerics.apply(cfg.numerics)
    deterministic = set_deterministic(cfg.deterministic)
    model, variant = build_model(cfg, dataset, pre[1] if pre else None, run.fresh_variant())
    env = {**environment(cfg.device, deterministic, dataset.digests),
           **numerics.record(cfg.numerics), "torch_state": isolation.state()}
    outside = variant_source(cfg.variant)
    if outside:
        env["variant_source"] = outside
    checkpoints = Checkpoints(checkpoint_dir(target), cfg.train.checkpoint_every,
                              identity=target.name)
    prepared = Prepared(dataset, model, variant, env, pre[0] if pre else None, checkpoints)
    if dataset.valid is not None:
        prepared.epoch_end, prepared.minibatch_mi = _validation_hooks(cfg, prepared)
    return prepared


def _validation_hooks(cfg: RunConfig, p: Prepared):
    model, variant, dataset = p.model, p.variant, p.dataset
    valid = dataset.valid.to(dtype=getattr(torch, cfg.dtype), device=torch.device(cfg.device))
    state = {"epoch": 0}

    def epoch_end(epoch: int) -> dict:
        state["epoch"] = epoch
        row = validation_diagnostics(model, valid, cfg.eval.seed, epoch)
        if cfg.eval.posterior_mean_points and model.latent.dim:
            row.update(posterior_mean_row(model, valid[:cfg.eval.posterior_mean_points]))
        if cfg.train.monitor == "val_loss":  # the objective as it stands at the epoch's end
            per_epoch = math.ceil(len(dataset.train) / cfg.train.batch_size)
            row["val_loss"] = validation_loss(
                model, variant, valid, cfg.train.batch_size, cfg.eval.seed, epoch,
                epoch * per_epoch, cfg.train.epochs * per_epoch)
        return row

    def minibatch_mi(batch: int) -> float:
        return validation_minibatch_mi(model, valid, batch, cfg.eval.seed, state["epoch"])

    every = cfg.eval.posterior_mean_every if model.latent.dim else 0
    if every and cfg.eval.posterior_mean_points:  # He et al.'s snapshots inside the first epoch
        def step_end(epoch: int, step: int) -> None:
            if epoch == 1 and step % every == 0:
                r = posterior_mean_row(model, valid[:cfg.eval.posterior_mean_points])
                snaps.append(f"{step}:{r['val_pm_slope']:.4g}:{r['val_pm_corr']:.4g}:"
                             f"{r['val_pm_spread']:.4g}")

        def with_steps(epoch: int) -> dict:
            row = epoch_end(epoch)
            return {**row, "val_pm_steps": ";".join(snaps)} if epoch == 1 else row

        snaps: list[str] = []
        with_steps.step_end = step_end
        return with_steps, minibatch_mi
    return epoch_end, minibatch_mi


def train(run: ResolvedRun, p: Prepared, progress: bool = False) -> FitResult:
    """``fit`` with the run's train config; what draws from torch's global generator in
    training (dropout) draws from the seed's own ``global`` stream."""
    cfg = run.config
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive(cfg.seed, "global"))
        return fit(p.model, p.variant, p.dataset.train.to(dtype=dtype, device=device), cfg.train,
                   Streams.from_seed(cfg.seed, device),
                   dynamic_binarization=p.dataset.likelihood == "bernoulli", progress=progress,
                   epoch_end=p.epoch_end, checkpoints=p.checkpoints,
                   minibatch_mi=p.minibatch_mi)


def evaluate_trained(run: ResolvedRun, p: Prepared, result: FitResult) -> dict:
    """The run's metrics: how training went, and for a finished training every metric of the
    test split (``bench.evaluation.metrics.evaluate``) and the collapse law's predictions where they apply."""
    cfg = run.config
    metrics = {"run_id": run.run_id, "suite_version": SUITE_VERSION, "status": result.status,
               "diverged_step": result.diverged_step, "steps": result.steps,
               "pretrained_decoder": p.pretrained,
               "train_seconds": result.train_seconds,
               "diagnostics_seconds": result.diagnostics_seconds,
               "train_samples_per_s": result.steps * cfg.train.batch_size
               / max(result.train_seconds, 1e-9), **(result.convergence or {})}
    if result.status != "ok":
        metrics["last_finite"] = result.last_finite
        metrics["last_finite_epoch"] = result.history[-1] if result.history else None
        return metrics
    x = p.dataset.test.to(dtype=getattr(torch, cfg.dtype), device=torch.device(cfg.device))
    start = time.perf_counter()
    metrics.update(evaluate(p.model, x, cfg.eval.is_samples, cfg.eval.elbo_samples,
                            cfg.eval.seed))
    metrics["eval_seconds"] = time.perf_counter() - start
    metrics.update(collapse_law(cfg, p.dataset, metrics, p.model))
    return metrics


def record(run: ResolvedRun, p: Prepared, result: FitResult, metrics: dict,
           target: Path) -> Path:
    """The run directory, written whole (``results.write_run``); a finished run keeps only its
    final weights, so its mid-run checkpoints go."""
    state = {k: v.detach().cpu() for k, v in p.model.state_dict().items()}
    pics = previews(p.model, p.dataset, run.config) if result.status == "ok" else None
    path = write_run(target, config=to_dict(run.config), metrics=metrics,
                     history=result.history, env=p.env, state_dict=state, previews=pics)
    p.checkpoints.clear()
    return path


def collapse_law(cfg: RunConfig, dataset: builtin.Dataset, metrics: dict, model) -> dict:
    """For a linear Gaussian decoder with a fixed noise (``model.obs_var``) and one stochastic
    layer: the closed-form predictions of Lucas et al.'s law (``bench.evaluation.ppca``) beside what the run
    measured on the test split: ``collapsed_measured``, the latent units that are not active
    (Var_x E[z|x] <= 0.01, Burda's count), and ``collapsed_directions``, latent_dim minus the
    eigenvalues of Cov_x E[z|x] above 0.01 (``metrics.active_directions``). The law speaks of
    directions: the optimum is W = U (Lambda - sigma^2)^{1/2}_+ R, its rank the number of
    eigenvalues above sigma^2, for every R, and the diagonal posterior makes R = I only at the
    optimum itself. Directions whose eigenvalues lie close together (MNIST's 11th to 13th:
    1.112, 1.068, 0.905) align with the units slowly, at a rate that scales with their
    differences, so a trained model can spread one direction over two units, each under 0.01
    on its own: the unit count then misses while the direction count stays exact."""
    m = cfg.model
    if not (m.obs_var and not m.decoder_hidden and not m.latent2_dim
            and dataset.likelihood == "gaussian"):
        return {}
    from ..evaluation.ppca import law

    out = law(dataset.train.double().numpy(), dataset.test.double().numpy(), m.latent_dim,
              m.obs_var)
    dtype = getattr(torch, cfg.dtype)
    with torch.no_grad():
        q = encode(model, dataset.test.to(dtype=dtype, device=torch.device(cfg.device)))
    return {**out, "collapsed_measured": m.latent_dim - int(metrics["active_units"]),
            "collapsed_directions": m.latent_dim - active_directions(q)}


@torch.no_grad()
def previews(model, dataset: builtin.Dataset, cfg: RunConfig, n: int = 8) -> dict | None:
    """Pixel probabilities of reconstructions of the first n test images and of n prior samples
    (for an autoregressive decoder, each pixel's given the pixels sampled before it)."""
    if dataset.image_shape is None or model.likelihood != "bernoulli":
        return None
    model = copy.deepcopy(model).cpu()  # a few images: the CPU generator serves every device
    gen = torch.Generator().manual_seed(derive(cfg.eval.seed, "previews"))
    x = dataset.test[:n].to(getattr(torch, cfg.dtype))
    z_post = model.encode(x).sample(1, gen)[0]
    z_prior = model.prior_sample(n, gen).to(x.dtype)

    def pixels(t: torch.Tensor):
        return (t.cpu().float().reshape(-1, *dataset.image_shape) * 255).round().byte().numpy()

    return {"data": pixels(x),
            "recon": pixels(model.decoder.mean(model.decoder_input(z_post), gen)),
            "samples": pixels(model.decoder.mean(model.decoder_input(z_prior), gen))}


def load_run(run_dir: Path, data_dir: str | None = None):
    """(config, model, dataset) of a finished run; the weights are loaded with weights_only."""
    run_dir = Path(run_dir)
    isolation.reset()
    if not (run_dir / "config.json").is_file() or not (run_dir / "model.pt").is_file():
        raise ConfigError(f"{run_dir} is not a run directory; expected config.json and model.pt")
    try:  # checked as a run's config is before training (sizes, types, ranges, memory); the
        cfg = from_dict(read_json(run_dir / "config.json"))  # record's own is what is used
        check_fields(cfg)
        _, variant = validate(cfg)  # built once: the model below gets it
    except ConfigError as e:
        raise ConfigError(f"{run_dir / 'config.json'}: {e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{run_dir / 'config.json'}: not a vae-bench config ({e})") from None
    dataset = load_dataset(cfg, data_dir)
    model, _ = build_model(cfg, dataset, variant=variant)
    why = too_big(run_dir / "model.pt")
    if why:
        raise ConfigError(f"{run_dir / 'model.pt'} {why}; not loaded")
    try:
        state = torch.load(run_dir / "model.pt", map_location=cfg.device, weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # pickle payloads, foreign checkpoints, shape mismatches
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise ConfigError(f"{run_dir / 'model.pt'}: not a vae-bench state dict "
                          f"loadable with weights_only=True ({first})") from None
    return cfg, model, dataset


def evaluate_run(run_dir: Path, is_samples: int | None = None,
                 data_dir: str | None = None, svae_tf_ll: int | None = None) -> dict:
    """A finished run's metrics recomputed from its weights (``is_samples``: another K), in the
    run's numerics mode and thread count, so that the same K gives the record's bits. With
    ``svae_tf_ll`` = n, also Davidson et al.'s code's "LL" with n samples
    (``bench.evaluation.metrics.svae_tf_ll_points``), as ``svae_tf_ll`` and its standard error."""
    cfg, model, dataset = load_run(run_dir, data_dir)
    if cfg.numerics != numerics.active():  # its kernels, as it was trained and evaluated
        return numerics.run_in_mode(cfg.numerics, evaluate_run, run_dir, is_samples, data_dir,
                                    svae_tf_ll)
    numerics.apply(cfg.numerics)  # and its thread count, whatever this process was started with
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    k = cfg.eval.is_samples if is_samples is None else is_samples
    x = dataset.test.to(dtype=dtype, device=device)
    out = evaluate(model, x, k, cfg.eval.elbo_samples, cfg.eval.seed)
    if svae_tf_ll:
        with torch.no_grad():
            points = svae_tf_ll_points(model, encode(model, x), x, svae_tf_ll, cfg.eval.seed)
        out["svae_tf_ll"], out["svae_tf_ll_se"] = mean_se(points)
        out["svae_tf_ll_samples"] = svae_tf_ll
    return out
