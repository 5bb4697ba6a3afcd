"""Throughput: training steps and importance-sampled evaluation against the hardware limit.

Every figure is a ratio measured in one process, interleaved with its baseline so that machine
noise cancels: ours against a minimal hand-written PyTorch training loop for the same model and
batch (``HandWrittenVAE`` below, deliberately independent of ``variants.core``), and achieved
GFLOP/s against the device's fp32 matmul peak measured in the same process. Medians of repeats.

FLOP model: a Linear layer costs 2 * in * out per row forward and twice that backward; only the
MLP layers are counted (activations, likelihood and optimizer are not), so the fraction of peak
is a lower bound on how well the matmuls run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from variants import create as create_variant
from variants.core import VAE
from variants.decoders import made_masks
from variants.latents import GaussianLatent

from .metrics import IS_BLOCK, encode, nll_is_points
from .train import DEFAULT_CLIP, compile_model, make_optimizer, train_step


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


class HandWrittenVAE(nn.Module):
    """The baseline: the plainest VAE step one would write by hand for the same model.

    Gaussian latent of size d_z (k > 1: the k-sample IWAE bound), or with ``categorical=(N, C)``
    the Gumbel-Softmax VAE through ``F.gumbel_softmax`` and the categorical KL.
    """

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_z: int, k: int = 1,
                 categorical: tuple[int, int] | None = None):
        super().__init__()
        self.k, self.categorical = k, categorical
        d_enc = 2 * d_z if categorical is None else categorical[0] * categorical[1]
        enc, dec, w = [], [], d_in
        for h in hidden:
            enc += [nn.Linear(w, h), nn.Tanh()]
            w = h
        self.enc = nn.Sequential(*enc, nn.Linear(w, d_enc))
        w = d_z if categorical is None else d_enc
        for h in reversed(hidden):
            dec += [nn.Linear(w, h), nn.Tanh()]
            w = h
        self.dec = nn.Sequential(*dec, nn.Linear(w, d_in))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.categorical is not None:
            logits = self.enc(x).unflatten(-1, self.categorical)
            y = F.gumbel_softmax(logits, tau=1.0).flatten(-2)
            rec = F.binary_cross_entropy_with_logits(self.dec(y), x, reduction="sum") / len(x)
            logp = torch.log_softmax(logits, -1)
            kl = (logp.exp() * (logp + math.log(self.categorical[1]))).sum() / len(x)
            return rec + kl
        if self.k > 1:
            mu, logvar = self.enc(x).chunk(2, dim=-1)
            std = torch.exp(0.5 * logvar)
            eps = torch.randn(self.k, *mu.shape)
            z = mu + std * eps
            log_px = -F.binary_cross_entropy_with_logits(
                self.dec(z), x.expand(self.k, *x.shape), reduction="none").sum(-1)
            log_w = log_px - 0.5 * (z**2).sum(-1) + 0.5 * (eps**2 + logvar).sum(-1)
            return -(torch.logsumexp(log_w, 0) - math.log(self.k)).mean()
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.dec(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
        return rec + kl


def tanh_encoder(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    """A plain tanh MLP, the hand-written baselines' encoder."""
    layers, w = [], d_in
    for h in hidden:
        layers += [nn.Linear(w, h), nn.Tanh()]
        w = h
    return nn.Sequential(*layers, nn.Linear(w, d_out))


class HandWrittenMADEVAE(nn.Module):
    """The baseline for the MADE decoder, written as one would by hand: an MLP encoder and a
    MADE whose every layer is a masked Linear applied to the full input (Germain et al. 2015),
    z added to the first hidden layer and the output (the decoder's base conditioning). Masks
    from ``made_masks``, so it is the same architecture; nothing of ``variants.decoders`` runs
    in it."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_z: int, dec_hidden: tuple[int, ...]):
        super().__init__()
        self.enc = tanh_encoder(d_in, hidden, 2 * d_z)
        widths = (d_in, *dec_hidden, d_in)
        self.lins = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.zs = nn.ModuleList(nn.Linear(d_z, b, bias=False) for b in (widths[1], d_in))
        self.direct = nn.Linear(d_in, d_in, bias=False)
        masks, direct = made_masks(d_in, dec_hidden, -1)
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m)
        self.register_buffer("direct_mask", direct)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        h = x
        last = len(self.lins) - 1
        for i, lin in enumerate(self.lins):
            h = F.linear(h, lin.weight * getattr(self, f"mask{i}"), lin.bias)
            if i in (0, last):
                h = h + self.zs[0 if i == 0 else 1](z)
            h = torch.tanh(h) if i < last else h
        logits = h + F.linear(x, self.direct.weight * self.direct_mask)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
        return rec + kl


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


#: the decoders `vae-bench throughput --decoder` measures, at CPU-sized defaults
DECODER_SETUPS = {
    "mlp": {},
    "made": {"decoder": "made", "decoder_hidden": (500,)},
    "pixelcnn": {"decoder": "pixelcnn", "image_shape": (28, 28), "layers": 3, "channels": 16},
}


class HandWrittenPixelCNNVAE(nn.Module):
    """The baseline for the PixelCNN decoder: the minimal loop (encoder, reparameterization,
    BCE on the logits, analytic KL) around a ``PixelCNNDecoder`` of the same size. The
    convolutions are the work here; how well they run is judged against the conv peak."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_z: int, **decoder_kwargs):
        super().__init__()
        from variants.decoders import PixelCNNDecoder

        self.enc = tanh_encoder(d_in, hidden, 2 * d_z)
        kw = {k: v for k, v in decoder_kwargs.items() if k != "decoder"}
        self.dec = PixelCNNDecoder(d_z, kw.pop("image_shape"), **kw)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.dec.logits(x, z[None])[0]
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
        return rec + kl


def hand_written_model(decoder: str, d_in: int, hidden: tuple[int, ...], latent: int, k: int,
                       categorical) -> nn.Module:
    kwargs = DECODER_SETUPS[decoder]
    if decoder == "made":
        return HandWrittenMADEVAE(d_in, hidden, latent, kwargs["decoder_hidden"])
    if decoder == "pixelcnn":
        return HandWrittenPixelCNNVAE(d_in, hidden, latent, **kwargs)
    return HandWrittenVAE(d_in, hidden, latent, k, categorical)


def train_throughput(variant_name: str, device: torch.device, batch: int = 100,
                     hidden: tuple[int, ...] = (200, 200), latent: int = 50, d_in: int = 784,
                     calls: int = 10, rounds: int = 15, compile: bool = False,
                     decoder: str = "mlp") -> dict:
    """Train-step samples/s of ours and of two hand-written loops, interleaved; medians.

    Baselines: ``minimal`` is the loop most people write (``torch.optim.Adam`` with its default
    implementation, no clip); ``same_optimizer`` is the same loop with the fused Adam and the
    gradient-norm clip (``train.clip``'s default) that ``fit`` uses, so ``ratio_same_optimizer``
    isolates what the harness itself costs or saves. With
    ``compile``, the fast mode (``bench.train.compile_model``) is timed in the same rounds.
    ``decoder`` picks the decoder family (``DECODER_SETUPS``) and its hand-written counterpart.
    """
    variant = create_variant(variant_name)
    lat = variant.latent(latent)
    model = VAE.for_variant(variant, d_in, latent, hidden=hidden,
                            **DECODER_SETUPS[decoder]).to(device)
    categorical = (lat.n_vars, lat.n_classes) if hasattr(lat, "n_classes") else None
    bases = {name: hand_written_model(decoder, d_in, hidden, latent, variant.train_samples(),
                                      categorical).to(device)
             for name in ("minimal", "same_optimizer")}
    opt = make_optimizer(model.parameters(), lr=1e-4)
    opts = {"minimal": torch.optim.Adam(bases["minimal"].parameters(), lr=1e-4),
            "same_optimizer": make_optimizer(bases["same_optimizer"].parameters(), lr=1e-4)}
    x = (torch.rand(batch, d_in, device=device) < 0.3).float()
    noise = torch.Generator(device=device).manual_seed(0)

    def hand_written(name: str) -> Callable[[], None]:
        def step() -> None:
            loss = bases[name].loss(x)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            if name == "same_optimizer":
                torch.nn.utils.clip_grad_norm_(bases[name].parameters(), DEFAULT_CLIP)
            opts[name].step()
        return step

    fns = {"ours": lambda: train_step(model, variant, opt, x, 0, 1, noise),
           "minimal": hand_written("minimal"), "same_optimizer": hand_written("same_optimizer")}
    if compile:
        fast = compile_model(model)
        fns["fast"] = lambda: train_step(fast, variant, opt, x, 0, 1, noise)
    t = interleaved(fns, calls, rounds, device)
    flops = step_flops(model, batch, variant.train_samples())
    sec = statistics.median(t["ours"])
    row = {"variant": variant_name, "decoder": decoder, "batch": batch,
           "samples_per_s": batch / sec,
           "baseline_samples_per_s": batch / statistics.median(t["minimal"]),
           "ratio_to_baseline": median_ratio(t["minimal"], t["ours"]),
           "same_optimizer_samples_per_s": batch / statistics.median(t["same_optimizer"]),
           "ratio_same_optimizer": median_ratio(t["same_optimizer"], t["ours"]),
           "gflops": flops / sec / 1e9, "flops_per_step": flops, "rounds": rounds}
    if compile:
        row["fast_samples_per_s"] = batch / statistics.median(t["fast"])
        row["fast_over_eager"] = median_ratio(t["ours"], t["fast"])
    return row


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


def eval_throughput(device: torch.device, k: int = 1000, points: int = 200,
                    hidden: tuple[int, ...] = (200, 200), latent: int = 50, d_in: int = 784,
                    rounds: int = 7, decoder: str = "mlp") -> dict:
    """IS evaluation: (points x K) decoder samples per second and decoder GFLOP/s.

    Each round measures the peak (fp32 matmul; conv for a convolutional decoder) and then the
    evaluator, back to back, and the fraction of peak is the median of the per-round ratios: on
    a shared machine both move together.
    """
    model = VAE(d_in, GaussianLatent(latent), hidden=hidden,
                **DECODER_SETUPS[decoder]).to(device).eval()
    x = (torch.rand(points, d_in, device=device) < 0.3).float()
    flops = eval_flops(model.decoder, points, k)
    peak_of = conv_peak if decoder == "pixelcnn" else matmul_peak
    times, fractions, peaks = [], [], []
    with torch.no_grad():
        q = encode(model, x)
        nll_is_points(model, q, x[:IS_BLOCK], min(k, 100), seed=0)  # warm-up
        for _ in range(rounds):
            peaks.append(peak_of(device, reps=2))
            times.append(timed(lambda: nll_is_points(model, q, x, k, seed=0), 1, device))
            fractions.append(flops / times[-1] / 1e9 / peaks[-1])
    sec = statistics.median(times)
    return {"k": k, "points": points, "decoder": decoder, "samples_per_s": points * k / sec,
            "gflops": flops / sec / 1e9, "fraction_of_peak": statistics.median(fractions),
            "peak": "conv" if decoder == "pixelcnn" else "matmul",
            "peak_gflops_rounds": peaks, "rounds": rounds}


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage created inside the block, on any device.

    Process RSS is not a measure of an algorithm's memory (the C allocator's fragmentation and
    caching dominate it), and CPU tensors have no allocator statistics; so every storage an
    operator returns is counted until it is freed (tracked with storage weak references).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def eval_peak_memory(k: int, points: int = 200, device: torch.device | None = None) -> float:
    """Peak MiB of tensors alive during nll_is at K (model and data excluded)."""
    device = device or torch.device("cpu")
    model = VAE(784, GaussianLatent(50)).to(device).eval()
    x = (torch.rand(points, 784, device=device) < 0.3).float()
    with torch.no_grad():
        q = encode(model, x)
        with PeakTensorMemory() as mem:
            nll_is_points(model, q, x, k, seed=0)
    return mem.peak / 2**20


def run_all(device_name: str = "cpu", variants: list[str] | None = None, batch: int = 100,
            k: int = 1000, compile: bool = False, decoder: str = "mlp") -> dict:
    """Every variant's train step (for a decoder other than the MLP: the plain VAE unless
    variants are named) and IS evaluation, with peak memory for the MLP decoder."""
    from variants import REGISTRY

    from .results import environment

    device = torch.device(device_name)
    names = variants or (list(REGISTRY) if decoder == "mlp" else ["vae"])
    if decoder == "pixelcnn":  # a CPU-sized PixelCNN is ~100x an MLP per step: fewer repeats
        rows = [train_throughput(v, device, batch, calls=2, rounds=5, compile=compile,
                                 decoder=decoder) for v in names]
        ev = eval_throughput(device, k=min(k, 20), points=100, rounds=3, decoder=decoder)
    else:
        rows = [train_throughput(v, device, batch, compile=compile, decoder=decoder)
                for v in names]
        ev = eval_throughput(device, k=k, decoder=decoder)
    # train steps against the best peak seen in this process (conservative on a drifting machine)
    peak = max([(conv_peak if decoder == "pixelcnn" else matmul_peak)(device),
                *ev["peak_gflops_rounds"]])
    for r in rows:
        r["fraction_of_peak"] = r["gflops"] / peak
    if decoder == "mlp":
        mem = {kk: eval_peak_memory(kk, device=device) for kk in (k, 10 * k)}
        ev["peak_mib"] = {str(kk): v for kk, v in mem.items()}
        ev["memory_growth"] = mem[10 * k] / mem[k] - 1
    env = environment(device_name, {}, {})
    # (for the PixelCNN the conv peak: the key keeps its name for the report's readers)
    return {"device": device_name, "decoder": decoder, "matmul_peak_gflops": peak,
            "train": rows, "eval": ev,
            "env": {k_: env[k_] for k_ in ("torch", "cpu", "cpu_capability", "threads",
                                           "cuda_device", "git_commit")}}


def format_table(result: dict) -> str:
    hw = result["env"].get("cuda_device") or result["env"]["cpu_capability"]
    lines = [f"decoder {result.get('decoder', 'mlp')}; device {result['device']} ({hw}, "
             f"{result['env']['threads']} threads, torch {result['env']['torch']}): "
             f"best fp32 {'conv' if result.get('decoder') == 'pixelcnn' else 'matmul'} peak "
             f"measured in this process {result['matmul_peak_gflops']:.1f} "
             "GFLOP/s (train steps: fraction of it; IS eval: of the peak measured next to it)",
             "train step: ours and two hand-written loops (minimal: default Adam; same opt.: the "
             "fused Adam that fit uses), medians of interleaved rounds",
             f"{'variant':10} {'samples/s':>10} {'minimal':>9} {'ratio':>6} {'same opt.':>9} "
             f"{'ratio':>6} {'GFLOP/s':>8} {'of peak':>8}"]
    for r in result["train"]:
        lines.append(f"{r['variant']:10} {r['samples_per_s']:10.0f} "
                     f"{r['baseline_samples_per_s']:9.0f} {r['ratio_to_baseline']:6.2f} "
                     f"{r['same_optimizer_samples_per_s']:9.0f} {r['ratio_same_optimizer']:6.2f} "
                     f"{r['gflops']:8.1f} {r['fraction_of_peak']:8.1%}"
                     + (f"   fast mode {r['fast_samples_per_s']:.0f}/s = "
                        f"{r['fast_over_eager']:.2f}x eager" if "fast_over_eager" in r else ""))
    ev = result["eval"]
    memory = (f"; peak memory {ev['peak_mib']} MiB (growth K x10: {ev['memory_growth']:+.1%})"
              if "peak_mib" in ev else "")
    lines.append(f"IS eval K={ev['k']}: {ev['samples_per_s']:.3g} point-samples/s, "
                 f"{ev['gflops']:.1f} decoder GFLOP/s = {ev['fraction_of_peak']:.1%} of "
                 f"{ev.get('peak', 'matmul')} peak{memory}")
    return "\n".join(lines)

