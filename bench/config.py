"""Run configuration: frozen dataclasses, one documented default per field, defined once here.

A run is fully described by its *resolved* ``RunConfig`` (dataset-dependent defaults filled in);
``run_id`` is the hash of that resolved config, so two runs with the same id are the same run.
Overrides use ``section.field=value`` (``train.epochs=5``), the bare field name when it is
unambiguous (``epochs=5``), or a hyperparameter of the variant (``beta=4``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from variants import create as create_variant
from variants.base import Param
from variants.decoders import check_options
from variants.errors import ConfigError

from . import checks

SUITE_VERSION = "6"  # bump when numbers legitimately change (estimator, protocol, defaults)


def fld(default: Any, doc: str, **bounds: Any) -> Any:
    """A dataclass field whose metadata validates overrides (see ``variants.base.Param``)."""
    return field(default=default, metadata={"param": Param(default, doc, **bounds), "doc": doc})


def widths(default: tuple[int, ...] | None, doc: str) -> Any:
    return field(default=default, metadata={"widths": True, "doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = widths((200, 200), "encoder hidden widths (Burda et al. 2015: 2x200)")
    decoder_hidden: tuple[int, ...] | None = widths(
        None, "decoder hidden widths; unset: the dataset decides (mirror of the encoder, or none "
        "for linear-gaussian, whose decoder is then exactly the linear Gaussian model)")
    activation: str = fld("tanh", "hidden activation", choices=("tanh", "relu", "elu", "softplus"))
    latent_dim: int = fld(0, "Gaussian latent size (with two stochastic layers: h1's); 0: the "
                          "dataset decides (50, or 5 for linear-gaussian); categorical variants "
                          "set their own size", low=0)
    decoder: str = fld("mlp", "decoder family: mlp (pixels independent given z), made (masked "
                       "autoregressive MLP, Germain et al. 2015), pixelcnn (gated PixelCNN, van "
                       "den Oord et al. 2016), lstm (token sequences: Bowman et al. 2016, He et "
                       "al. 2019)", choices=("mlp", "made", "pixelcnn", "lstm"))
    encoder: str = fld("auto", "encoder family: auto (the data decides: lstm for token "
                       "sequences, mlp otherwise), mlp (model.hidden), lstm (token sequences: "
                       "an LSTM's last hidden state)", choices=("auto", "mlp", "lstm"))
    embedding_dim: int = fld(50, "lstm: token embedding size (He et al. 2019's synthetic and "
                             "text models: 50 / 512)", low=1)
    lstm_hidden: int = fld(50, "lstm: hidden units of the encoder's and decoder's LSTMs", low=1)
    lstm_layers: int = fld(1, "lstm: layers of the decoder's LSTM", low=1)
    dropout: float = fld(0.0, "lstm decoder: dropout on its input embeddings and on its hidden "
                         "states before the logits (He et al.'s synthetic set: 0.5)", low=0.0,
                         high=0.99)
    word_dropout: float = fld(0.0, "lstm decoder: each input token replaced by an unknown symbol "
                              "with this probability in training (Bowman et al. 2016)", low=0.0,
                              high=1.0)
    window: int = fld(-1, "made: how many previous pixels a pixel's logit may see (-1: all; 0: "
                      "none, pixels independent given z): the decoder-strength dial", low=-1)
    direct: bool = fld(True, "made: direct masked pixel -> logit connections")
    z_output: bool = fld(True, "made, pixelcnn: z also enters the output layer")
    pixelcnn_layers: int = fld(3, "pixelcnn: gated layers", low=1)
    pixelcnn_channels: int = fld(16, "pixelcnn: channels per stack", low=1)
    pixelcnn_kernel: int = fld(3, "pixelcnn: kernel size k (odd); receptive field grows by k//2 "
                               "per layer", low=1)
    latent2_dim: int = fld(0, "a second stochastic layer h2 of this size above z = h1 (Burda et "
                           "al. 2016 section 5: 50 above 100); 0: one stochastic layer", low=0)
    latent2_hidden: tuple[int, ...] = widths(
        (100, 100), "hidden widths of q(h2|h1), mirrored in p(h1|h2) (Burda et al.: 100-100)")
    obs_var: float = fld(0.0, "Gaussian likelihood: a fixed observation variance sigma^2 (Lucas et "
                         "al. 2019's linear VAE); 0: sigma^2 learned", low=0.0)
    posterior_scale: str = fld("exp", "how the encoder gives the Gaussian posterior's scale: exp "
                               "(its output is log sigma^2, Kingma & Welling 2014) or softplus "
                               "(sigma = softplus(output), Davidson et al. 2018's code)",
                               choices=("exp", "softplus"))
    init: str = fld("default", "weight initialization: default (torch's nn.Linear) or glorot "
                    "(Burda et al. 2016's code: Glorot-uniform weights, zero biases, the decoder's "
                    "output bias the logit of the training split's mean pixel, clipped to "
                    "[0.001, 0.999]; mlp decoder) or uniform (He et al. 2019's text and "
                    "synthetic models: every parameter U(-0.01, 0.01), embeddings U(-0.1, 0.1))",
                    choices=("default", "glorot", "uniform"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = fld(10, "passes over the training split", low=1)
    batch_size: int = fld(100, "minibatch size (Burda et al. 2016: 20; He et al. 2019: 50 on "
                          "OMNIGLOT, 32 on text)", low=1)
    lr: float = fld(1e-3, "learning rate (of Adam, or of SGD with train.optimizer=sgd)", low=0.0,
                    low_open=True)
    optimizer: str = fld("adam", "adam: Adam (train.adam_*); sgd: plain SGD, no momentum, as He "
                         "et al. 2019's text and synthetic scripts (lr 1.0)",
                         choices=("adam", "sgd"))
    clip: float = fld(5.0, "gradient-norm clip of every optimizer step of every variant, the plain "
                      "VAE and the decoder-only reference included (5: every reference script's "
                      "clip_grad_norm_: jxhe/vae-lagging-encoder image.py, BN-VAE, DU-VAE, "
                      "vae-pretraining-encoder; 0: none)", low=0.0)
    decoder_pretrain_epochs: int = fld(
        0, "the lagging set-up (this project's construction after He et al. 2019's explanation "
        "of collapse): start the decoder from the decoder-only run of the same seed, data and "
        "decoder config trained this many epochs (0: from scratch)", low=0)
    validation_size: int = fld(-1, "points held out of the training split for the per-epoch "
                               "diagnostics, never trained on (-1: the dataset decides)", low=-1)
    lr_schedule: str = fld("constant", "constant: train.lr throughout; burda: Burda et al. "
                           "2016's stages, stage i = 0..7 runs 3^i epochs at train.lr x 10^(-i/7) "
                           "(3280 epochs in all; the last stage's lr after them)",
                           choices=("constant", "burda"))
    adam_beta1: float = fld(0.9, "Adam beta1 (Burda et al.'s paper: 0.9; their code: 0.99)",
                            low=0.0, high=0.999999)
    adam_beta2: float = fld(0.999, "Adam beta2", low=0.0, high=0.999999)
    adam_eps: float = fld(1e-8, "Adam epsilon (Burda et al.: 1e-4)", low=0.0, low_open=True)
    checkpoint_every: int = fld(0, "write a resumable checkpoint every N epochs beside the run "
                                "(0: none); a rerun of the config resumes from the last one. Not "
                                "part of the run id: resuming is exact", low=0)
    train_points: int = fld(0, "train on the first N points of the training split left after "
                            "the validation hold-out (0: all of them): a CPU-budget knob", low=0)
    compile: bool = fld(False, "fast mode: torch.compile the model's training forward and backward "
                        "(with CUDA graphs on a GPU); equal to eager up to float rounding")
    stop_patience: int = fld(0, "early stopping: stop once train.monitor has gone this many "
                             "epochs without a new best (Davidson et al. 2018: 50); 0: off. With "
                             "it or train.lr_decay_patience, train.epochs is the cap and the "
                             "best-on-validation weights are evaluated (bench/training/convergence.py)",
                             low=0)
    lr_decay_patience: int = fld(0, "learning-rate decay on plateau as He et al. 2019's image "
                                 "script: after this many epochs worse than the best, lr x "
                                 "train.lr_decay, the best weights reloaded, fresh optimizers; "
                                 "0: off", low=0)
    lr_decay: float = fld(0.5, "the factor of each learning-rate decay (He et al.: 0.5)",
                          low=0.0, low_open=True, high=1.0)
    max_decays: int = fld(0, "stop at this many learning-rate decays (He et al.: 5); 0: no limit",
                          low=0)
    monitor: str = fld("val_neg_elbo", "the validation quantity the convergence protocol "
                       "watches (lower is better): val_neg_elbo, as He et al. 2019's script for "
                       "every model, or val_loss, the variant's own training objective (for "
                       "one that is not a bound on log p(x), e.g. mmd at alpha = 1)",
                       choices=("val_neg_elbo", "val_loss"))
    protocol_from: int = fld(1, "the first epoch the convergence protocol watches (after a KL "
                             "warm-up of N epochs: N + 1)", low=1)


@dataclass(frozen=True)
class EvalConfig:
    is_samples: int = fld(1000, "K, importance samples per test point for nll_is", low=1)
    elbo_samples: int = fld(1, "L, samples per test point for the ELBO", low=1)
    seed: int = fld(0, "seed of the evaluation noise, independent of the training seed", low=0)
    test_points: int = fld(0, "evaluate on the first N >= 2 points of the test split (0: all of "
                           "it; one point has no standard error)",
                           low=0)
    # AIS (bench.evaluation.ais): an evaluation attached to a finished run, its own ais-*.json record
    ais_points: int = fld(0, "AIS on a seeded subset of N test points (suite; 0: none)", low=0)
    ais_steps: int = fld(500, "AIS: T, intermediate distributions (sigmoid schedule)", low=1)
    ais_chains: int = fld(16, "AIS: chains per point (Wu et al. 2017: 16)", low=1)
    ais_leapfrog: int = fld(10, "AIS: leapfrog steps per HMC trajectory", low=1)
    ais_start: str = fld("encoder", "AIS: chains start at q(z|x) (encoder) or p(z) (prior)",
                         choices=("encoder", "prior"))
    bdmc_points: int = fld(0, "BDMC beside AIS on N points simulated from the model", low=0)
    posterior_mean_points: int = fld(
        0, "He et al. 2019's posterior-mean space at every epoch end, on the first N validation "
        "points, for a latent of 1 or 2 dimensions: the exact posterior mean (quadrature) "
        "against the encoder's (history: val_pm_slope, val_pm_corr, val_pm_spread and the "
        "points); 0: off", low=0)
    posterior_mean_every: int = fld(
        0, "with eval.posterior_mean_points: also every N training steps of the first epoch "
        "(He et al. 2019: 200), epoch 1's history column val_pm_steps (step:slope:corr:spread "
        "per snapshot, ';'-separated); 0: off", low=0)


@dataclass(frozen=True)
class RunConfig:
    variant: str = fld("vae", "variant name (vae-bench variants), or module:Class of a Variant "
                       "subclass importable from the current directory or PYTHONPATH")
    dataset: str = fld("digits", "dataset name (vae-bench datasets), or the path of an .npz file "
                       "with train and test arrays (and optionally valid) in [0, 1]")
    seed: int = fld(0, "training seed: init, data order, binarization, training noise", low=0)
    dtype: str = fld("float32", "parameter and data dtype", choices=("float32", "float64"))
    device: str = fld("cpu", "torch device", choices=("cpu", "cuda"))
    deterministic: bool = fld(False, "torch deterministic algorithms (recorded in env.json)")
    numerics: str = fld("portable", "portable: CPU kernels chosen so that another x86-64 CPU with "
                        "AVX2 gives the same bits (MKL's AVX2 reproducibility branch, ATen's AVX2 "
                        "kernels, no oneDNN, a fixed thread count; bench/machine/numerics.py); native: "
                        "whatever this CPU dispatches", choices=("portable", "native"))
    hparams: dict = field(default_factory=dict, metadata={"doc": "variant hyperparameters"})
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = ("model", "train", "eval")


def _parse_widths(key: str, value: Any) -> tuple[int, ...]:
    parts = [v for v in value.replace(" ", "").split(",") if v] if isinstance(value, str) else value
    try:
        out = tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        out = (-1,)
    if any(w < 1 for w in out):
        raise ConfigError(f"{key}={value!r} is invalid; allowed: comma-separated widths >= 1")
    return out


def _parse(section: Any, key: str, name: str, value: Any) -> Any:
    meta = {f.name: f.metadata for f in dataclasses.fields(section)}[name]
    if "widths" in meta:
        return _parse_widths(key, value)
    return meta["param"].parse("config", key, value)


def check_fields(cfg: RunConfig) -> None:
    """ConfigError, naming the key, unless every key of ``cfg`` holds a value its parser accepts
    (type and range): for a config read back from a record (a config.json edited by hand), which
    did not come through ``apply_overrides``."""
    for section, obj in [(None, cfg), *((s, getattr(cfg, s)) for s in SECTIONS)]:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None or not ({"widths", "param"} & set(f.metadata)):
                continue
            key = f"{section}.{f.name}" if section else f.name
            if _parse(type(obj), key, f.name, value) != value:  # a number given as a word
                allowed = f.metadata["param"].allowed() if "param" in f.metadata else "widths"
                raise ConfigError(f"{key}={value!r} is invalid; allowed: {allowed}")


def _locate(key: str, variant_params: dict[str, Param]) -> tuple[str | None, str]:
    """(section, field) of an override key; section None is top level, 'hparams' the variant."""
    if "." in key:
        section, name = key.split(".", 1)
        return section, name
    if key in {f.name for f in dataclasses.fields(RunConfig)} - {"hparams", *SECTIONS}:
        return None, key  # a top-level name wins over a section's field of the same name
    owners = [s for s in SECTIONS if name_in(s, key)]
    if key in variant_params:
        owners.append("hparams")
    if len(owners) > 1:
        raise ConfigError(f"override {key!r} is ambiguous; write one of "
                          + ", ".join(f"{o}.{key}" if o else key for o in owners))
    if not owners:
        raise ConfigError(f"unknown config key {key!r}; allowed: {', '.join(allowed_keys())}"
                          + (f", variant hyperparameters {', '.join(variant_params)}"
                             if variant_params else ""))
    return owners[0], key


def name_in(section: str, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(type(getattr(RunConfig(), section)))}


def allowed_keys() -> list[str]:
    top = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ("hparams", *SECTIONS)]
    nested = [f"{s}.{f.name}" for s in SECTIONS
              for f in dataclasses.fields(type(getattr(RunConfig(), s)))]
    return top + nested


def merge_overrides(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``key=value`` pairs as one dict of overrides; ConfigError if two of them name the same
    setting, in one spelling or two (``epochs`` and ``train.epochs``, ``--epochs`` and
    ``--set train.epochs``): which one should win is not guessed."""
    variant = next((str(v) for k, v in reversed(pairs) if k == "variant"), RunConfig().variant)
    vparams = variant_params(variant)
    seen: dict[tuple[str | None, str], str] = {}
    for key, _ in pairs:
        where = _locate(key, vparams)
        if where in seen:
            raise ConfigError(f"{key!r} and {seen[where]!r} set the same value twice; allowed: "
                              "each setting once")
        seen[where] = key
    return dict(pairs)


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A new config with ``key=value`` overrides validated and applied; ConfigError otherwise."""
    if "variant" in overrides:
        cfg = dataclasses.replace(cfg, variant=_parse(RunConfig, "variant", "variant",
                                                      overrides["variant"]))
    vparams = variant_params(cfg.variant)
    for key, value in overrides.items():
        section, name = _locate(key, vparams)
        if section == "hparams":
            create_variant(cfg.variant, **{name: value})  # validates the value alone
            cfg = dataclasses.replace(cfg, hparams={**cfg.hparams, name: value})
        elif section is None:
            cfg = dataclasses.replace(cfg, **{name: _parse(RunConfig, key, name, value)})
        elif section in SECTIONS and name_in(section, name):
            sub = getattr(cfg, section)
            sub = dataclasses.replace(sub, **{name: _parse(type(sub), key, name, value)})
            cfg = dataclasses.replace(cfg, **{section: sub})
        else:
            raise ConfigError(f"unknown config key {key!r}; allowed: {', '.join(allowed_keys())}")
    return cfg


def variant_params(name: str) -> dict[str, Param]:
    from variants import resolve

    return resolve(name).params


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill dataset-dependent defaults and the variant's full hyperparameters (validated). A run
    is resolved once, with its variant, by ``bench.identity.resolve_run``; this is its config."""
    return validate(cfg)[0]


def validate(cfg: RunConfig):
    """(the resolved config, the variant object built from it): every check a run's config
    passes before anything trains, done once per run (``bench.identity.resolve_run``)."""
    from . import data

    data.check(cfg.dataset)
    dataset_defaults = data.model_defaults(cfg.dataset)
    model = cfg.model
    if model.decoder_hidden is None:
        dec = dataset_defaults.get("decoder_hidden", tuple(model.hidden)[::-1])
        model = dataclasses.replace(model, decoder_hidden=tuple(dec))
    if model.latent_dim == 0:
        model = dataclasses.replace(model, latent_dim=dataset_defaults.get("latent_dim", 50))
    checks.kernel(model)
    model = dataclasses.replace(model, encoder=data.tokens.model_encoder(
        cfg.dataset, data.likelihood(cfg.dataset), model.decoder, model.encoder,
        bool(model.dropout or model.word_dropout)))
    checks.model_checks(cfg.dataset, model, ModelConfig().latent2_hidden)
    variant = create_variant(cfg.variant, **cfg.hparams)
    check_options(model.decoder, model.decoder_hidden, **variant.decoder_options())
    if model.latent2_dim:
        from variants.factory import check_two_layers

        check_two_layers(variant, model.latent_dim)
    train = cfg.train
    if train.validation_size < 0:
        train = dataclasses.replace(train, validation_size=data.validation_size(cfg.dataset))
    checks.run_checks(cfg, model, train, variant, data.likelihood(cfg.dataset))
    from .data.npz import image_shape

    shape = data.point_shape(cfg.dataset)
    image = image_shape(shape)
    checks.image_checks(model, image)
    from .machine.budget import check as check_memory

    check_memory(dataclasses.replace(cfg, model=model, train=train), variant,
                 math.prod(shape), image)
    variant.check_protocol(train)
    return dataclasses.replace(cfg, model=model, train=train, hparams=dict(variant.hp)), variant


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> RunConfig:
    def tup(x: Any) -> Any:
        return tuple(x) if isinstance(x, list) else x

    model = ModelConfig(**{k: tup(v) for k, v in d["model"].items()})
    top = {k: v for k, v in d.items() if k not in SECTIONS}
    top.setdefault("numerics", "native")  # records from before the key ran natively
    d = {**d, "train": {"clip": 0.0, **d["train"]}}  # and without a clip
    return RunConfig(**top, model=model, train=TrainConfig(**d["train"]),
                     eval=EvalConfig(**d["eval"]))
