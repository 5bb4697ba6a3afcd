"""A profile read beside its screening profile (``screening = "default"`` in ``[profile]``): for
each configuration of each group, the paired differences with the baseline (ΔNLL, ΔKL, ΔMI) in
both, and whether the screening conclusion survives. A conclusion is the sign of a difference
whose 95 % t interval excludes 0, or "no difference" where it does not; the verdict per metric:

- ``held``: both excluded 0 with the same sign, or neither excluded 0;
- ``reversed``: both excluded 0 with opposite signs;
- ``lost``: the screening run found a difference the trained one does not;
- ``new``: the trained run finds a difference the screening run did not.

Configurations are matched by group and configuration label; those in only one of the two are
left out (and counted)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .paired import PAIRED, paired_differences

VERDICTS = ("held", "reversed", "lost", "new")


def _conclusion(mean: float, half: float) -> int | None:
    """+1 / -1: the interval excludes 0 on that side; 0: it does not; None: not estimable."""
    if np.isnan(mean) or np.isnan(half):
        return None
    return int(np.sign(mean)) if abs(mean) > half else 0


def verdict(screen: tuple[float, float], trained: tuple[float, float]) -> str:
    """The verdict for one metric from (mean, half-width) of the screening and trained
    differences; "n/a" where either has fewer than 2 seeds."""
    a, b = _conclusion(*screen), _conclusion(*trained)
    if a is None or b is None:
        return "n/a"
    if a == b:
        return "held"
    if a and b:
        return "reversed"
    return "lost" if a else "new"


def _by_group(summary: pd.DataFrame, baseline: str) -> dict[str, dict]:
    groups = [g for g in dict.fromkeys(summary.get("group", pd.Series(dtype=str))) if g] or [""]
    return {g: paired_differences(summary if not g else summary[summary["group"] == g], baseline)
            for g in groups}


def _cell(mean: float, half: float) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:+.2f}" + (" *" if not np.isnan(half) and abs(mean) > half else "")


def screening_table(trained: pd.DataFrame, screen: pd.DataFrame, baseline: str,
                    names: tuple[str, str] = ("screening", "trained")) -> pd.DataFrame:
    """One row per (group, configuration) present in both: per metric the screening and trained
    mean differences with ``baseline`` (* where the 95 % interval excludes 0), headed by
    ``names`` (the two profiles), and the verdict."""
    a, b = _by_group(screen, baseline), _by_group(trained, baseline)
    rows = []
    for group, configs in b.items():
        for name, rec in configs.items():
            old = a.get(group, {}).get(name)
            if old is None:
                continue
            row = {"setting": group, "configuration": name}
            for col, title in PAIRED:
                row[f"Δ{title} {names[0]}"] = _cell(*old[col][:2])
                row[f"Δ{title} {names[1]}"] = _cell(*rec[col][:2])
                row[f"{title}"] = verdict(old[col][:2], rec[col][:2])
            rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty and not frame["setting"].astype(bool).any():
        frame = frame.drop(columns="setting")
    return frame


def screening_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many (configuration, metric) conclusions got each verdict."""
    cells = [v for _, title in PAIRED if title in table for v in table[title]]
    return {v: cells.count(v) for v in (*VERDICTS, "n/a") if cells.count(v)}


def screening_reading(table: pd.DataFrame) -> str:
    """A generated sentence: how many conclusions held, and which changed."""
    counts = screening_counts(table)
    pending = counts.pop("n/a", 0)
    total = sum(counts.values())
    if not total and not pending:
        return ""
    parts = [f"Of {total} screening conclusions (configuration x ΔNLL/ΔKL/ΔMI), "
             f"{counts.get('held', 0)} held on trained models"]
    if pending:  # fewer than 2 seeds on one side: no interval yet
        parts[0] += f" ({pending} more not yet comparable: fewer than 2 seeds)"
    where = "setting" in table
    for v in ("reversed", "lost", "new"):
        items = [f"{(r['setting'] + ' / ') if where else ''}{r['configuration']} {title}"
                 for _, r in table.iterrows() for _, title in PAIRED if r.get(title) == v]
        if items:
            parts.append(f"{v}: {', '.join(items)}")
    return "; ".join(parts) + "."
