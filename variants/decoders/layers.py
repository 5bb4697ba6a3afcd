"""What every decoder family is built from: the MLP layer stack, the Bernoulli likelihood from
logits, and the start from a decoder trained without a latent (the lagging set-up)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}


def mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> list[nn.Module]:
    """The layers of an MLP. With n_in = 0 (a decoder without a latent) the first layer is a
    learned constant: torch initializes its empty weight to nothing and its bias to 0."""
    layers: list[nn.Module] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        for width in hidden:
            layers += [nn.Linear(n_in, width), ACTIVATIONS[activation]()]
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
    return layers


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(l)) summed over the last axis: x l - softplus(l), exact and stable.

    Computed by the fused binary cross-entropy kernel (one pass forward and one backward instead
    of four elementwise passes each); x and the logits broadcast against each other.
    """
    if logits.shape != x.shape:
        logits, x = torch.broadcast_tensors(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def load_pretrained(decoder: nn.Module, state: dict[str, Tensor],
                    z_columns: tuple[str, ...] = ()) -> None:
    """Start ``decoder`` from the same decoder trained without a latent (Z = 0): the lagging
    set-up of He et al. 2019 made explicit.

    Every tensor of ``state`` is copied. The only ones allowed to differ are those that carry z:
    absent from ``state`` (a z-map that a latent-free decoder does not have) or empty there (the
    MLP's first layer, whose z-columns number 0). They are set to zero, so at the first step the
    model computes exactly the pretrained decoder's p(x), whatever z is: a function-preserving
    start, as if the pretrained decoder had had z-connections of weight 0 all along (fresh random
    z-maps would instead perturb every pretrained unit with noise). ``z_columns`` names tensors
    whose input is the pretrained decoder's with z's columns appended (the LSTM's first input
    weights, over [embedding, z]): their leading columns are copied, z's set to zero.
    """
    own = decoder.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ValueError(f"pretrained decoder has tensors this decoder lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in own.items():
            theirs = state.get(name)
            if theirs is not None and theirs.shape == tensor.shape:
                tensor.copy_(theirs)
            elif name in z_columns and theirs is not None \
                    and theirs.shape[:-1] == tensor.shape[:-1] \
                    and theirs.shape[-1] < tensor.shape[-1]:
                tensor.zero_()
                tensor[..., :theirs.shape[-1]] = theirs
            elif theirs is None or (theirs.numel() == 0 and theirs.shape[:-1] == tensor.shape[:-1]):
                tensor.zero_()  # carries z
            else:
                raise ValueError(f"pretrained decoder tensor {name} has shape "
                                 f"{tuple(theirs.shape)}, this decoder {tuple(tensor.shape)}")
