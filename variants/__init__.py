"""The variants being compared, by name.

A new variant is one small module overriding a hook of ``Variant`` plus one line in ``_MODULES``.
"""

from __future__ import annotations

import importlib

from .base import ConfigError, Param, Variant

REGISTRY: dict[str, type[Variant]] = {}

_MODULES = ("vae", "beta", "annealing", "free_bits", "iwae", "gumbel", "decoder_only",
            "aggressive", "bn_vae", "delta_vae", "pretrained_encoder", "skip_vae", "du_vae", "mmd")


def register(name: str):
    """Class decorator: make a Variant subclass available as ``name``."""

    def wrap(cls: type[Variant]) -> type[Variant]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def create(name: str, **hparams: object) -> Variant:
    """The variant ``name`` with validated hyperparameters (ConfigError if anything is wrong)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown variant {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name](**hparams)


for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")

__all__ = ["REGISTRY", "ConfigError", "Param", "Variant", "create", "register"]
