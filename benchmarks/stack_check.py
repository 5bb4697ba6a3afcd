# ruff: noqa: I001  (the import order matters: bench before torch)
"""Stacked seeds at full size: train some configurations of a committed profile from nothing,
stacked (the suite's default), and compare every record with the committed one, field by field
(metrics.json but the timings, history.csv but its seconds columns).

    .venv/bin/python benchmarks/stack_check.py --profile default --label "mlp / vae" ...

Prints one line per run (``identical`` or the first field that differs) and a verdict; exit 1
if any differs. The committed records were trained alone, so this is the stacked-equals-alone
contract on the profile's own model sizes and data (the tests check it on tiny ones).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402,F401  (first: it sets the numerics mode before torch loads)
from bench.grid.runner import TIMINGS  # noqa: E402
from bench.grid.suite import grid, load_profile, run_suite, runs_dir  # noqa: E402


def fields(path: Path) -> tuple[dict, list[dict]]:
    metrics = {k: v for k, v in json.loads((path / "metrics.json").read_text()).items()
               if k not in TIMINGS}
    with open(path / "history.csv", newline="") as f:
        history = [{k: v for k, v in row.items() if "seconds" not in k}
                   for row in csv.DictReader(f)]
    return metrics, history


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--label", action="append", required=True, help="repeatable: a grid label")
    ap.add_argument("--results", default="build/stack-check")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    runs = [(label, run) for label, run in grid(profile) if label in args.label]
    if not runs:
        print(f"no grid label among {args.label}", file=sys.stderr)
        return 2
    run_suite(profile, Path(args.results), runs=runs)
    committed, fresh = runs_dir(ROOT / "results", profile), runs_dir(Path(args.results), profile)
    bad = 0
    for label, run in runs:
        env = json.loads((fresh / run.name / "env.json").read_text())
        (ma, ha), (mb, hb) = fields(committed / run.name), fields(fresh / run.name)
        moved = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
        rows = [i for i, (a, b) in enumerate(zip(ha, hb, strict=False)) if a != b]
        same = not moved and not rows and len(ha) == len(hb)
        bad += not same
        how = f"stacked x{env['stacked']['size']}" if "stacked" in env else "alone"
        print(f"{label:28} s{run.config.seed} {run.name}  {how:10} "
              + ("identical" if same else f"DIFFERS: {moved[:1] or f'history row {rows[:1]}'}"))
    print(f"{len(runs) - bad} of {len(runs)} records identical to the committed ones")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
