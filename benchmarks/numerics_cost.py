"""What portable numerics cost against native (bench/machine/numerics.py), on the default profile's models.

The mode of a process is fixed when torch loads, so one driver process alternates fresh child
processes, portable and native in turn, ``--rounds`` times; each child times the same work: 200
training steps (batch 100, fused Adam, clip 5) and an IS evaluation (100 points, K = 500) of the
default profile's `vae` with each decoder setting's architecture (MLP 200-200; MADE 500 with
direct connections), on MNIST-shaped random binary data, after a warm-up. The figure is the
median over rounds of the per-round ratio portable / native (above 1: portable is slower), so
the drift of a shared machine between rounds cancels.

    .venv/bin/python benchmarks/numerics_cost.py [--rounds 5]

Writes results/throughput/numerics-cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, time
import bench
from bench.machine import numerics
import torch
from bench.evaluation.metrics import evaluate
from bench.training.trainer import make_optimizer, train_step
from variants import create
from variants.factory import build_vae

numerics.apply(numerics.active())
gen = torch.Generator().manual_seed(0)
x = (torch.rand(100, 784, generator=gen) < 0.3).float()
out = {"mode": numerics.active(), "threads": torch.get_num_threads()}
for name, opts in (("mlp", {}), ("made", {"decoder": "made", "decoder_hidden": (500,),
                                          "z_output": False})):
    torch.manual_seed(0)
    v = create("vae")
    model = build_vae(v, 784, 32, hidden=(200, 200), activation="tanh", **opts)
    opt = make_optimizer(model.parameters(), 1e-3)
    noise = torch.Generator().manual_seed(1)
    for step in range(20):
        train_step(model, v, opt, x, step, 220, noise)
    tic = time.perf_counter()
    for step in range(200):
        train_step(model, v, opt, x, step, 220, noise)
    out[f"{name}_train_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    evaluate(model, x, 500, 1, 0)
    out[f"{name}_eval_s"] = time.perf_counter() - tic
print(json.dumps(out))
"""


def child(mode: str) -> dict:
    from bench.machine import numerics

    env = numerics.environment_for(mode)
    res = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "results" / "throughput" / "numerics-cost.json"))
    args = p.parse_args()
    rounds = []
    for i in range(args.rounds):
        pair = {m: child(m) for m in (("portable", "native") if i % 2 else ("native", "portable"))}
        rounds.append(pair)
        print(f"round {i + 1}: " + ", ".join(
            f"{k} {pair['portable'][k] / pair['native'][k]:.3f}" for k in pair["native"]
            if k.endswith("_s")), flush=True)
    keys = [k for k in rounds[0]["native"] if k.endswith("_s")]
    ratios = {k: statistics.median(r["portable"][k] / r["native"][k] for r in rounds)
              for k in keys}
    from bench.results import cpu_model

    result = {"what": "median over rounds of portable / native seconds for the same work "
                      "(above 1: portable slower)", "rounds": args.rounds, "cpu": cpu_model(),
              "ratios": ratios, "raw": rounds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    os.environ.pop("VAE_BENCH_NUMERICS", None)
    main()
