"""The report's tables: per configuration mean ± sd over seeds (the main table, the published
numbers beside ours, the by-learning-rate-stage table, a profile's reference table), and the
markdown they are printed in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.metrics import METRICS
from ..grid.suite import Profile, runs_dir
from .records import load_run

MAIN_COLUMNS = ["neg_elbo", "nll_is", "kl", "mutual_info", "active_units",
                "active_units_strict", "recon"]

TITLES = {"neg_elbo": "-ELBO", "nll_is": "NLL (IS)", "kl": "KL", "mutual_info": "MI",
          "active_units": "AU", "active_units_strict": "AU strict", "recon": "recon",
          "ess": "IS ESS / K"}
#: the main table's columns from attached evaluations (bench.grid.attached), shown where measured
ATTACHED_COLUMNS = {"nll_ais": "NLL (AIS)", "is_minus_ais": "IS − AIS",
                    "nll_exact": "NLL (exact)", "inference_gap": "inference gap (exact)"}
#: decimals of a profile's own main-table column where 2 would hide it (default 2)
DIGITS = {"ess": 4}

#: history columns of the by-stage table: (column, title, decimals)
STAGE_COLUMNS = [("neg_elbo", "train -ELBO", 2), ("val_neg_elbo", "val -ELBO", 2),
                 ("val_kl", "val KL", 2), ("val_mutual_info", "val MI", 2),
                 ("val_active_units", "val AU", 1)]


def _fmt(mean: float, sd: float, digits: int) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if not np.isnan(sd) else f"{mean:.{digits}f}"


def _arrow(metric: str) -> str:
    m = METRICS.get(metric)
    return "" if m is None or m.higher_is_better is None else (" ↑" if m.higher_is_better else " ↓")


def config_name(label: str) -> str:
    """The configuration part of a "group / configuration" label."""
    return label.split(" / ")[-1]


def markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main_table(summary: pd.DataFrame, baseline: str = "", columns: tuple = ()) -> pd.DataFrame:
    """Per configuration: seeds finished, and mean ± sd over seeds of the main metrics; with a
    ``baseline`` configuration, the cost: mean training seconds relative to the baseline's (in
    the same group; over the seeds both have finished), as measured, with the range of the
    seed-by-seed ratios in brackets."""
    ok = summary[summary["status"] == "ok"]
    if "train_seconds" not in ok:  # no finished run at all (every record damaged or missing)
        ok = ok.assign(train_seconds=np.nan)
    base = ok[ok["label"].map(config_name) == baseline]
    base_seconds = base["train_seconds"].astype(float).mean() if len(base) else np.nan
    base_by_seed = base.set_index("seed")["train_seconds"].astype(float)
    out = []
    for label in dict.fromkeys(summary["label"]):
        rows = ok[ok["label"] == label]
        first = summary[summary["label"] == label].iloc[0]
        rec = {"configuration": config_name(label), "variant": first["variant"],
               "seeds": f"{len(rows)}/{(summary['label'] == label).sum()}"}
        for col in MAIN_COLUMNS:
            vals = rows[col].astype(float) if col in rows else pd.Series(dtype=float)
            digits = 1 if col.startswith("active_units") else 2
            rec[TITLES[col] + _arrow(col)] = _fmt(vals.mean(), vals.std(ddof=1), digits)
            if col == "active_units" and "active_units_by_layer" in summary:
                rec["AU by layer"] = _by_layer(rows["active_units_by_layer"])
        attached = "nll_ais" in summary and summary["nll_ais"].notna().any()
        for col, title in ATTACHED_COLUMNS.items():
            if attached and col in summary and col not in columns and summary[col].notna().any():
                vals = rows[col].astype(float)
                rec[title + _arrow(col)] = _fmt(vals.mean(), vals.std(ddof=1), 2)
        for col in columns:  # the profile's own (``[profile] columns``)
            vals = rows[col].astype(float) if col in rows else pd.Series(dtype=float)
            rec[TITLES.get(col, col) + _arrow(col)] = _fmt(vals.mean(), vals.std(ddof=1),
                                                           DIGITS.get(col, 2))
        if "stop_reason" in summary and summary["stop_reason"].notna().any():
            rec["stopped"] = _stopped(rows)
        if baseline:  # mean over mean, then the range of the seed-by-seed ratios
            mine = rows.set_index("seed")["train_seconds"].astype(float)
            both = [s for s in mine.index if s in base_by_seed.index]
            # over the seeds both have, so a missing seed on one side does not tilt the mean
            cost = (mine[both].mean() / base_by_seed[both].mean() if both
                    else mine.mean() / base_seconds if len(rows) else np.nan)
            per_seed = (mine / base_by_seed).dropna()
            spread = f" ({per_seed.min():.2f}–{per_seed.max():.2f})" if len(per_seed) > 1 else ""
            rec[f"cost (x {baseline})"] = "n/a" if np.isnan(cost) else f"{cost:.2f}{spread}"
        out.append(rec)
    return pd.DataFrame(out)


def _stopped(rows: pd.DataFrame) -> str:
    """How the convergence protocol ended a configuration's runs: "converged 3/3, epochs 41–57"
    (the rule fired), with how many hit the epoch cap instead ("capped 1")."""
    if rows.empty or "stop_reason" not in rows:
        return "n/a"
    reasons = rows["stop_reason"].fillna("cap")
    done = reasons.isin(("patience", "decays")).sum()
    epochs = rows["stopped_epoch"].dropna().astype(int)
    span = (f", epoch {epochs.min()}" if epochs.min() == epochs.max()
            else f", epochs {epochs.min()}–{epochs.max()}") if len(epochs) else ""
    capped = (reasons == "cap").sum()
    return f"converged {done}/{len(rows)}{span}" + (f"; capped {capped}" if capped else "")


def _by_layer(values: pd.Series) -> str:
    """Mean over seeds of the active units of each stochastic layer, "layer1+layer2" as Burda
    et al. 2016 report them; "-" for a model with one stochastic layer."""
    parts = [[int(v) for v in s.split("+")] for s in values.dropna().astype(str)]
    if not parts:
        return "-"
    return "+".join(f"{np.mean(layer):.1f}" for layer in zip(*parts, strict=True))


def published_table(profile: Profile, summary: pd.DataFrame) -> pd.DataFrame:
    """Ours (mean ± sd over seeds) beside each published number; where the profile states a
    ``tolerance``, the difference and whether it is reached ("missed" otherwise)."""
    ok = summary[summary["status"] == "ok"]
    rows = []
    for pub in profile.published:
        vals = ok.loc[ok["label"] == pub["label"], pub["metric"]].astype(float)
        row = {"configuration": pub["label"], "metric": TITLES.get(pub["metric"],
                                                                   pub["metric"]),
               "ours": _fmt(vals.mean(), vals.std(ddof=1), 2), "published": pub["value"]}
        if any("tolerance" in p for p in profile.published):
            tol = pub.get("tolerance")
            diff = vals.mean() - float(pub["value"]) if len(vals) else np.nan
            row["ours − published"] = "n/a" if np.isnan(diff) else f"{diff:+.2f}"
            row["target"] = "-" if tol is None else f"±{tol:g}"
            row["reached"] = "-" if tol is None or np.isnan(diff) else \
                ("yes" if abs(diff) <= tol else "missed")
        rows.append({**row, "source": pub["source"], "their protocol": pub["protocol"]})
    return pd.DataFrame(rows)


def stage_table(profile: Profile, summary: pd.DataFrame, results: Path) -> pd.DataFrame:
    """Per configuration and learning-rate stage (a run of epochs at one ``lr`` in history.csv,
    e.g. Burda et al.'s schedule): the last epoch's training -ELBO and validation diagnostics,
    mean over the seeds that reached it. Empty when no run changed its learning rate."""
    ok = summary[summary["status"] == "ok"]
    rows = []
    for label in dict.fromkeys(ok["label"]):
        ends: dict[int, list[pd.Series]] = {}
        for run in ok.loc[ok["label"] == label, "run"]:
            history = load_run(runs_dir(results, profile) / run)[2]
            if history is None or "lr" not in history or history["lr"].nunique() < 2:
                continue
            stage = (history["lr"] != history["lr"].shift()).cumsum()
            for i, (_, block) in enumerate(history.groupby(stage, sort=True)):
                ends.setdefault(i, []).append(block.iloc[-1])
        for i, last in sorted(ends.items()):
            frame = pd.DataFrame(last)
            rec = {"configuration": label, "stage": i, "epoch": int(frame["epoch"].max()),
                   "lr": f"{frame['lr'].iloc[0]:.3g}", "seeds": len(frame)}
            for col, title, digits in STAGE_COLUMNS:
                if col in frame:
                    vals = frame[col].astype(float)
                    rec[title] = _fmt(vals.mean(), vals.std(ddof=1), digits)
            if "val_active_units_by_layer" in frame:
                rec["val AU by layer"] = _by_layer(frame["val_active_units_by_layer"])
            rows.append(rec)
    return pd.DataFrame(rows).fillna("-")  # "-": a column that this configuration lacks


def reference_section(profile: Profile) -> list[str]:
    ref = profile.reference
    if not ref:
        return []
    table = pd.DataFrame(ref["rows"], columns=ref["columns"])
    return ["", f"## Reference: {ref['title']}", "", markdown(table), "", ref.get("note", "")]
