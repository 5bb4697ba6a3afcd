"""Throughput: training steps and importance-sampled evaluation against the hardware limit.

Every figure is a ratio measured in one process, interleaved with its baseline so that machine
noise cancels: ours against a minimal hand-written PyTorch training loop for the same model and
batch (``bench.throughput.baselines``, deliberately independent of ``variants.core``), and
achieved GFLOP/s against the device's fp32 matmul peak measured in the same process (``measure``:
timers, peaks, FLOP counts). Medians of repeats. Peak tensor memory: ``memory``.

FLOP model: a Linear layer costs 2 * in * out per row forward and twice that backward; only the
MLP layers are counted (activations, likelihood and optimizer are not), so the fraction of peak
is a lower bound on how well the matmuls run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from variants import create as create_variant
from variants.core import VAE
from variants.factory import build_vae
from variants.latents import GaussianLatent

from ..evaluation.metrics import IS_BLOCK, encode, nll_is_points
from ..training.trainer import DEFAULT_CLIP, compile_model, make_optimizer, train_step
from .baselines import (
    DECODER_SETUPS,
    HandWrittenMADEVAE,
    HandWrittenPixelCNNVAE,
    HandWrittenVAE,
    hand_written_model,
    tanh_encoder,
)
from .measure import (
    conv_flops,
    conv_peak,
    decoder_flops,
    eval_flops,
    interleaved,
    linear_flops,
    matmul_peak,
    median_ratio,
    step_flops,
    sync,
    timed,
)
from .memory import PeakTensorMemory, eval_peak_memory


def train_throughput(variant_name: str, device: torch.device, batch: int = 100,
                     hidden: tuple[int, ...] = (200, 200), latent: int = 50, d_in: int = 784,
                     calls: int = 10, rounds: int = 15, compile: bool = False,
                     decoder: str = "mlp") -> dict:
    """Train-step samples/s of ours and of two hand-written loops, interleaved; medians.

    Baselines: ``minimal`` is the loop most people write (``torch.optim.Adam`` with its default
    implementation, no clip); ``same_optimizer`` is the same loop with the fused Adam and the
    gradient-norm clip (``train.clip``'s default) that ``fit`` uses, so ``ratio_same_optimizer``
    isolates what the harness itself costs or saves. With
    ``compile``, the fast mode (``bench.training.trainer.compile_model``) is timed in the same rounds.
    ``decoder`` picks the decoder family (``DECODER_SETUPS``) and its hand-written counterpart.
    """
    variant = create_variant(variant_name)
    lat = variant.latent(latent)
    model = build_vae(variant, d_in, latent, hidden=hidden,
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


def run_all(device_name: str = "cpu", variants: list[str] | None = None, batch: int = 100,
            k: int = 1000, compile: bool = False, decoder: str = "mlp") -> dict:
    """Every variant's train step (for a decoder other than the MLP: the plain VAE unless
    variants are named) and IS evaluation, with peak memory for the MLP decoder."""
    from variants import REGISTRY

    from ..results import environment

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


__all__ = ["DECODER_SETUPS", "HandWrittenMADEVAE", "HandWrittenPixelCNNVAE", "HandWrittenVAE",
           "PeakTensorMemory", "conv_flops", "conv_peak", "decoder_flops", "eval_flops",
           "eval_peak_memory", "eval_throughput", "format_table", "hand_written_model",
           "interleaved", "linear_flops", "matmul_peak", "median_ratio", "run_all", "step_flops",
           "sync", "tanh_encoder", "timed", "train_throughput"]
