"""The paired comparison of configurations with a reference over the seeds both finished
(mean difference and its 95 % t interval), and the reading generated from it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import config_name

#: metrics of the paired comparison, and whether a positive difference is an improvement
PAIRED = [("nll_is", "NLL"), ("kl", "KL"), ("mutual_info", "MI")]


def paired_differences(summary: pd.DataFrame, reference: str,
                       metrics: list[tuple[str, str]] | None = None) -> dict[str, dict]:
    """Per configuration (not the reference): for each metric of ``PAIRED``, the differences
    configuration - reference over the seeds both finished, their mean, and the half-width of
    the 95 % t interval (n - 1 degrees of freedom): {name: {metric: (mean, half, n)}}.
    ``metrics``: other (column, title) pairs than ``PAIRED``; a seed missing a value (NaN)
    gives a NaN mean."""
    from scipy import stats

    ok = summary[summary["status"] == "ok"]
    ref = ok[ok["label"].map(config_name) == reference].set_index("seed")
    out = {}
    for label in dict.fromkeys(ok["label"]):
        if config_name(label) == reference or ref.empty:
            continue
        rows = ok[ok["label"] == label].set_index("seed")
        seeds = sorted(set(rows.index) & set(ref.index))
        rec = {}
        for col, _ in metrics or PAIRED:
            if col not in rows or col not in ref:
                rec[col] = (np.nan, np.nan, 0)
                continue
            d = (rows.loc[seeds, col].astype(float) - ref.loc[seeds, col].astype(float)).to_numpy()
            n = len(d)
            half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
            rec[col] = (d.mean() if n else np.nan, half, n)
        out[config_name(label)] = rec
    return out


def paired_table(summary: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The paired comparison with ``reference``: mean difference [95 % CI]; * where the interval
    excludes 0."""
    rows = []
    for name, rec in paired_differences(summary, reference).items():
        row = {"configuration": name, "seeds": next(iter(rec.values()))[2]}
        for col, title in PAIRED:
            mean, half, _ = rec[col]
            if np.isnan(half):
                row[f"Δ{title}"] = "n/a" if np.isnan(mean) else f"{mean:+.2f}"
                continue
            mark = " *" if abs(mean) > half else ""
            row[f"Δ{title}"] = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]{mark}"
        rows.append(row)
    return pd.DataFrame(rows)


def _nats(x: float) -> str:
    return "1 nat" if x == 1 else f"{x:g} nats"


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def reading(summary: pd.DataFrame, baseline: str, floor: str, collapse_kl: float = 1.0) -> str:
    """A short reading of one group's numbers, generated from them: whether the baseline
    collapsed, which configurations kept KL above ``collapse_kl`` nats (the profile's key),
    which beat the decoder alone on NLL (paired 95 % interval below 0), the best NLL and the most
    expensive method."""
    ok = summary[summary["status"] == "ok"]
    if ok.empty:
        return ""
    mean = ok.groupby(ok["label"].map(config_name), sort=False)[["kl", "mutual_info", "nll_is",
                                                           "train_seconds"]].mean()
    latent = [n for n in mean.index if n != floor]
    parts = []
    if baseline in mean.index:
        b = mean.loc[baseline]
        state = (f"collapsed (KL below {_nats(collapse_kl)})" if b["kl"] < collapse_kl
                 else "did not collapse")
        parts.append(f"The plain `{baseline}` {state}: KL {b['kl']:.2f}, MI {b['mutual_info']:.2f} "
                     "nats.")
    kept = [n for n in latent if mean.loc[n, "kl"] >= collapse_kl]
    lost = [n for n in latent if mean.loc[n, "kl"] < collapse_kl]
    parts.append(f"KL above {_nats(collapse_kl)}: {_names(kept)}; below: {_names(lost)}.")
    if floor in mean.index:
        diffs = paired_differences(ok, floor)
        better = [f"{n} ({d['nll_is'][0]:+.2f})" for n, d in diffs.items()
                  if d["nll_is"][0] + d["nll_is"][1] < 0]
        worse = [f"{n} ({d['nll_is'][0]:+.2f})" for n, d in diffs.items()
                 if d["nll_is"][0] - d["nll_is"][1] > 0]
        same = [n for n, d in diffs.items() if not np.isnan(d["nll_is"][1])
                and abs(d["nll_is"][0]) <= d["nll_is"][1]]
        parts.append(f"Against the decoder alone (`{floor}`, NLL {mean.loc[floor, 'nll_is']:.2f}), "
                     f"paired over seeds: lower NLL, interval excluding 0: {_names(better)}; "
                     f"higher: {_names(worse)}; not distinguishable: {_names(same)}.")
    best = mean.loc[latent, "nll_is"].idxmin() if latent else None
    if best is not None:
        text = f"Best NLL: {best} ({mean.loc[best, 'nll_is']:.2f})"
        if baseline in mean.index and best != baseline:
            d = paired_differences(ok, baseline).get(best, {}).get("nll_is")
            if d and not np.isnan(d[1]):
                text += f", {d[0]:+.2f} [{d[0] - d[1]:+.2f}, {d[0] + d[1]:+.2f}] against `{baseline}`"
        parts.append(text + ".")
    if baseline in mean.index and len(mean) > 1:  # a group of the baseline alone has no cost
        cost = (mean["train_seconds"] / mean.loc[baseline, "train_seconds"]).drop(baseline)
        top = cost.idxmax()
        if cost[top] > 1:
            parts.append(f"Most expensive: {top}, {cost[top]:.1f}x the training time of `{baseline}`.")
        else:
            parts.append(f"None trained slower than `{baseline}` (at most {top}, {cost[top]:.1f}x).")
    return " ".join(parts)
