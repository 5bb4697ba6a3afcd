"""How throughput is measured: device-synchronized timers, interleaved rounds and their median
ratios, the fp32 matmul and conv peaks, and the FLOP model of the layers."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from variants.core import VAE


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds for n calls of fn, with the device synchronized around them."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], calls: int, rounds: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each fn, timed round-robin: every round times ``calls`` calls of each
    in turn, so a slow phase of a shared machine hits all of them alike. One warm-up round."""
    for fn in fns.values():
        timed(fn, 2, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, calls, device) / calls)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """The median over rounds of num/den (each round's pair was timed back to back)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def matmul_peak(device: torch.device, size: int = 2048, reps: int = 5) -> float:
    """fp32 GFLOP/s of a size^3 matmul (the best of reps, after a warm-up)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = min(timed(lambda: a @ b, 3, device) / 3 for _ in range(reps))
    return 2 * size**3 / best / 1e9


def conv_peak(device: torch.device, channels: int = 64, size: int = 28, batch: int = 64,
              reps: int = 5) -> float:
    """fp32 GFLOP/s of a 3x3 convolution, channels -> channels, on batch x size x size images
    (the best of reps, after a warm-up): the reference for a PixelCNN decoder."""
    x = torch.randn(batch, channels, size, size, device=device)
    w = torch.randn(channels, channels, 3, 3, device=device)
    F.conv2d(x, w, padding=1)
    best = min(timed(lambda: F.conv2d(x, w, padding=1), 3, device) / 3 for _ in range(reps))
    return 2 * batch * channels * channels * 9 * size * size / best / 1e9


def linear_flops(module: nn.Module) -> int:
    """Forward FLOPs per row of every Linear layer in module."""
    return sum(2 * m.in_features * m.out_features for m in module.modules()
               if isinstance(m, nn.Linear))


def conv_flops(module: nn.Module, pixels: int) -> int:
    """Forward FLOPs per image of every Conv2d in module (stride 1, outputs the image's size)."""
    return sum(2 * m.in_channels * m.out_channels * math.prod(m.kernel_size) * pixels
               for m in module.modules() if isinstance(m, nn.Conv2d))


def decoder_flops(decoder: nn.Module) -> int:
    """Forward FLOPs of the decoder per (point, sample) row, as the dense kernels run them (a
    masked matmul counts in full)."""
    return linear_flops(decoder) + conv_flops(decoder, getattr(decoder, "d", 0))


def step_flops(model: VAE, batch: int, samples: int) -> int:
    """Forward + backward FLOPs of one training step: encoder per point, decoder per sample."""
    forward = batch * linear_flops(model.encoder) + batch * samples * decoder_flops(model.decoder)
    return 3 * forward


def eval_flops(decoder: nn.Module, points: int, k: int) -> int:
    """Decoder FLOPs of importance sampling points x K: what depends on x alone (the x-terms of
    an autoregressive decoder) once per point, the rest per sample."""
    per_row = decoder_flops(decoder)
    shared = 0
    if hasattr(decoder, "layers"):  # MADE: the first masked layer and the direct map
        shared = linear_flops(decoder.layers[0]) + (linear_flops(decoder.direct)
                                                    if decoder.direct is not None else 0)
    elif hasattr(decoder, "v_convs"):  # PixelCNN: the first layer's convolutions of x
        shared = sum(conv_flops(m, decoder.d) for m in
                     (decoder.v_convs[0], decoder.h_convs[0], decoder.v_to_h[0]))
    return points * shared + points * k * (per_row - shared)
