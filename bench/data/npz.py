"""A dataset of one's own: an ``.npz`` file given wherever a dataset name is accepted.

The file holds ``train`` and ``test`` arrays (and optionally ``valid``), each of shape (N, ...)
with the same shape per point: binary pixels or grey levels in [0, 1], any image shape. Grey
levels are probabilities, binarized as the built-in image datasets are (``bench.data.builtin``): the
training split afresh every epoch from the run's stream, the test and validation splits once
from their fixed seeds. A 2-d point shape (H, W), after dropping axes of size 1, is an image
(the PixelCNN decoder works on it); any other shape is a flat vector of pixels.

The file's sha256 is part of the run id and recorded in env.json, so an edited file never reuses
the runs of its former contents. A bad file (unreadable, wrong keys, values outside [0, 1],
NaN, empty, mismatched shapes) is refused in one line naming the file.

Token sequences: a file that also holds ``vocab_size`` (one integer) is read as token ids of a
fixed length, integer arrays (N, L) with ids in [0, vocab_size), modelled by the lstm decoder
(``bench.data.tokens``); floats, ids out of range, empty splits and lengths that differ between
splits are refused in one line. Padded sequences with lengths are not supported.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from .builtin import TEST_BINARIZATION_SEED, VALIDATION_SEED, DataError, Dataset, binarize, sha256

SUFFIX = ".npz"
REQUIRED, OPTIONAL = ("train", "test"), ("valid", "vocab_size")
#: validation points held out of the training split when the file brings none (``-1``)
MAX_HELD_OUT = 2000

_digests: dict[tuple[str, int, int], str] = {}
_checked_arrays: dict[tuple[str, str], tuple[dict[str, np.ndarray], tuple]] = {}


def is_file(name: str) -> bool:
    return isinstance(name, str) and name.endswith(SUFFIX)


def file_digest(name: str) -> str:
    """sha256 of the file's bytes (cached per path, size and modification time)."""
    path = Path(name).expanduser()
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"dataset file {name}: cannot read it ({e.strerror}); allowed: an "
                        "existing .npz file with train and test arrays") from None
    if not path.is_file():  # a directory, a FIFO, a device (a link to /dev/zero): never read
        raise DataError(f"dataset file {name}: not a regular file; allowed: an .npz file with "
                        "train and test arrays")
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        with open(path, "rb") as f:  # in chunks: the file is not held in memory for this
            _digests[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _digests[key]


def _arrays(name: str) -> dict[str, np.ndarray]:
    path = Path(name).expanduser()
    file_digest(name)  # a missing or unreadable file: one line
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in REQUIRED if k not in keys]
            unknown = sorted(keys - set(REQUIRED) - set(OPTIONAL))
            if missing or unknown:
                what = (f"no {' or '.join(missing)} array" if missing
                        else f"unknown array {unknown[0]!r}")
                has = ", ".join(sorted(keys)) or "nothing"
                raise DataError(f"dataset file {name}: {what} (has: {has}); allowed: train, "
                                "test and optionally valid (and vocab_size for token ids)")
            wanted = [k for k in (*REQUIRED, *OPTIONAL) if k in keys]
            _check_claims(name, z, wanted)
            return {k: z[k] for k in wanted}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"dataset file {name}: not a readable .npz ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); allowed: a file "
                        "written by numpy.savez with train and test arrays") from None


def _check_claims(name: str, z, keys: list[str]) -> None:
    """DataError before anything is read when the arrays' headers claim more bytes than this
    process may still use (``machine.budget``): a header can claim any shape."""
    from ..machine.budget import available_bytes

    have = available_bytes()
    total = 0
    for k in keys:
        with z.zip.open(f"{k}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        total += math.prod(shape) * dtype.itemsize
        if have is not None and total > have:
            raise DataError(f"dataset file {name}: its arrays claim {total / 2**30:,.1f} GiB "
                            f"(array {k!r}: shape {shape}, {dtype}), more than the "
                            f"{have / 2**30:.1f} GiB available; allowed: a file that fits")


def _checked(name: str, key: str, a: np.ndarray, point_shape: tuple | None) -> np.ndarray:
    where = f"dataset file {name}: array {key!r}"
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {a.dtype}; allowed: numbers in [0, 1]")
    if a.ndim < 2 or a.shape[0] == 0 or a[0].size == 0:
        raise DataError(f"{where} has shape {a.shape}; allowed: (N, ...) with N >= 1 points of "
                        "at least one pixel")
    if point_shape is not None and a.shape[1:] != point_shape:
        raise DataError(f"{where} has points of shape {a.shape[1:]}, 'train' {point_shape}; "
                        "allowed: the same shape in every split")
    x = a.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where} holds NaN or infinite values; allowed: numbers in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{where} has values in [{lo:g}, {hi:g}]; allowed: binary pixels or grey "
                        "levels in [0, 1] (divide 8-bit images by 255)")
    return x.reshape(len(x), -1)


def image_shape(point_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    shape = tuple(d for d in point_shape if d != 1)
    return shape if len(shape) == 2 else None


def _vocab(name: str, a: np.ndarray) -> int:
    if a.ndim != 0 or a.dtype.kind not in "iu" or int(a) < 2:
        raise DataError(f"dataset file {name}: vocab_size is {a.tolist()!r} ({a.dtype}); "
                        "allowed: one integer >= 2 (token ids are 0 .. vocab_size - 1)")
    return int(a)


def _tokens(name: str, arrays: dict[str, np.ndarray]) -> dict:
    """A token file's splits, checked, as int64 (N, L) arrays (``bench.data.tokens``)."""
    from .tokens import check_tokens

    vocab = _vocab(name, arrays.pop("vocab_size"))
    length = None
    for k, a in arrays.items():
        check_tokens(f"dataset file {name}", f"array {k!r}", a, vocab)
        if length is not None and a.shape[1] != length:
            raise DataError(f"dataset file {name}: array {k!r} has sequences of length "
                            f"{a.shape[1]}, 'train' {length}; allowed: one fixed length")
        length = a.shape[1] if length is None else length
    return {**{k: a.astype(np.int64) for k, a in arrays.items()}, "vocab_size": vocab}


def _validated(name: str) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """The file's splits, checked, as float32 (N, D) arrays (int64 token ids with the
    ``vocab_size`` they come with), and the shape of one point (cached per file contents)."""
    key = (file_digest(name), "arrays")
    if key not in _checked_arrays:
        arrays = _arrays(name)
        shape = arrays["train"].shape[1:]
        flat = _tokens(name, arrays) if "vocab_size" in arrays else {
            k: _checked(name, k, a, shape if k != "train" else None) for k, a in arrays.items()}
        _checked_arrays.clear()  # one file's arrays at a time
        _checked_arrays[key] = (flat, shape)
    return _checked_arrays[key]


def point_shape(name: str) -> tuple[int, ...]:
    return _validated(name)[1]


def check(name: str) -> None:
    """DataError (one line) unless ``name`` is a readable, valid dataset file."""
    _validated(name)


def likelihood(name: str) -> str:
    """categorical for a file of token ids (it has ``vocab_size``), else bernoulli."""
    return "categorical" if "vocab_size" in _validated(name)[0] else "bernoulli"


def load_npz(name: str) -> Dataset:
    flat, shape = _validated(name)
    if "vocab_size" in flat:  # token ids: never binarized
        tensors = {k: torch.from_numpy(a.copy()) for k, a in flat.items() if k != "vocab_size"}
        digests = {"file": file_digest(name)}
        if "valid" in tensors:
            digests["validation"] = sha256(tensors["valid"])
        return Dataset(name, tensors["train"], tensors["test"], "categorical",
                       f"file {Path(name).expanduser().resolve()}", None, digests,
                       dynamic_binarization=False, valid=tensors.get("valid"),
                       vocab_size=flat["vocab_size"])
    train = torch.from_numpy(flat["train"].copy())
    test = binarize(torch.from_numpy(flat["test"]),
                    torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    digests = {"file": file_digest(name), "test_binarized": sha256(test.to(torch.uint8))}
    valid = None
    if "valid" in flat:
        valid = binarize(torch.from_numpy(flat["valid"]),
                         torch.Generator().manual_seed(VALIDATION_SEED))
        digests["validation"] = sha256(valid.to(torch.uint8))
    return Dataset(name, train, test, "bernoulli", f"file {Path(name).expanduser().resolve()}",
                   image_shape(shape), digests, valid=valid)


def validation_size(name: str) -> int:
    """The default validation split: the file's own ``valid`` array, else an eighth of the
    training points (at most ``MAX_HELD_OUT``; none when there is a single one) held out."""
    flat = _validated(name)[0]
    n = len(flat["train"])  # (the same for token files)
    if "valid" in flat:
        return len(flat["valid"])
    return max(1, min(MAX_HELD_OUT, n // 8)) if n > 1 else 0
