"""Token sequences as data: integer ids in [0, vocab_size) of fixed length, modelled with a
categorical likelihood (an LSTM decoder, ``model.decoder = lstm``), and ``synthetic-lstm``, He et
al. 2019's synthetic experiment generated here from a fixed seed.

``synthetic-lstm`` follows the facts of jxhe/vae-lagging-encoder's generator
(``synthetic-data/generate.py`` and ``lm_lstm.py`` at commit 6c014aa; their code is not used):
z from a uniform mixture of 4 unit-variance Gaussians centred at (+-2, +-2); a one-layer LSTM
language model with 100 hidden units and 100-dimensional embeddings over a vocabulary of 1000,
every parameter drawn U(-1, 1) but the z -> logits map, U(-5, 5); the cell state starts at
c0 = W z (no bias) and the hidden state at h0 = tanh(c0); z is concatenated to every input
embedding; the logits are W1 h + W2 z (no biases); the first token is uniform and each of the
next 9 is drawn from the softmax of the logits after the previous one. They draw 20,000
sequences with torch's generator (seed 19950927) and point validation and test at one file;
here the draw is NumPy's (PCG64, float64 throughout, same seed), 24,000 sequences: the first
22,000 are the training split (from which the dataset layer holds out 2,000 for validation) and
the last 2,000 the test split. A sequence drawn twice is kept once (4 repeats inside the
training draws, 1 test sequence that the training split holds), so no sequence is in two
splits: 21,996 training and 1,999 test sequences. The generating z of every sequence is kept as the
dataset's oracle (``oracle["z_train"]``, ``oracle["z_test"]``), with the generator's parameters
(``oracle["generator"]``; ``log_joint`` gives its log p(x, z), ``bench.evaluation.oracle`` its
log p(x)). The arrays are verified against
the digest below: a platform whose float64 softmax rounds differently enough to move a single
draw is refused, naming both digests, rather than training on other data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from variants.errors import ConfigError

from .builtin import DataError, Dataset, sha256

SEED = 19950927  # He et al.'s generator seed
VOCAB, LENGTH, EMBED, HIDDEN, LATENT = 1000, 10, 100, 100, 2
TRAIN, TEST = 22_000, 2_000
CENTRES = np.array([[-2.0, -2.0], [2.0, 2.0], [-2.0, 2.0], [2.0, -2.0]])
#: sha256 of the generated (train, test) token arrays as int64, C order
DIGESTS = {"train": "e0cabb5cb885341c75295eae54f5ed240a3ced0a7be76c6efefe52387ddd255e",
           "test": "81719215ca629694d255e406f8bdeff64cd250e33186e865945f60539ab0f4b1"}


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def parameters(rng: np.random.Generator, vocab: int = VOCAB, embed: int = EMBED,
               hidden: int = HIDDEN) -> dict[str, np.ndarray]:
    """The generating LSTM's parameters, the first draws of ``rng`` (float64)."""
    u = lambda bound, *shape: rng.uniform(-bound, bound, size=shape)  # noqa: E731
    par = {"emb": u(1.0, vocab, embed), "w_ih": u(1.0, 4 * hidden, embed + LATENT),
           "w_hh": u(1.0, 4 * hidden, hidden)}
    par["b"] = u(1.0, 4 * hidden) + u(1.0, 4 * hidden)  # the LSTM's two biases, as torch keeps them
    par["w_c"] = u(1.0, hidden, LATENT)
    par["w_1"], par["w_2"] = u(1.0, vocab, hidden), u(5.0, vocab, LATENT)
    return par


def generate(n: int, seed: int = SEED, vocab: int = VOCAB, length: int = LENGTH,
             embed: int = EMBED, hidden: int = HIDDEN) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (n, length) int64, z (n, 2) float64) from He et al.'s generating model, its
    parameters and every draw from one NumPy generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    par = parameters(rng, vocab, embed, hidden)
    z = CENTRES[rng.integers(0, 4, size=n)] + rng.standard_normal((n, LATENT))
    tokens = np.empty((n, length), np.int64)
    tokens[:, 0] = rng.integers(0, vocab, size=n)
    c = z @ par["w_c"].T
    h = np.tanh(c)
    z_logits = z @ par["w_2"].T
    for t in range(1, length):
        gates = np.concatenate([par["emb"][tokens[:, t - 1]], z], 1) @ par["w_ih"].T \
            + h @ par["w_hh"].T + par["b"]
        i, f, g, o = np.split(gates, 4, axis=1)  # torch's gate order
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        logits = h @ par["w_1"].T + z_logits
        p = np.exp(logits - logits.max(1, keepdims=True))
        cdf = np.cumsum(p, 1)
        draw = rng.random(n)[:, None] * cdf[:, -1:]
        tokens[:, t] = np.minimum((cdf < draw).sum(1), vocab - 1)
    return tokens, z


def log_prior(z: torch.Tensor) -> torch.Tensor:
    """log p(z) of the generator's prior, the uniform mixture of N(centre, I) (..., 2) -> (...)."""
    centres = torch.as_tensor(CENTRES, dtype=z.dtype, device=z.device)
    sq = ((z[..., None, :] - centres) ** 2).sum(-1)
    return torch.logsumexp(-0.5 * sq, -1) - math.log(4 * 2 * math.pi)


def log_likelihood(par: dict[str, torch.Tensor], tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) of the generating model for rows of tokens (n, length) and latents (n, 2),
    in the parameters' dtype: log(1/vocab) for the uniform first token, then the softmax
    of each next token's logits, as ``generate`` draws them (the embeddings' share of the
    gates taken from one table per vocabulary entry)."""
    z = z.to(par["w_c"].dtype)
    vocab, embed = par["emb"].shape
    table = par["emb"] @ par["w_ih"][:, :embed].T + par["b"]
    z_gates = z @ par["w_ih"][:, embed:].T
    c = z @ par["w_c"].T
    h = torch.tanh(c)
    z_logits = z @ par["w_2"].T
    out = torch.full((len(z),), -math.log(vocab), dtype=z.dtype, device=z.device)
    for t in range(1, tokens.shape[1]):
        i, f, g, o = (table[tokens[:, t - 1]] + z_gates + h @ par["w_hh"].T).chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        logits = h @ par["w_1"].T + z_logits
        out += logits.gather(1, tokens[:, t:t + 1])[:, 0] - torch.logsumexp(logits, 1)
    return out


def log_joint(par: dict[str, torch.Tensor]):
    """(tokens (n, length), z (n, 2)) -> log p(x, z) of the generating model, (n,)."""
    return lambda tokens, z: log_likelihood(par, tokens, z) + log_prior(z.to(par["w_c"].dtype))


def generating_model(ds) -> tuple:
    """(log p(x, z), log p(z), the test split's generating z) of ``synthetic-lstm``'s generator."""
    par = ds.oracle["generator"]
    return log_joint(par), log_prior, ds.oracle["z_test"]


def _first_unique(a: np.ndarray, seen: set | None = None) -> np.ndarray:
    """Indices of the rows of ``a`` not in ``seen`` and not repeating an earlier row."""
    seen = set() if seen is None else set(seen)
    keep = []
    for i, row in enumerate(map(bytes, a)):
        if row not in seen:
            seen.add(row)
            keep.append(i)
    return np.array(keep, np.int64)


def load_synthetic_lstm() -> Dataset:
    tokens, z = generate(TRAIN + TEST)
    first = _first_unique(tokens[:TRAIN])
    train, z_train = tokens[first], z[first]
    rest = TRAIN + _first_unique(tokens[TRAIN:], set(map(bytes, train)))
    test, z_test = tokens[rest], z[rest]
    digests = {"train": sha256(train), "test": sha256(test)}
    for split, expected in DIGESTS.items():
        if digests[split] != expected:
            raise DataError(f"synthetic-lstm: the generated {split} split has sha256 "
                            f"{digests[split]}, expected {expected}; this platform's float64 "
                            "arithmetic moved a draw (not trained on)")
    return Dataset("synthetic-lstm", torch.from_numpy(train), torch.from_numpy(test),
                   "categorical", f"generated (He et al. 2019's protocol, seed {SEED})", None,
                   digests, dynamic_binarization=False, vocab_size=VOCAB,
                   oracle={"z_train": torch.from_numpy(z_train),
                           "z_test": torch.from_numpy(z_test),
                           "generator": {k: torch.from_numpy(v) for k, v in
                                         parameters(np.random.default_rng(SEED)).items()}})


def check_tokens(name: str, split: str, a: np.ndarray, vocab_size: int) -> None:
    """DataError unless ``a`` is a non-empty 2-d integer array of ids in [0, vocab_size)."""
    if a.dtype.kind not in "iu":
        raise DataError(f"{name}: {split} holds {a.dtype} values; allowed for token data: an "
                        "integer array of ids")
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{name}: {split} has shape {a.shape}; allowed for token data: a "
                        "non-empty (sequences, length) array")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= vocab_size:
        raise DataError(f"{name}: {split} holds token ids {lo} .. {hi}; allowed: 0 .. "
                        f"{vocab_size - 1} (vocab_size = {vocab_size})")


def model_encoder(dataset: str, likelihood: str, decoder: str, encoder: str,
                  dropout: bool) -> str:
    """The model's encoder (``model.encoder``, ``auto`` resolved: lstm for token sequences) once
    the decoder and encoder are checked against the data: token sequences (a categorical
    likelihood) take the lstm decoder and encoder, pixels the others."""
    tokens = likelihood == "categorical"
    if tokens and decoder != "lstm":
        raise ConfigError(f"model.decoder={decoder!r} models pixels; allowed for the token "
                          f"sequences of {dataset}: lstm")
    if not tokens and decoder == "lstm":
        raise ConfigError(f"model.decoder=lstm models token sequences; allowed for {dataset}: "
                          "mlp, made, pixelcnn")
    if tokens and encoder == "mlp":
        raise ConfigError(f"model.encoder=mlp reads pixels; allowed for the token sequences of "
                          f"{dataset}: lstm (or auto)")
    if not tokens and encoder == "lstm":
        raise ConfigError(f"model.encoder=lstm reads token sequences; allowed for {dataset}: mlp "
                          "(or auto)")
    if not tokens and dropout:
        raise ConfigError("model.dropout / model.word_dropout act on the lstm decoder; allowed "
                          "with model.decoder=lstm")
    return "lstm" if tokens else encoder
