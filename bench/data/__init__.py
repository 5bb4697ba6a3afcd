"""A dataset by name: one of the built-in loaders (``bench.data.builtin``) or a user's ``.npz`` file
(``bench.data.npz``). Everything that accepts a dataset name asks here."""

from __future__ import annotations

import os

from variants.errors import ConfigError

from . import builtin, npz, tokens

builtin.LOADERS["synthetic-lstm"] = lambda root: tokens.load_synthetic_lstm()
#: datasets drawn from a known model with a 2-d latent: name -> f(dataset) giving (log p(x, z),
#: log p(z), the test split's generating z), for the data's own likelihood (bench.evaluation.oracle)
GENERATING_MODELS = {"synthetic-lstm": tokens.generating_model}


def allowed() -> str:
    return (f"{', '.join(builtin.LOADERS)}, or a path to an .npz file (train, test[, valid]"
            "[, vocab_size for token ids])")


def check(name: str) -> None:
    """ConfigError unless ``name`` is a built-in dataset or a readable .npz file."""
    if npz.is_file(name):
        npz.check(name)
    elif name not in builtin.LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {allowed()}")


def load(name: str, root: str | os.PathLike | None = None) -> builtin.Dataset:
    if npz.is_file(name):
        return npz.load_npz(name)
    check(name)
    return builtin.LOADERS[name](builtin.data_dir(root))


def validation_size(name: str) -> int:
    """Points of the validation split when ``train.validation_size = -1``."""
    return npz.validation_size(name) if npz.is_file(name) \
        else builtin.VALIDATION_SIZES[name]


def model_defaults(name: str) -> dict:
    return {} if npz.is_file(name) else builtin.MODEL_DEFAULTS.get(name, {})


def digest(name: str) -> str | None:
    """sha256 of a dataset file (part of its runs' ids); None for a built-in dataset, whose
    arrays are verified against the digests in ``bench.data.builtin``."""
    return npz.file_digest(name) if npz.is_file(name) else None


def likelihood(name: str) -> str:
    """The likelihood a dataset is modelled with, without loading it."""
    return npz.likelihood(name) if npz.is_file(name) \
        else builtin.LIKELIHOODS.get(name, "bernoulli")


#: point shape of the built-in datasets (pixels, or (H, W) for images)
SHAPES = {"mnist": (28, 28), "fashion-mnist": (28, 28), "mnist-grey": (28, 28), "digits": (8, 8),
          "linear-gaussian": (20,), "synthetic-lstm": (10,)}


def point_shape(name: str) -> tuple[int, ...]:
    """The shape of one data point, without loading the data (a file: validated once)."""
    return npz.point_shape(name) if npz.is_file(name) else SHAPES[name]
