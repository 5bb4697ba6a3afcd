"""What AIS costs (bench/evaluation/ais.py), on the default profile's two model architectures.

Seconds per test point of AIS with 16 chains and 10 leapfrog steps, at T = 100 and T = 1000
intermediate distributions (the tuning pilot included), for the default profile's `vae` with
each decoder setting's architecture: the MLP decoder (784-200-200-32 tanh encoder, 32-200-200-784
decoder) and lagging MADE (one hidden layer of 500, direct connections, z into the hidden layer
only), on one block of 100 MNIST-shaped binary points, in portable numerics, with IS with
K = 500 (the suite's importance sampler) beside it for scale. Each figure is the median of
``--rounds`` rounds (a shared machine drifts).
The cost is the same for trained and untrained weights (a fixed number of decoder passes per
step), so the models are freshly initialized.

    .venv/bin/python benchmarks/ais_cost.py [--points 100] [--steps 100 1000] [--rounds 1]

Writes results/throughput/ais-cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402,F401  (sets the numerics mode before torch loads)
from bench.evaluation import ais  # noqa: E402
from bench.evaluation.metrics import encode, nll_is_points  # noqa: E402
from bench.machine import numerics  # noqa: E402
from bench.results import cpu_model  # noqa: E402

MODELS = {
    "mlp": {"decoder": "mlp"},
    "made-lagging": {"decoder": "made", "decoder_hidden": (500,), "z_output": False,
                     "window": -1, "direct": True},
}


def build(kind: str):
    import torch

    from variants import create
    from variants.factory import build_vae

    torch.manual_seed(0)
    opts = dict(MODELS[kind])
    return build_vae(create("vae"), 784, 32, hidden=(200, 200), activation="tanh",
                     likelihood="bernoulli", **opts).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results/throughput/ais-cost.json"))
    args = p.parse_args()
    numerics.apply(numerics.active())
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.points, 784, generator=gen) < 0.15).float()
    out = {"points": args.points, "chains": 16, "leapfrog": 10, "numerics": numerics.active(),
           "threads": torch.get_num_threads(), "cpu_model": cpu_model(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "models": {}}
    for kind in MODELS:
        model = build(kind)
        ais.ais_points(model, x[:10], ais.AISSettings(steps=2, pilot_steps=2), 0)  # warm-up
        rec = {}
        for steps in args.steps:
            s = ais.AISSettings(steps=steps)
            rec[f"T{steps}_seconds_per_point"] = statistics.median(
                timed(lambda s=s, m=model: ais.ais_points(m, x, s, 0)) / args.points
                for _ in range(args.rounds))
        with torch.no_grad():
            rec["is_k500_seconds_per_point"] = statistics.median(
                timed(lambda m=model: nll_is_points(m, encode(m, x), x, 500, 0)) / args.points
                for _ in range(args.rounds))
        if "T1000_seconds_per_point" in rec:
            rec["T1000_500_points_minutes"] = rec["T1000_seconds_per_point"] * 500 / 60
            rec["T1000_over_is_k500"] = rec["T1000_seconds_per_point"] / rec[
                "is_k500_seconds_per_point"]
        out["models"][kind] = rec
        print(kind, json.dumps(rec, indent=1))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
