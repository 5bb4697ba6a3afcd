"""The contract every variant is held to, as a helper a user calls in their own tests:

    from bench.contract import check_variant
    def test_my_method(tmp_path):
        check_variant("mymethod:MyVariant", tmp_path)

It checks, on tiny digits runs in float64 (seconds per decoder): the hyperparameters are declared
``Param``s and the defaults validate; a training loss is finite and reaches every trainable
parameter; the variant's state survives a checkpoint (``state`` / ``load_state``); the same seed
twice gives identical metrics, all finite; where it stacks (``Variant.stacking``), two seeds
trained together give each seed's numbers alone, bit for bit; and, where the class declares
``neutral`` hyperparameters, that setting reproduces the plain ``vae`` exactly. The first
failure raises a ``ContractError`` in one line naming the variant, its file and the check.
``tests/test_variants.py`` holds the built-in variants to the same checks, and more.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch

from variants import Variant, create, resolve
from variants.errors import ConfigError
from variants.factory import build_vae, stacking

from .config import RunConfig, apply_overrides
from .grid.runner import TIMINGS, execute
from .grid.stack import execute_stack
from .identity import resolve_run

#: the tiny run of the checks: digits, float64, 2 epochs of a 32-unit model
TINY = {"dataset": "digits", "dtype": "float64", "train.epochs": 2, "model.hidden": "32",
        "model.latent_dim": 8, "eval.is_samples": 20}
#: every decoder family at a test size: (config overrides, model keyword arguments)
DECODERS = {
    "mlp": ({"model.decoder_hidden": "32,32"}, {"decoder_hidden": (32, 32)}),
    "made": ({"model.decoder": "made", "model.decoder_hidden": "32", "model.window": 20},
             {"decoder": "made", "decoder_hidden": (32,), "window": 20}),
    "pixelcnn": ({"model.decoder": "pixelcnn", "model.pixelcnn_layers": 2,
                  "model.pixelcnn_channels": 8},
                 {"decoder": "pixelcnn", "image_shape": (8, 8), "layers": 2, "channels": 8}),
}
VOLATILE = {*TIMINGS, "run_id"}


class ContractError(ConfigError):
    """A variant that breaks the contract; the message names the check."""


def _declares_neutral(cls: type[Variant]) -> bool:
    """Whether ``neutral`` is the class's own claim (not the plain VAE's inherited ``{}``)."""
    return any("neutral" in vars(k) for k in cls.__mro__ if k is not Variant)


def tiny_run(out: Path, variant: str, decoder: str = "mlp", **hparams) -> tuple[dict, Path]:
    """(metrics, run directory) of the contract's tiny run of ``variant``."""
    cfg = apply_overrides(RunConfig(), {**TINY, **DECODERS[decoder][0], "variant": variant,
                                        **hparams})
    path = execute(cfg, Path(out))
    return json.loads((path / "metrics.json").read_text()), path


def stable(metrics: dict) -> dict:
    """The metrics that the same seed must reproduce (timings and the run id aside)."""
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def check_variant(spec: str, workdir: str | Path, decoders: tuple[str, ...] = ("mlp",)) -> None:
    """Run the contract's checks on ``spec`` (a name or module:Class) with each decoder family
    of ``decoders``; raise ``ContractError`` at the first that fails."""
    cls = resolve(spec)
    try:
        where = inspect.getsourcefile(cls) or cls.__module__
    except TypeError:
        where = cls.__module__

    def fail(check: str, what: str) -> None:
        raise ContractError(f"variant {spec!r} ({where}) fails the contract: {check}: {what}")

    unknown = sorted(set(decoders) - set(DECODERS))
    if unknown:
        raise ConfigError(f"decoder {unknown[0]!r} unknown; allowed: {', '.join(DECODERS)}")
    try:
        variant = create(spec)
    except ConfigError as e:
        fail("its defaults validate", str(e))
    for decoder in decoders:
        torch.manual_seed(0)
        model = build_vae(variant, 64, 8, hidden=(32,), **DECODERS[decoder][1]).double()
        x = (torch.rand(16, 64, dtype=torch.float64) < 0.4).double()
        loss, _ = variant.loss(model, x, step=3, total_steps=10,
                               generator=torch.Generator().manual_seed(0))
        if loss.dim() != 0 or not torch.isfinite(loss):
            fail(f"a finite scalar loss ({decoder})", f"got {loss.detach()}")
        loss.backward()
        silent = [n for n, p in model.named_parameters()
                  if p.requires_grad and p.numel() and (p.grad is None or not
                                                        torch.isfinite(p.grad).all())]
        if silent:
            fail(f"a finite gradient for every trainable parameter ({decoder})",
                 f"{silent[0]} has none")
    fresh = create(spec)
    fresh.load_state(variant.state())
    if fresh.state() != variant.state():
        fail("state survives a checkpoint", "load_state(state()) gives another state")
    for decoder in decoders:
        a, _ = tiny_run(Path(workdir) / "contract-a", spec, decoder)
        b, _ = tiny_run(Path(workdir) / "contract-b", spec, decoder)
        if a.get("status") != "ok":
            fail(f"a tiny run finishes ({decoder})", f"status {a.get('status')!r}: "
                 f"{a.get('error', '')}")
        if stable(a) != stable(b):
            moved = sorted(k for k in stable(a) if a.get(k) != b.get(k))
            fail(f"the same seed gives the same numbers ({decoder})",
                 f"{moved[0] if moved else 'the set of metrics'} differs")
        bad = [k for k in ("neg_elbo", "nll_is", "kl", "mutual_info")
               if not math.isfinite(a.get(k, math.nan))]
        if bad:
            fail(f"finite metrics ({decoder})", f"{bad[0]} = {a.get(bad[0])}")
        if stacking(create(spec), decoder) is None:  # it says it stacks: bit for bit as alone
            one, _ = tiny_run(Path(workdir) / "contract-a", spec, decoder, seed=1)
            runs = [resolve_run(apply_overrides(RunConfig(), {
                **TINY, **DECODERS[decoder][0], "variant": spec, "seed": s})) for s in (0, 1)]
            got = [json.loads((p / "metrics.json").read_text())
                   for p in execute_stack(runs, Path(workdir) / "contract-stacked")]
            for alone, stacked in ((a, got[0]), (one, got[1])):
                if stable(alone) != stable(stacked):
                    moved = sorted(k for k in stable(alone) if alone.get(k) != stacked.get(k))
                    fail(f"two seeds stacked give the numbers of each alone ({decoder}; or say "
                         "why it cannot stack: Variant.stacking)",
                         f"{moved[0] if moved else 'the set of metrics'} differs")
        if _declares_neutral(cls) and cls.neutral is not None:
            plain, _ = tiny_run(Path(workdir) / "contract-vae", "vae", decoder)
            same, _ = tiny_run(Path(workdir) / "contract-neutral", spec, decoder, **cls.neutral)
            if stable(same) != stable(plain):
                moved = sorted(k for k in stable(plain) if plain.get(k) != same.get(k))
                fail(f"neutral = {cls.neutral} reproduces vae ({decoder})",
                     f"{moved[0] if moved else 'the set of metrics'} differs")
