"""A profile's run records read into one tidy table (one row per grid point), and the
regression frame of its deterministic part. Nothing here trains, evaluates or reads the clock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import SUITE_VERSION
from ..grid.attached import profile_record, summary_scalars
from ..grid.suite import Profile, grid, group_of, runs_dir
from ..results import damage, read_json
from ..schema import KINDS

PRINTED = "%.10g"  # the float format of summary.csv

TIMING = ["train_samples_per_s", "train_seconds", "eval_seconds", "wall_seconds"]

REGRESSION_COLUMNS = ["neg_elbo", "neg_elbo_se", "recon", "kl", "nll_is", "nll_is_se", "ess",
                      "active_units", "active_units_strict", "mutual_info", "mutual_info_se"]


def load_run(path: Path) -> tuple[dict, dict, pd.DataFrame | None, dict]:
    metrics = read_json(path / "metrics.json")
    config = read_json(path / "config.json")
    hist = path / "history.csv"
    history = pd.read_csv(hist) if hist.exists() and hist.stat().st_size else None
    env = read_json(path / "env.json") if (path / "env.json").exists() else {}
    return metrics, config, history, env


def summarize(profile: Profile, results: Path) -> pd.DataFrame:
    """One row per grid point: identity, status, every scalar metric and its SE, timings."""
    rows = []
    for label, run in grid(profile):
        cfg = run.config
        path = runs_dir(results, profile) / run.name
        row = {"label": label, "group": group_of(label), "variant": cfg.variant,
               "hparams": json.dumps(cfg.hparams, sort_keys=True), "dataset": cfg.dataset,
               "seed": cfg.seed, "run": path.name}
        if not path.exists():
            rows.append({**row, "status": "missing"})
            continue
        why = damage(path)
        if why:  # named and skipped: `suite` sets it aside and trains it again
            rows.append({**row, "status": "damaged", "error": why})
            continue
        metrics = read_json(path / "metrics.json")
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        if "active_units_by_layer" in metrics:  # stochastic layers: "layer1+layer2"
            scalars["active_units_by_layer"] = "+".join(map(str, metrics["active_units_by_layer"]))
        scalars.pop("traceback", None)
        scalars["wall_seconds"] = scalars.get("train_seconds", 0) + scalars.get("eval_seconds", 0)
        record = profile_record(path, cfg)  # AIS, where the profile asks for it (bench.grid.attached)
        if record is not None:
            scalars.update(summary_scalars(record, scalars.get("nll_is")))
        rows.append({**row, **scalars})
    frame = pd.DataFrame(rows)
    if (frame["status"] == "ok").any():
        return frame
    # no finished record (all damaged, failed or missing): the numbers the schema knows are
    # columns of NaN, so the tables and figures are made, empty, instead of failing on a column
    missing = [k for k, kind in KINDS.items() if kind in ("number", "count") and k not in frame]
    return pd.concat([frame, pd.DataFrame(np.nan, index=frame.index, columns=missing)], axis=1)


def regression_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The deterministic part of a summary: identity, status and every metric (no timings)."""
    cols = ["label", "seed", "status", *REGRESSION_COLUMNS]
    frame = summary.reindex(columns=cols).copy()
    frame.insert(0, "suite_version", int(SUITE_VERSION))
    return frame.reset_index(drop=True)


def largest_differences(fresh: pd.DataFrame, committed: pd.DataFrame, top: int = 10) -> str:
    """The largest absolute differences between two summaries, matched on (label, seed)."""
    keys = ["label", "seed"]
    merged = fresh.merge(committed, on=keys, suffixes=("_fresh", "_committed"), how="outer")
    rows = []
    for col in REGRESSION_COLUMNS:
        a, b = merged.get(f"{col}_fresh"), merged.get(f"{col}_committed")
        if a is None or b is None:
            continue
        diff = (a.astype(float) - b.astype(float)).abs()
        for i in diff.index:
            rows.append((diff[i], col, merged.loc[i, "label"], merged.loc[i, "seed"], a[i], b[i]))
    rows.sort(key=lambda r: -np.nan_to_num(r[0], nan=np.inf))
    lines = [f"{'|diff|':>12} {'metric':14} {'configuration':18} seed {'fresh':>14} "
             f"{'committed':>14}"]
    lines += [f"{d:12.3g} {c:14} {lab:18} {s:4} {x:14.8g} {y:14.8g}" for d, c, lab, s, x, y
              in rows[:top]]
    return "\n".join(lines)
