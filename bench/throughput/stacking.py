"""Stacked seeds' throughput: per-run training steps/s of R runs trained as one stack
(``bench.training.stacked``) against the same R runs stepped one after the other, interleaved
in one process (``measure.interleaved``), and against the minimal hand-written loop
(``baselines``) for the same model. The model is the default profile's (784-200-200-32 tanh,
batch 100, Bernoulli decoder); MADE with its throughput setup (``DECODER_SETUPS``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import torch

from variants import create as create_variant
from variants.factory import build_vae

from ..training.stacked import Shared, _noise, _stacked_step
from ..training.trainer import Trainer, make_optimizer, train_step
from .baselines import DECODER_SETUPS, hand_written_model
from .measure import interleaved, median_ratio


def stack_throughput(decoder: str = "mlp", runs: int = 3, batch: int = 100,
                     hidden: tuple[int, ...] = (200, 200), latent: int = 32, d_in: int = 784,
                     calls: int = 5, rounds: int = 11) -> dict:
    """Per-run train-step seconds of ``runs`` runs stacked, of the same runs stepped
    separately (one ``train_step`` each, as the suite trains them alone) and of the minimal
    hand-written loop; medians of interleaved rounds."""
    variant = create_variant("vae")
    gen = torch.Generator().manual_seed(0)
    models, opts, loops = [], [], []
    for r in range(runs):
        torch.manual_seed(r)
        models.append(build_vae(variant, d_in, latent, hidden=hidden, **DECODER_SETUPS[decoder]))
    xs = [(torch.rand(batch, d_in, generator=gen) < 0.3).float() for _ in range(runs)]
    noises = [torch.Generator().manual_seed(10 + r) for r in range(runs)]
    for m, x, noise in zip(models, xs, noises, strict=True):
        opt = make_optimizer(m.parameters(), lr=1e-4)
        opts.append(opt)
        loops.append(SimpleNamespace(model=m, variant=variant, step=0, total=1,
                                     trainer=Trainer.for_step(m, opt, noise, 0, 1, x)))
    base = hand_written_model(decoder, d_in, hidden, latent, 1, None)
    base_opt = torch.optim.Adam(base.parameters(), lr=1e-4)
    shared = Shared(models) if runs > 1 else None

    def separate() -> None:
        for m, opt, x, noise in zip(models, opts, xs, noises, strict=True):
            train_step(m, variant, opt, x, 0, 1, noise)

    def stacked() -> None:
        _stacked_step(loops, xs, [_noise(loop, x) for loop, x in zip(loops, xs, strict=True)],
                      shared)

    def minimal() -> None:
        loss = base.loss(xs[0])
        base_opt.zero_grad(set_to_none=True)
        loss.backward()
        base_opt.step()

    fns = {"separate": separate, "minimal": minimal}
    if shared is not None:
        fns["stacked"] = stacked
    t = interleaved(fns, calls, rounds, torch.device("cpu"))
    per_run = {k: [s / runs for s in v] for k, v in t.items() if k != "minimal"}
    row = {"decoder": decoder, "runs": runs, "batch": batch,
           "separate_steps_per_s": 1 / statistics.median(per_run["separate"]),
           "minimal_steps_per_s": 1 / statistics.median(t["minimal"]),
           "separate_over_minimal": median_ratio(t["minimal"], per_run["separate"]),
           "rounds": rounds}
    if shared is not None:
        row["stacked_steps_per_s"] = 1 / statistics.median(per_run["stacked"])
        row["gain"] = median_ratio(per_run["separate"], per_run["stacked"])
        row["stacked_over_minimal"] = median_ratio(t["minimal"], per_run["stacked"])
        shared.release()
    return row


def run_stacks(sizes: tuple[int, ...] = (1, 3, 5), decoders: tuple[str, ...] = ("mlp", "made"),
               batch: int = 100) -> dict:
    """Every (decoder, R) of ``stack_throughput`` in the process's numerics mode with the
    threads a run of that mode computes with (portable: ``numerics.PORTABLE_THREADS``), as the
    suite trains them."""
    from ..machine import numerics
    from ..results import cpu_model, environment

    numerics.apply(numerics.active())
    env = {**environment("cpu", {}, {}), **numerics.record(numerics.active()),
           "cpu": cpu_model()}
    rows = [stack_throughput(d, r, batch, calls=10 if d == "mlp" else 3,
                             rounds=21 if d == "mlp" else 11)
            for d in decoders for r in sizes]
    return {"device": "cpu", "numerics": numerics.active(), "rows": rows,
            "env": {k: env[k] for k in ("torch", "cpu", "cpu_capability", "threads",
                                        "git_commit", "git_dirty") if k in env}}


def format_stacks(result: dict) -> str:
    env = result["env"]
    lines = [f"stacked seeds on {env['cpu']} ({env['threads']} threads, "
             f"{result.get('numerics', '?')} numerics, torch {env['torch']}): per-run train "
             "steps/s, medians of interleaved rounds",
             f"{'decoder':8} {'R':>2} {'separate':>9} {'stacked':>9} {'gain':>6} "
             f"{'minimal':>8} {'stacked/minimal':>16}"]
    for r in result["rows"]:
        stacked = f"{r['stacked_steps_per_s']:9.1f} {r['gain']:6.2f}" if "gain" in r \
            else f"{'-':>9} {'-':>6}"
        vs = f"{r['stacked_over_minimal']:16.2f}" if "gain" in r \
            else f"{r['separate_over_minimal']:16.2f}"
        lines.append(f"{r['decoder']:8} {r['runs']:2d} {r['separate_steps_per_s']:9.1f} "
                     f"{stacked} {r['minimal_steps_per_s']:8.1f} {vs}")
    return "\n".join(lines)


def measure_and_save(device: str, decoder: str, sizes: tuple[int, ...], batch: int,
                     results: Path) -> Path:
    """``run_stacks`` (``decoder`` mlp: the MLP and MADE; sizes default 1, 3, 5), printed and
    written to RESULTS/throughput/stack-cpu.json (whole)."""
    if device != "cpu" or decoder == "pixelcnn":
        from variants.errors import ConfigError

        raise ConfigError("throughput --stack measures what stacks, on the CPU (checked bit for "
                          "bit there only); allowed: --device cpu, --decoder mlp or made")
    decoders = ("mlp", "made") if decoder == "mlp" else (decoder,)
    result = run_stacks(sizes or (1, 3, 5), decoders, batch)
    out = Path(results) / "throughput" / "stack-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(format_stacks(result))
    return out
