"""The measured compute of a profile's runs, from their records: per configuration the epochs
trained and the minutes per run (training, the validation diagnostics of every epoch end, the
test evaluation), the total over seeds, and the pretrained decoders the runs started from (runs
of their own). What a user plans a cluster with: the whole grid's cost, its longest run, and the
wall time the measured runs would take on W workers like the machine that made them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..grid.suite import ESTIMATE_PARTS
from ..results import read_json
from .tables import markdown

PARTS = ("train_seconds", "diagnostics_seconds", "eval_seconds")
WORKERS = (1, 2, 4, 8, 16)


def _seconds(frame: pd.DataFrame, parts: tuple = PARTS) -> pd.Series:
    """Training + validation diagnostics + evaluation of each run, or the sum of ``parts`` (a
    part it lacks counts 0)."""
    return sum(frame.get(p, pd.Series(0.0, index=frame.index)).astype(float).fillna(0.0)
               for p in parts)


def _epochs(frame: pd.DataFrame) -> str:
    if "stopped_epoch" not in frame or frame["stopped_epoch"].isna().all():
        return "n/a"
    lo, hi = int(frame["stopped_epoch"].min()), int(frame["stopped_epoch"].max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def still_falling(runs: Path, name: str, last: int = 3) -> float:
    """How fast a run's watched validation number (``val_loss`` where it has one, else
    ``val_neg_elbo``) still fell at its end: the mean decrease per epoch over its last ``last``
    epochs (positive: still improving), from history.csv; NaN where it cannot be read."""
    try:
        history = pd.read_csv(Path(runs) / name / "history.csv")
    except (OSError, ValueError, pd.errors.ParserError):
        return float("nan")
    col = "val_loss" if "val_loss" in history else "val_neg_elbo"
    if col not in history or len(history) <= last:
        return float("nan")
    values = history[col].astype(float).to_numpy()
    return float((values[-last - 1] - values[-1]) / last)


def _trajectory(frame: pd.DataFrame, runs: Path | None) -> dict:
    """Stopped by the rule, of how many, and the median of ``still_falling`` over the capped."""
    if "stop_reason" not in frame or frame["stop_reason"].isna().all():
        return {}
    capped = frame[frame["stop_reason"] == "cap"]
    out = {"by the rule": f"{len(frame) - len(capped)}/{len(frame)}"}
    if runs is not None and "run" in frame:
        falls = [still_falling(runs, str(n)) for n in capped["run"].dropna()]
        falls = [f for f in falls if f == f]
        out["capped: still falling"] = f"{pd.Series(falls).median():+.2f}" if falls else "-"
    return out


def compute_table(summary: pd.DataFrame, runs: Path | None = None) -> pd.DataFrame:
    """One row per configuration with finished runs: runs, epochs, how many stopped by the
    convergence rule and how fast the capped ones' validation number still fell at the cap
    (nats per epoch over their last 3, median; with ``runs``, where their histories are),
    minutes per run (mean of training, diagnostics, evaluation, and their sum) and the sum over
    its runs."""
    ok = summary[summary["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["_seconds"] = _seconds(ok)
    rows = []
    for label, frame in ok.groupby("label", sort=False):
        mean = {p: frame[p].astype(float).mean() / 60 if p in frame else float("nan")
                for p in PARTS}
        rows.append({"configuration": label, "runs": len(frame), "epochs": _epochs(frame),
                     **_trajectory(frame, runs),
                     "train min/run": f"{mean['train_seconds']:.1f}",
                     "diagnostics min/run": f"{mean['diagnostics_seconds']:.1f}",
                     "eval min/run": f"{mean['eval_seconds']:.1f}",
                     "min/run": f"{frame['_seconds'].mean() / 60:.1f}",
                     "min, all runs": f"{frame['_seconds'].sum() / 60:.1f}"})
    return pd.DataFrame(rows)


def pretrained_seconds(summary: pd.DataFrame, runs: Path) -> dict[str, float]:
    """The compute of each pretrained decoder the finished runs started from, by run name."""
    names = summary.get("pretrained_decoder", pd.Series(dtype=object)).dropna().unique()
    out = {}
    for name in names:
        path = Path(runs) / str(name) / "metrics.json"
        if path.exists():
            m = read_json(path)
            out[str(name)] = sum(float(m.get(p) or 0.0) for p in PARTS)
    return out


def schedule(first: list[float], then: list[float], workers: int) -> float:
    """Wall seconds of the suite's two stages (``bench.grid.suite.stages``) on ``workers`` identical
    workers: the pretrained decoders, then, once all of them are done, the runs; within a stage
    each worker takes the next task in submission order when it frees (Ray's queue, the process
    pool's map). Setup and transfer times are not modelled."""
    clock = 0.0
    for stage in (first, then):
        free = [clock] * workers
        for seconds in stage:
            i = free.index(min(free))
            free[i] += seconds
        clock = max(free)
    return clock


def submission_order(frame: pd.DataFrame) -> list[float]:
    """The measured seconds of ``frame``'s runs in the order the suite submits them
    (``bench.grid.suite.longest_first``): by their configuration's mean training + evaluation time,
    longest first, the summary's (grid) order among equals."""
    key = -_seconds(frame, ESTIMATE_PARTS).groupby(frame["label"]).transform("mean")
    order = key.sort_values(kind="stable").index
    return list(_seconds(frame).loc[order])


def workers_line(first: list[float], then: list[float]) -> str:
    """The grid's wall time on 1, 2, 4, ... workers, from its measured run times (``then`` in
    the suite's submission order)."""
    wall = {w: schedule(first, then, w) for w in WORKERS}
    parts = [f"{w}: {wall[w] / 3600:.2f} h" + (f" ({wall[1] / wall[w]:.1f}×)" if w > 1 else "")
             for w in WORKERS]
    floor = (max(first) if first else 0.0) + max(then)
    return ("Wall time on W workers like this one (the measured times above, scheduled as the "
            "suite submits them: the pretrained decoders, then the runs longest first by "
            "their configuration's mean time, each worker taking the next when it frees): "
            + ", ".join(parts)
            + f"; no number of workers goes below {floor / 3600:.2f} h (the longest run after "
            "the longest decoder).")


def stacked_line(summary: pd.DataFrame, runs: Path) -> str:
    """How many finished runs trained stacked (``bench.training.stacked``; their env.json says
    so), in stacks of which sizes, and how their training time is counted; empty if none."""
    sizes = []
    for name in summary.loc[summary["status"] == "ok", "run"].dropna():
        try:
            stacked = read_json(Path(runs) / str(name) / "env.json").get("stacked")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(stacked, dict) and isinstance(stacked.get("size"), int):
            sizes.append(stacked["size"])
    if not sizes:
        return ""
    by = ", ".join(f"{sizes.count(r)} in stacks of {r}" for r in sorted(set(sizes), reverse=True))
    return (f"{len(sizes)} of the runs trained stacked with the other seeds of their "
            f"configuration ({by}; bit for bit as alone, docs/stacking.md); the training time "
            "of a stacked run is its share of the stack's steps, each step's time divided "
            "among the runs in it.")


def compute_section(summary: pd.DataFrame, runs: Path) -> list[str]:
    """The report's section: the table, then the totals and the longest single run."""
    table = compute_table(summary, runs)
    if table.empty:
        return []
    ok = summary[summary["status"] == "ok"]
    seconds = _seconds(ok)
    pre = pretrained_seconds(summary, runs)
    longest = ok.loc[seconds.idxmax()]
    total = seconds.sum() + sum(pre.values())
    missing = int((summary["status"] != "ok").sum())
    text = (f"Summed over the {len(ok)} finished runs: {seconds.sum() / 3600:.2f} h"
            + (f", and {sum(pre.values()) / 60:.1f} min for the {len(pre)} pretrained "
               f"decoder{'s' * (len(pre) != 1)} they start from: {total / 3600:.2f} h in all"
               if pre else "")
            + f". Longest run: {longest['label']} seed {longest['seed']}, "
            f"{seconds.max() / 60:.1f} min"
            + (f"; {missing} run{'s' * (missing != 1)} not finished, not counted" if missing
               else "") + ".")
    lines = ["## Measured compute", "", markdown(table), "",
             text + " Minutes of one process as its record states them (training, the "
             "validation diagnostics at every epoch end, the test evaluation); a run that shared "
             "the CPU with another job counts the time it took."
             + (" By the rule: runs the convergence protocol stopped, of the configuration's; "
                "capped: still falling: how much the capped runs' watched validation number "
                "(-ELBO, or the objective for runs that watch it) still fell per epoch over "
                "their last 3 epochs, median, in nats: how far from converged the cap left them."
                if "by the rule" in table else "")]
    if len(ok) > 1:
        lines += ["", workers_line(list(pre.values()), submission_order(ok))]
    stacked = stacked_line(summary, runs) if "run" in summary else ""
    return lines + (["", stacked] if stacked else [])
