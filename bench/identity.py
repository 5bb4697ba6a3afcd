"""A run's identity, in one place, and the run resolved once.

``resolve_run`` validates a run's config and builds its variant once (``config.validate``),
resolves the pretrained decoder run a lagging configuration starts from, and computes the run's
id (the hash of its resolved config) and directory name; the ``ResolvedRun`` it returns is
passed down to the suite, the runner and the report, so none of them resolves or names a run
again. The functions of a plain config (``run_id``, ``run_name``, ``pretrain_config``) remain for
callers that hold only a config."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from variants.base import Variant

from . import config, data
from .config import SUITE_VERSION, EvalConfig, ModelConfig, RunConfig, TrainConfig, to_dict

__all__ = ["HASHED_ONLY_WHEN_SET", "NOT_HASHED", "ResolvedRun", "checkpoint_dir",
           "pretrain_config", "pretrain_spec", "resolve_run", "run_id", "run_name",
           "variant_source"]


@dataclass(frozen=True)
class ResolvedRun:
    """A run as it trains: its resolved config, its variant (as built from the config; the
    trainer gets a copy of its own, ``fresh_variant``), its id and directory name, and the
    resolved run of the pretrained decoder it starts from (None from scratch)."""

    config: RunConfig
    variant: Variant
    run_id: str
    name: str
    pretrained: ResolvedRun | None = None

    def fresh_variant(self) -> Variant:
        """A copy of the variant for one training: a procedure keeps state (aggressive's mode,
        a phase boundary), which must never leak into another training of the same run."""
        return copy.deepcopy(self.variant)


def resolve_run(cfg: RunConfig | ResolvedRun) -> ResolvedRun:
    """The run of ``cfg``, validated and built once (a ResolvedRun is returned as it is)."""
    if isinstance(cfg, ResolvedRun):
        return cfg
    resolved, variant = config.validate(cfg)
    spec = pretrain_spec(resolved)
    pre = None if spec is None else resolve_run(spec)
    rid = run_id(resolved, None if pre is None else pre.run_id, variant)
    return ResolvedRun(resolved, variant, rid, _name(resolved, rid), pre)


def run_name(cfg: RunConfig) -> str:
    """``variant-dataset-sSEED-ID``: an import path's ``:`` becomes ``.``, a dataset file is
    named by its stem (the run id carries both digests)."""
    return _name(cfg, run_id(cfg))


def _name(cfg: RunConfig, rid: str) -> str:
    variant = cfg.variant.replace(":", ".")
    dataset = Path(cfg.dataset).stem if data.digest(cfg.dataset) else cfg.dataset
    return f"{variant}-{dataset}-s{cfg.seed}-{rid}"


def checkpoint_dir(target: Path) -> Path:
    """Where a run's mid-run checkpoints live: beside its directory, in the results' hidden
    ``.checkpoints`` folder (the ``.NAME.*`` folders of a run are its writers' temporaries,
    removed as orphans when a run starts)."""
    return target.parent / ".checkpoints" / target.name


def pretrain_config(cfg: RunConfig) -> RunConfig | None:
    """The run whose decoder a lagging run starts from (None for a run from scratch): the
    decoder-only variant on the same seed, data and decoder config, trained for
    ``train.decoder_pretrain_epochs`` epochs. What a decoder-only model does not use (encoder
    widths, latent size) is set to its default, so every lagging run of the same decoder shares
    one pretrained run; so is ``train.monitor``: a model without a latent has no KL, so its
    validation loss is its validation -ELBO and either monitor stops it at the same epoch."""
    spec = pretrain_spec(cfg)
    return None if spec is None else config.resolve(spec)


def pretrain_spec(cfg: RunConfig) -> RunConfig | None:
    """``pretrain_config`` before it is resolved."""
    n = cfg.train.decoder_pretrain_epochs
    if not n:
        return None
    default = ModelConfig()
    model = dataclasses.replace(cfg.model, hidden=default.hidden, latent_dim=default.latent_dim,
                                latent2_dim=default.latent2_dim,
                                latent2_hidden=default.latent2_hidden)
    train = dataclasses.replace(cfg.train, epochs=n, decoder_pretrain_epochs=0,
                                monitor=TrainConfig().monitor)
    return dataclasses.replace(cfg, variant="decoder-only", hparams={}, model=model, train=train)



#: fields added after runs were recorded: part of a run's identity only when not at the default
HASHED_ONLY_WHEN_SET = (
    *(("train", k) for k in ("compile", "train_points", "lr_schedule", "adam_beta1", "adam_beta2",
                             "adam_eps", "stop_patience", "lr_decay_patience", "lr_decay",
                             "max_decays", "monitor", "protocol_from", "optimizer")),
    ("eval", "posterior_mean_points"), ("eval", "posterior_mean_every"),
    *(("model", k) for k in ("init", "latent2_dim", "latent2_hidden", "posterior_scale",
                             "obs_var", "encoder", "embedding_dim", "lstm_hidden", "lstm_layers",
                             "dropout", "word_dropout")))
#: fields that never change a run's numbers: never part of its id
NOT_HASHED = (("train", "checkpoint_every"), *(("eval", f.name) for f in dataclasses.fields(
    EvalConfig) if f.name.startswith(("ais_", "bdmc_"))))  # attached evaluations (bench.grid.attached)


def variant_source(name: str) -> dict | None:
    from variants import source

    return source(name)


_PRETRAINED = object()


def run_id(cfg: RunConfig, pretrained_id: str | None = _PRETRAINED,  # type: ignore[assignment]
           variant: Variant | None = None) -> str:
    """Hash of the resolved config (and the suite version): the identity of a run. A lagging
    run's id holds its pretrained decoder's (``pretrained_id``; computed here when not given);
    ``variant``: the run's variant object, when the caller has it (its declared parameters)."""
    d = to_dict(cfg)
    for section, key in HASHED_ONLY_WHEN_SET:  # added later: existing run ids stay valid
        if d[section][key] == getattr(getattr(RunConfig(), section), key):
            del d[section][key]
    for section, key in NOT_HASHED:
        del d[section][key]
    params = variant.params if variant is not None else config.variant_params(cfg.variant)
    for key, param in params.items():  # the same for variant parameters
        if param.late and d["hparams"].get(key) == param.default:
            del d["hparams"][key]
    if data.digest(cfg.dataset):  # a dataset file: its contents are part of the run's id
        d["dataset_sha256"] = data.digest(cfg.dataset)
    outside = variant_source(cfg.variant)
    if outside:  # a variant from outside the package: its source is part of the run's identity
        d["variant_sha256"] = outside["sha256"]
    if pretrained_id is _PRETRAINED:
        pre = pretrain_config(cfg)
        pretrained_id = None if pre is None else run_id(pre)
    if pretrained_id is not None:  # the pretrained decoder's identity is part of this run's
        d["decoder_pretrain_run"] = pretrained_id
    blob = json.dumps({"suite_version": SUITE_VERSION, **d}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
