"""A run's identity, in one place: its id (the hash of its resolved config, ``config.run_id``),
its directory name, where its mid-run checkpoints live, and the pretrained decoder run a
lagging configuration starts from (``config.pretrain_config``). The suite, the report and the
runner all name runs through this module."""

from __future__ import annotations

from pathlib import Path

from . import datasets
from .config import RunConfig, pretrain_config, run_id

__all__ = ["checkpoint_dir", "pretrain_config", "run_id", "run_name"]


def run_name(cfg: RunConfig) -> str:
    """``variant-dataset-sSEED-ID``: an import path's ``:`` becomes ``.``, a dataset file is
    named by its stem (the run id carries both digests)."""
    variant = cfg.variant.replace(":", ".")
    dataset = Path(cfg.dataset).stem if datasets.digest(cfg.dataset) else cfg.dataset
    return f"{variant}-{dataset}-s{cfg.seed}-{run_id(cfg)}"


def checkpoint_dir(target: Path) -> Path:
    """Where a run's mid-run checkpoints live: beside its directory, in the results' hidden
    ``.checkpoints`` folder (the ``.NAME.*`` folders of a run are its writers' temporaries,
    removed as orphans when a run starts)."""
    return target.parent / ".checkpoints" / target.name
