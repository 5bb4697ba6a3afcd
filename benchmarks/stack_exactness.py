# ruff: noqa: I001  (the import order matters: bench before torch)
"""Which operations give the same bits stacked as alone: the measurement behind stacked seeds.

Stacking R runs of one configuration into one model with a leading run axis (``torch.func.vmap``
over the model's functional call, or batched matmuls) is only worth having here if each run's
numbers stay bit-identical to the same run trained alone (issue: stacked seeds). This probe
checks, in the process's numerics mode (portable by default), every kind of operation the
default MLP VAE's training step uses, on the default model's shapes and on misaligned ones:

- a linear layer (forward, and the input, weight and bias gradients) through ``vmap`` as torch
  batches it, and through ``StackedLinear`` (a batching rule that keeps the bias inside the GEMM
  with ``baddbmm``, as the alone ``addmm`` does);
- the elementwise functions of the model and its loss on a stacked (R, n) tensor against each
  run's (n,) slice alone;
- the reductions the objective uses (a batch mean per unit, a mean over everything, a sum over
  the last axis) and the fused binary cross-entropy under ``vmap``.

    .venv/bin/python benchmarks/stack_exactness.py [--runs 3]

Prints one line per case (``same`` or ``DIFFERS``) and writes
results/throughput/stack-exactness.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402,F401  (first: it sets the numerics mode before torch loads)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import vmap  # noqa: E402

from bench.machine import numerics  # noqa: E402
from bench.results import cpu_model  # noqa: E402

#: the default MLP VAE's linear layers (784-200-200-2x32 encoder, 32-200-200-784 decoder)
SHAPES = [(784, 200), (200, 200), (200, 64), (32, 200), (200, 784)]


class StackedLinear(torch.autograd.Function):
    """``F.linear`` alone; under ``vmap`` one ``baddbmm`` whose bias enters the GEMM as the
    alone ``addmm``'s does (torch's own batching rule adds it after a plain matmul, which
    rounds differently)."""

    @staticmethod
    def forward(x, w, b):
        return F.linear(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        g2 = gy.reshape(-1, gy.shape[-1])
        return gy @ w, g2.t() @ x.reshape(-1, x.shape[-1]), g2.sum(0)

    @staticmethod
    def vmap(info, in_dims, x, w, b):
        x, w, b = (t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape)
                   for t, d in zip((x, w, b), in_dims, strict=True))
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        out = torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))
        return out.reshape(*x.shape[:-1], w.shape[1]), 0


def linear_cases(runs: int, gen: torch.Generator) -> list[dict]:
    out = []
    for lead in [(100,), (1, 100)]:
        for i, o in SHAPES:
            x = torch.randn(runs, *lead, i, generator=gen)
            w = torch.randn(runs, o, i, generator=gen) / i ** 0.5
            b = torch.randn(runs, o, generator=gen)
            gy = torch.randn(runs, *lead, o, generator=gen)
            alone = []
            for r in range(runs):
                xr, wr, br = (t[r].clone().requires_grad_() for t in (x, w, b))
                y = F.linear(torch.tanh(xr), wr, br)
                y.backward(gy[r])
                alone.append((y.detach(), xr.grad, wr.grad, br.grad))
            for how, fn in (("vmap(F.linear)", F.linear), ("StackedLinear", StackedLinear.apply)):
                xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
                y = vmap(fn)(torch.tanh(xs), ws, bs)
                y.backward(gy)
                got = (y.detach(), xs.grad, ws.grad, bs.grad)
                for part, k in (("forward", 0), ("d input", 1), ("d weight", 2), ("d bias", 3)):
                    out.append({"case": f"{how} {part}", "shape": f"{lead}x{i}->{o}",
                                "same": all(torch.equal(got[k][r], alone[r][k])
                                            for r in range(runs))})
    return out


def elementwise_cases(runs: int, gen: torch.Generator) -> list[dict]:
    fns = {"tanh": torch.tanh, "exp": torch.exp, "softplus": F.softplus, "log1p": torch.log1p,
           "sigmoid": torch.sigmoid,
           "bce_with_logits": lambda t: F.binary_cross_entropy_with_logits(
               t, (t > 0).to(t.dtype), reduction="none")}
    out = []
    for n in (100 * 32, 100 * 200, 100 * 784, 5000, 5003):
        x = torch.randn(runs, n, generator=gen) * 3
        for name, f in fns.items():
            stacked = f(x)
            out.append({"case": f"elementwise {name}", "shape": str(n),
                        "same": all(torch.equal(stacked[r], f(x[r].clone()))
                                    for r in range(runs))})
    return out


def reduction_cases(runs: int, gen: torch.Generator) -> list[dict]:
    kl = torch.randn(runs, 100, 32, generator=gen)
    lp = torch.randn(runs, 1, 100, 784, generator=gen)
    x = torch.bernoulli(torch.rand(runs, 1, 100, 784, generator=gen))
    bce = lambda lg, t: F.binary_cross_entropy_with_logits(lg, t, reduction="none")  # noqa: E731
    cases = {"mean over the batch (B, U)": (lambda t: t.mean(0), (kl,)),
             "mean of everything": (lambda t: t.mean(), (lp,)),
             "sum over the last axis": (lambda t: t.sum(-1), (lp,)),
             "fused BCE under vmap": (bce, (lp, x))}
    out = []
    for name, (f, args) in cases.items():
        stacked = vmap(f)(*args)
        out.append({"case": name, "shape": "x".join(map(str, args[0].shape[1:])),
                    "same": all(torch.equal(stacked[r], f(*(a[r] for a in args)))
                                for r in range(runs))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results/throughput/stack-exactness.json"))
    args = ap.parse_args()
    numerics.apply(numerics.active() or "native")  # a run's settings: portable pins 2 threads
    gen = torch.Generator().manual_seed(0)
    rows = linear_cases(args.runs, gen) + elementwise_cases(args.runs, gen) \
        + reduction_cases(args.runs, gen)
    for row in rows:
        print(f"{'same   ' if row['same'] else 'DIFFERS'}  {row['case']:<34} {row['shape']}")
    record = {"runs": args.runs, "numerics": numerics.active(), "threads": torch.get_num_threads(),
              "cpu": cpu_model(), "torch": torch.__version__, "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{sum(r['same'] for r in rows)} of {len(rows)} cases bit-identical; wrote {args.out}")


if __name__ == "__main__":
    main()
