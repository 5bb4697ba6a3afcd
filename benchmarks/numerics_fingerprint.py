"""Which kernel decides that two CPUs give other bits: a fingerprint of the operations a run uses.

Portable numerics (bench/machine/numerics.py) gives the same bits on one CPU vendor but, measured,
not across an AMD EPYC and an Intel Xeon (docs/numerics.md). This script runs each operation the
suite's models use on fixed inputs, in portable mode, and records a sha256 of every output's
bytes with the CPU that made it; on another machine, ``--against`` names the operations whose
bits differ. Nothing here is timed.

    .venv/bin/python benchmarks/numerics_fingerprint.py            # writes results/numerics/
    .venv/bin/python benchmarks/numerics_fingerprint.py --against results/numerics/fingerprint-amd-epyc.json

Writes results/numerics/fingerprint-<cpu>.json (one per CPU model seen).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402,F401,I001  (sets the numerics mode before torch loads)
import torch  # noqa: E402

from bench.machine import numerics  # noqa: E402
from bench.results import environment, write_json  # noqa: E402


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def operations() -> dict[str, str]:
    """Every operation on inputs drawn from one seeded generator: name -> digest of its output."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    out = {}
    for dtype in (torch.float32, torch.float64):
        tag = str(dtype).split(".")[-1]
        a, b, bias = r(100, 784, dtype=dtype), r(784, 200, dtype=dtype), r(200, dtype=dtype)
        out[f"mm 100x784x200 {tag}"] = digest(a @ b)
        out[f"addmm (linear) {tag}"] = digest(torch.nn.functional.linear(a, b.T, bias))
        out[f"mm transposed (grad of weight) {tag}"] = digest(a.T @ r(100, 200, dtype=dtype))
        out[f"bmm 3x16x50x200 {tag}"] = digest(torch.bmm(r(3, 16, 50, dtype=dtype),
                                                           r(3, 50, 200, dtype=dtype)))
        v = r(100_003, dtype=dtype)
        for name, fn in (("exp", torch.exp), ("log", lambda t: torch.log(t.abs() + 1e-3)),
                         ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
                         ("softplus", torch.nn.functional.softplus),
                         ("log_softmax", lambda t: torch.log_softmax(t[:100_000].view(-1, 1000), -1)),
                         ("logsumexp", lambda t: torch.logsumexp(t[:100_000].view(-1, 1000), -1)),
                         ("sum", lambda t: t.sum()), ("norm", lambda t: t.norm()),
                         ("bce with logits", lambda t: torch.nn.functional.
                          binary_cross_entropy_with_logits(t, (t > 0.3).to(t.dtype)))):
            out[f"{name} {tag}"] = digest(fn(v))
    lstm = torch.nn.LSTM(50, 50, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.copy_(r(*p.shape) * 0.1)
    x = r(16, 10, 50, dtype=torch.float32).requires_grad_()
    y, _ = lstm(x)
    y.square().sum().backward()
    out["lstm forward float32"] = digest(y)
    out["lstm backward float32"] = digest(x.grad, *[p.grad for p in lstm.parameters()])
    emb = torch.nn.functional.embedding(torch.randint(1000, (16, 10), generator=g), r(1000, 50))
    out["embedding float32"] = digest(emb)
    w = r(200, 784).requires_grad_()
    opt = torch.optim.Adam([w], lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (w.tanh() ** 2).sum().backward()
        opt.step()
    out["adam 3 steps float32"] = digest(w)
    out["conv2d float32"] = digest(torch.nn.functional.conv2d(r(4, 8, 28, 28), r(16, 8, 3, 3)))
    out["randn / bernoulli / randperm"] = digest(r(1000), torch.bernoulli(
        torch.full((1000,), 0.3), generator=g), torch.randperm(1000, generator=g).double())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, help="another CPU's fingerprint: list what differs")
    args = ap.parse_args()
    other = json.loads(args.against.read_text()) if args.against else None  # before it is rewritten
    numerics.apply(numerics.active())
    env = environment("cpu", False, {})
    ops = operations()
    record = {"cpu_model": env.get("cpu_model"), "cpu_flags": env.get("cpu_flags"),
              "numerics": numerics.record(numerics.active()), "torch": torch.__version__,
              "operations": ops}
    slug = re.sub(r"[^a-z0-9]+", "-", str(env.get("cpu_model")).lower()).strip("-")
    path = ROOT / "results" / "numerics" / f"fingerprint-{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    print(f"{len(ops)} operations on {env.get('cpu_model')}: {path}")
    if other is not None:
        differ = [k for k, v in ops.items() if other["operations"].get(k) != v]
        print(f"against {other['cpu_model']}: {len(differ)} of {len(ops)} differ"
              + "".join(f"\n  {k}" for k in differ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
