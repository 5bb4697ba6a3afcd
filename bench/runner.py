"""One run, end to end: config -> seed streams -> data -> model + variant -> fit -> evaluate ->
run directory. The runner knows the Variant protocol and never a concrete variant."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import torch

from variants import create as create_variant
from variants.base import ConfigError
from variants.core import VAE
from variants.factory import build_vae

from . import data as data_mod
from . import datasets, numerics
from .checkpoints import Checkpoints
from .config import (
    SUITE_VERSION,
    RunConfig,
    from_dict,
    pretrain_config,
    resolve,
    run_id,
    to_dict,
    variant_source,
)
from .convergence import Convergence
from .identity import checkpoint_dir, run_name
from .metrics import (
    active_directions,
    encode,
    evaluate,
    mean_se,
    svae_tf_ll_points,
    validation_diagnostics,
    validation_loss,
    validation_minibatch_mi,
)
from .results import (
    damage,
    ensure_writable,
    environment,
    finished,
    read_json,
    retry_reason,
    run_lock,
    set_aside,
    write_run,
)
from .seeding import Streams, derive, set_deterministic
from .train import fit


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here; allowed: cpu")
    return torch.device(device)


def decoder_options(cfg: RunConfig, dataset: data_mod.Dataset) -> dict:
    """The keyword arguments of the decoder family that ``cfg.model.decoder`` names."""
    m = cfg.model
    if m.decoder == "made":
        return {"window": m.window, "direct": m.direct, "z_output": m.z_output}
    if m.decoder == "pixelcnn":
        if dataset.image_shape is None:
            raise ConfigError(f"model.decoder=pixelcnn needs images; {dataset.name} has none; "
                              "allowed datasets: digits, mnist, fashion-mnist")
        return {"image_shape": dataset.image_shape, "layers": m.pixelcnn_layers,
                "channels": m.pixelcnn_channels, "kernel": m.pixelcnn_kernel,
                "z_output": m.z_output}
    return {}


def build_model(cfg: RunConfig, dataset: data_mod.Dataset,
                pretrained_decoder: dict | None = None) -> tuple[VAE, object]:
    """The model and variant of a resolved config, initialized from the seed's ``init`` stream;
    with ``pretrained_decoder`` (a decoder-only run's decoder state) the decoder then starts from
    it, what carries z from zero (``variants.decoders.load_pretrained``)."""
    variant = create_variant(cfg.variant, **cfg.hparams)
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(cfg.seed, "init"))
        scale = {"posterior_scale": m.posterior_scale} if m.posterior_scale != "exp" else {}
        if m.obs_var:
            scale["obs_var"] = m.obs_var
        model = build_vae(variant, dataset.input_dim, m.latent_dim,
                          latent2_dim=m.latent2_dim, latent2_hidden=m.latent2_hidden,
                          hidden=m.hidden, decoder_hidden=m.decoder_hidden,
                          activation=m.activation, likelihood=dataset.likelihood,
                          decoder=m.decoder, **scale, **decoder_options(cfg, dataset))
        if m.init == "glorot":
            glorot_init(model, dataset)
    model.to(dtype=getattr(torch, cfg.dtype), device=check_device(cfg.device))
    if pretrained_decoder is not None:
        model.decoder.load_pretrained(pretrained_decoder)
    return model, variant


def glorot_init(model: VAE, dataset: data_mod.Dataset) -> None:
    """Burda et al. 2016's initialization (their code): every linear layer Glorot-uniform
    (Glorot & Bengio 2010) with zero bias; the decoder's output bias the logit of the training
    split's mean pixel, clipped to [0.001, 0.999], so the untrained model already predicts the
    marginal pixel frequencies."""
    out = getattr(model.decoder, "body", model.decoder)
    if not isinstance(out, (list, torch.nn.Sequential)) or dataset.likelihood != "bernoulli":
        raise ConfigError("model.init=glorot is defined for binary pixels and the mlp decoder; "
                          "allowed: model.init=default otherwise")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    layer.bias.zero_()
        mean = dataset.train.double().mean(0).clamp(0.001, 0.999)
        out[-1].bias.copy_(torch.log(mean / (1 - mean)))


def pretrained_decoder(cfg: RunConfig, out: Path, data_dir: str | None) -> tuple[str, dict] | None:
    """(run name, decoder state) of the run a lagging config starts from, trained here first if
    it does not exist yet (under its own lock, so concurrent runs train it once)."""
    pre = pretrain_config(cfg)
    if pre is None:
        return None
    path = execute(pre, out, data_dir)
    if not (path / "model.pt").is_file():
        status = read_json(path / "metrics.json").get("status")
        if status != "ok":
            raise ConfigError(f"pretrained decoder run {path.name} has status {status!r}; "
                              "allowed: a finished run (remove it to retrain)")
        rebuild_weights(pre, path, data_dir)
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    return path.name, {k.removeprefix("decoder."): v for k, v in state.items()
                       if k.startswith("decoder.")}


#: metrics that measure the machine, not the model: never compared between two trainings
TIMINGS = ("train_seconds", "train_samples_per_s", "eval_seconds", "diagnostics_seconds")


def rebuild_weights(cfg: RunConfig, path: Path, data_dir: str | None) -> None:
    """Weights for a finished record that has none (records are committed without weights, so
    a fresh clone's pretrained decoders have only their numbers): train the run again beside
    it, and install its weights only if its metrics are the record's, value for value;
    otherwise a ConfigError says which metric differs (the record is left as it was)."""
    rebuilt = path.parent / f".{path.name}.rebuild-{os.getpid()}"
    shutil.rmtree(rebuilt, ignore_errors=True)
    try:
        fresh = read_json(execute(cfg, rebuilt, data_dir) / "metrics.json")
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


def execute(cfg: RunConfig, out: Path, data_dir: str | None = None,
            progress: bool = False) -> Path:
    """Train and evaluate one run; return its directory (an existing finished one is reused)."""
    check_device(cfg.device)
    cfg = resolve(cfg)
    ensure_writable(Path(out))
    target = Path(out) / run_name(cfg)
    if finished(target):
        return target
    if cfg.numerics != numerics.active():  # the libraries read their settings as torch loads
        return numerics.run_in_mode(cfg.numerics, execute, cfg, out, data_dir, False)
    with run_lock(target):  # a second suite on the same results waits, then finds it done
        if finished(target):
            return target
        if target.exists():  # damaged, or failed for a reason of the machine: aside, again
            set_aside(target, damage(target) or retry_reason(target))
        return _train_and_record(cfg, target, data_dir, progress)


def load_dataset(cfg: RunConfig, data_dir: str | None) -> data_mod.Dataset:
    """The run's dataset: its validation split held out of the training split, the training
    split cut to its first ``train.train_points`` and the test split to its first
    ``eval.test_points`` points where those are set."""
    dataset = data_mod.hold_out(datasets.load(cfg.dataset, data_dir), cfg.train.validation_size)
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


def _train_and_record(cfg: RunConfig, target: Path, data_dir: str | None, progress: bool) -> Path:
    pre = pretrained_decoder(cfg, target.parent, data_dir)
    dataset = load_dataset(cfg, data_dir)
    numerics.apply(cfg.numerics)
    deterministic = set_deterministic(cfg.deterministic)
    model, variant = build_model(cfg, dataset, pre[1] if pre else None)
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)
    epoch_end = minibatch_mi = None
    if dataset.valid is not None:
        valid = dataset.valid.to(dtype=dtype, device=device)
        state = {"epoch": 0}

        def epoch_end(epoch: int) -> dict:
            state["epoch"] = epoch
            row = validation_diagnostics(model, valid, cfg.eval.seed, epoch)
            if cfg.train.monitor == "val_loss":  # the objective as it stands at the epoch's end
                per_epoch = math.ceil(len(dataset.train) / cfg.train.batch_size)
                row["val_loss"] = validation_loss(
                    model, variant, valid, cfg.train.batch_size, cfg.eval.seed, epoch,
                    epoch * per_epoch, cfg.train.epochs * per_epoch)
            return row

        def minibatch_mi(batch: int) -> float:
            return validation_minibatch_mi(model, valid, batch, cfg.eval.seed, state["epoch"])

    # the environment as the run starts: the code that trains is the code checked out now
    env = {**environment(cfg.device, deterministic, dataset.digests),
           **numerics.record(cfg.numerics)}
    outside = variant_source(cfg.variant)
    if outside:
        env["variant_source"] = outside
    checkpoints = Checkpoints(checkpoint_dir(target), cfg.train.checkpoint_every,
                              identity=target.name)
    # what draws from torch's global generator in training (dropout) draws from the seed's own
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive(cfg.seed, "global"))
        result = fit(model, variant, dataset.train.to(dtype=dtype, device=device),
                     epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                     streams=Streams.from_seed(cfg.seed, device),
                     dynamic_binarization=dataset.likelihood == "bernoulli", progress=progress,
                     compile=cfg.train.compile, epoch_end=epoch_end,
                     lr_schedule=cfg.train.lr_schedule, checkpoints=checkpoints,
                     clip=cfg.train.clip, minibatch_mi=minibatch_mi,
                     adam={"betas": (cfg.train.adam_beta1, cfg.train.adam_beta2),
                           "eps": cfg.train.adam_eps},
                     convergence=Convergence.from_config(cfg.train))
    metrics = {"run_id": run_id(cfg), "suite_version": SUITE_VERSION, "status": result.status,
               "diverged_step": result.diverged_step, "steps": result.steps,
               "pretrained_decoder": pre[0] if pre else None,
               "train_seconds": result.train_seconds,
               "diagnostics_seconds": result.diagnostics_seconds,
               "train_samples_per_s": result.steps * cfg.train.batch_size
               / max(result.train_seconds, 1e-9), **(result.convergence or {})}
    if result.status == "ok":
        start = time.perf_counter()
        metrics.update(evaluate(model, dataset.test.to(dtype=dtype, device=device),
                                cfg.eval.is_samples, cfg.eval.elbo_samples, cfg.eval.seed))
        metrics["eval_seconds"] = time.perf_counter() - start
        metrics.update(collapse_law(cfg, dataset, metrics, model))
    else:
        metrics["last_finite"] = result.last_finite
        metrics["last_finite_epoch"] = result.history[-1] if result.history else None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pics = previews(model, dataset, cfg) if result.status == "ok" else None
    path = write_run(target, config=to_dict(cfg), metrics=metrics, history=result.history,
                     env=env, state_dict=state, previews=pics)
    checkpoints.clear()  # a finished run keeps only its final weights
    return path


def collapse_law(cfg: RunConfig, dataset: data_mod.Dataset, metrics: dict, model) -> dict:
    """For a linear Gaussian decoder with a fixed noise (``model.obs_var``) and one stochastic
    layer: the closed-form predictions of Lucas et al.'s law (``bench.ppca``) beside what the run
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
    from .ppca import law

    out = law(dataset.train.double().numpy(), dataset.test.double().numpy(), m.latent_dim,
              m.obs_var)
    dtype = getattr(torch, cfg.dtype)
    with torch.no_grad():
        q = encode(model, dataset.test.to(dtype=dtype, device=torch.device(cfg.device)))
    return {**out, "collapsed_measured": m.latent_dim - int(metrics["active_units"]),
            "collapsed_directions": m.latent_dim - active_directions(q)}


@torch.no_grad()
def previews(model, dataset: data_mod.Dataset, cfg: RunConfig, n: int = 8) -> dict | None:
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
    if not (run_dir / "config.json").is_file() or not (run_dir / "model.pt").is_file():
        raise ConfigError(f"{run_dir} is not a run directory; expected config.json and model.pt")
    try:
        cfg = from_dict(read_json(run_dir / "config.json"))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{run_dir / 'config.json'}: not a vae-bench config ({e})") from None
    dataset = load_dataset(cfg, data_dir)
    model, _ = build_model(cfg, dataset)
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
    """A finished run's metrics recomputed from its weights (``is_samples``: another K). With
    ``svae_tf_ll`` = n, also Davidson et al.'s code's "LL" with n samples
    (``bench.metrics.svae_tf_ll_points``), as ``svae_tf_ll`` and its standard error."""
    cfg, model, dataset = load_run(run_dir, data_dir)
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
