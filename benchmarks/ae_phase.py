"""Why the MLP pretrained encoder's autoencoder phase does not learn in the screening profile.

Li et al.'s autoencoder phase is the model trained with KL weight 0 (z still sampled). This
reruns it as `beta` with ``beta = 0`` on the default profile's MLP configuration of
`pretrained-encoder` (same data, seed, architecture, optimizer; the first epochs equal the
phase's until the phase halves its learning rate) and prints, per epoch, the validation
reconstruction, KL and MI, then at the end where the posterior means sit and how many of the
tanh decoder's units are saturated (|tanh| > 0.99) at z = mean:

    .venv/bin/python benchmarks/ae_phase.py --epochs 2   # after 200 steps: the stuck state
    .venv/bin/python benchmarks/ae_phase.py --epochs 8   # it escapes after about 450 steps

The README's pretrained-encoder paragraph quotes these figures. Runs go to a temporary
directory; nothing under results/ is written.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.config import apply_overrides, resolve  # noqa: E402
from bench.grid.profile import grid, load_profile  # noqa: E402
from bench.grid.runner import execute, load_run  # noqa: E402


def the_config(seed: int):
    """The default profile's MLP `pretrained-encoder` config of ``seed`` (the MLP decoder is a
    plain stack of layers, which the saturation count walks)."""
    for label, run in grid(load_profile("default")):
        if label == "mlp / pretrained-encoder" and run.config.seed == seed:
            return run.config
    raise SystemExit(f"no mlp / pretrained-encoder seed {seed} in the default profile")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = the_config(args.seed)
    cfg = replace(cfg, variant="beta", hparams={})  # the phase's objective: the -ELBO at KL weight 0
    cfg = resolve(apply_overrides(cfg, {"beta": 0.0, "train.epochs": args.epochs}))
    with tempfile.TemporaryDirectory() as tmp:
        run = execute(cfg, Path(tmp))
        for row in csv.DictReader((run / "history.csv").read_text().splitlines()):
            print(f"epoch {row['epoch']} (step {row['step']}): validation recon "
                  f"{float(row['val_recon']):.2f}, KL {float(row['val_kl']):.1f}, "
                  f"MI {float(row['val_mutual_info']):.3f}")
        _, model, dataset = load_run(run)
    x = dataset.valid if dataset.valid is not None else dataset.test[:2000]
    with torch.no_grad():
        mu, logvar = model.posterior_params(x.float().flatten(1)).chunk(2, -1)
        sigma = logvar.mul(0.5).exp()
        print(f"posterior means: mean |mu| {mu.abs().mean():.2f}, spread across inputs "
              f"(sd over inputs, mean over units) {mu.std(0).mean():.3f}; sigma median "
              f"{sigma.median():.3f}")
        h, layer = mu, 0
        for module in model.decoder:
            h = module(h)
            if isinstance(module, torch.nn.Tanh):
                layer += 1
                print(f"decoder tanh layer {layer}: "
                      f"{(h.abs() > 0.99).float().mean():.1%} of units saturated at z = mean")


if __name__ == "__main__":
    main()
