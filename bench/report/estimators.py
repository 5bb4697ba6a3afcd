"""The report's estimator section: how far each configuration's IS NLL lies from AIS (and from
the exact likelihood where quadrature gives it), and which paired NLL conclusions change when
read with AIS instead of IS (``bench.grid.attached`` makes the records)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .paired import paired_differences
from .tables import _fmt, config_name, markdown

#: the NLL readings compared: the whole split's IS, AIS on the subset, and the whole split's IS
#: corrected by the configuration's own IS - AIS gap
READINGS = [("nll_is", "IS"), ("nll_ais", "AIS"), ("nll_is_corrected", "IS − gap")]


def _mean_sd(rows: pd.DataFrame, col: str, digits: int = 2) -> str:
    if col not in rows or rows[col].isna().all():
        return "-"
    vals = rows[col].dropna().astype(float)
    return _fmt(vals.mean(), vals.std(ddof=1), digits)


def gap_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: the AIS record's numbers, mean ± sd over the seeds that have one."""
    ok = summary[summary["status"] == "ok"]
    out = []
    for label in dict.fromkeys(ok["label"]):
        rows = ok[ok["label"] == label]
        with_ais = rows[rows["nll_ais"].notna()] if "nll_ais" in rows else rows.iloc[:0]
        rec = {"configuration": label, "seeds": f"{len(with_ais)}/{len(rows)}",
               "NLL (IS, split)": _mean_sd(rows, "nll_is"),
               "NLL (IS, subset)": _mean_sd(with_ais, "nll_is_subset"),
               "NLL (AIS, subset)": _mean_sd(with_ais, "nll_ais"),
               "IS − AIS": _mean_sd(with_ais, "is_minus_ais"),
               "its SE (per run)": _mean_sd(with_ais, "is_minus_ais_se", 3).split(" ")[0],
               "NLL (IS − gap, split)": _mean_sd(with_ais, "nll_is_corrected"),
               "acceptance": _mean_sd(with_ais, "ais_accept", 2).split(" ")[0]}
        if "bdmc_gap" in ok and ok["bdmc_gap"].notna().any():
            rec["BDMC gap"] = _mean_sd(with_ais, "bdmc_gap", 3)
        if "nll_exact_subset" in ok and ok["nll_exact_subset"].notna().any():
            rec["NLL (exact, subset)"] = _mean_sd(with_ais, "nll_exact_subset")
            rec["AIS − exact"] = _mean_sd(with_ais, "ais_minus_exact", 3)
            rec["IS − exact (its points)"] = _mean_sd(with_ais, "is_gap", 3)
        out.append(rec)
    return pd.DataFrame(out)


def _verdict(mean: float, half: float) -> str:
    if np.isnan(mean) or np.isnan(half):
        return "n/a"
    if mean + half < 0:
        return "lower"
    if mean - half > 0:
        return "higher"
    return "n.s."


def conclusions_table(summary: pd.DataFrame, reference: str) -> tuple[pd.DataFrame, dict]:
    """Per configuration, the paired ΔNLL against ``reference`` [95 % t interval] read with IS
    on the whole split, AIS on the subset, and IS corrected by each run's own gap, with the
    verdict of each (lower / higher / n.s.); and the configurations whose verdict moves, sorted
    by how: ``changed`` (the corrected IS verdict differs from the IS one: the estimator's bias
    decided it), ``reversed`` (AIS and IS both exclude 0, with opposite signs), ``unresolved``
    (AIS on the subset alone cannot tell, where the whole split's IS and its corrected form
    agree: a subset too small for that difference, not a bias)."""
    diffs = paired_differences(summary, reference, READINGS)
    rows, moved = [], {"changed": [], "reversed": [], "unresolved": []}
    for name, rec in diffs.items():
        row = {"configuration": name}
        verdicts = {}
        for col, title in READINGS:
            mean, half, n = rec[col]
            verdicts[title] = _verdict(mean, half)
            row[f"ΔNLL {title}"] = "n/a" if np.isnan(mean) else (
                f"{mean:+.2f}" if np.isnan(half) else
                f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] {verdicts[title]}")
        rows.append(row)
        v_is, v_ais, v_cor = verdicts["IS"], verdicts["AIS"], verdicts["IS − gap"]
        text = f"{name} ({', '.join(f'{t}: {v}' for t, v in verdicts.items())})"
        if "n/a" in (v_is, v_cor):
            continue
        if v_cor != v_is:
            moved["changed"].append(text)
        elif {v_is, v_ais} == {"lower", "higher"}:
            moved["reversed"].append(text)
        elif v_ais not in (v_is, "n/a"):
            moved["unresolved"].append(name)
    return pd.DataFrame(rows), moved


def _moved_text(moved: dict) -> str:
    names = {"changed": "the conclusion changes once the IS NLL is corrected by each run's own "
                        "gap",
             "reversed": "AIS reverses the IS conclusion",
             "unresolved": "AIS on the subset alone cannot resolve the difference (the whole "
                           "split's IS and its corrected form agree)"}
    parts = [f"{names[k]}: {'; '.join(v)}" for k, v in moved.items() if v]
    return ". ".join(parts) if parts else "none"


def estimator_section(summary: pd.DataFrame, baseline: str, settings: str) -> list[str]:
    """The section, or nothing where no run has an AIS record."""
    if "nll_ais" not in summary or summary["nll_ais"].isna().all():
        return []
    lines = ["## How far the IS NLL is from the truth (AIS)", "",
             f"Annealed importance sampling ({settings}; `bench/evaluation/ais.py`) on a fixed, seeded "
             "subset of the test split, the same points for every run, with IS (the run's K) on "
             "the same points: IS − AIS is paired per point (its per-run SE beside it). AIS is a "
             "stochastic lower bound on log p(x) like IS, far tighter where q fits badly; the "
             "whole split's IS NLL minus the configuration's own gap is its corrected NLL. Mean "
             "± sd over seeds.", ""]
    groups = [g for g in dict.fromkeys(summary.get("group", pd.Series(dtype=str))) if g]
    for g in groups or [None]:
        sub = summary if g is None else summary[summary["group"] == g]
        table = gap_table(sub)
        if g:
            table["configuration"] = table["configuration"].map(config_name)
        lines += ([f"### {g}", ""] if g else []) + [markdown(table), ""]
        if not baseline:
            continue
        paired, moved = conclusions_table(sub, baseline)
        if paired.empty:
            continue
        lines += [f"Paired with `{baseline}`{' in ' + g if g else ''} over the seeds both have "
                  "(95 % t interval; lower = better NLL than the baseline, n.s. = the interval "
                  "contains 0):", "", markdown(paired), "",
                  "**Conclusions that change with the estimator** (generated): "
                  + _moved_text(moved) + ".", ""]
    return lines
