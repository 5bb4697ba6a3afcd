"""Verdicts that say how sure they are: for each configuration paired with the baseline over
seeds, the paired t test's p value and a Holm mark across the configurations of one setting,
the probability of improvement with a paired bootstrap interval, the smallest difference the
seeds can resolve, whether the estimator's gap (IS - AIS) could decide the NLL conclusion, and a
ranking of the configurations with its bootstrap interval.

Definitions (the statistics behind them: docs/metrics.md, "Verdicts"):

- p: the two-sided paired t test of the mean difference over the seeds both finished (n - 1
  degrees of freedom), the test whose 95 % interval the paired table shows.
- Holm (1979): the step-down correction of those p values across the configurations of one
  setting, controlling the family-wise error at 5 %; marked † beside the raw * (p < 0.05).
- P(better): Agarwal et al. 2021's probability of improvement (rliable): the chance that a run
  of the configuration is better than a run of the baseline, the Mann-Whitney statistic
  mean_ij S(x_i, y_j) (S = 1 better, 1/2 tie, 0 worse) over the seeds both finished; its 95 %
  interval by a paired bootstrap over seeds (seed indices drawn with replacement, the pair of a
  seed kept together; 2,000 draws from a fixed generator, so a report is rebuilt to the bit).
- detectable: the difference a paired t test at 5 % finds with 80 % power given n seeds and
  the sd of the paired differences (the noncentral t, solved exactly); differences below it are
  not resolvable with these seeds.
- gap: the configuration's IS - AIS gap minus the baseline's, paired per seed (AIS records,
  bench.grid.attached); where it is at least the IS difference itself, or the verdict of the IS
  corrected by each run's gap differs from the IS one, the estimator decides the conclusion and
  it is read with AIS. (The AIS subset's own verdict is not used here: on 100-200 points it
  often cannot resolve what the whole split's IS does, a matter of points, not of bias; the
  estimator section names those.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import config_name, markdown

ALPHA, POWER, DRAWS = 0.05, 0.8, 2000


def holm(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down rejections: sort the p values, reject the i-th smallest (from 0) while
    p <= alpha / (m - i); the first that fails stops it. NaN is never rejected (and not counted
    in m)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not np.isnan(p))
    m, out = len(order), [False] * len(pvalues)
    for rank, (p, i) in enumerate(order):
        if p > alpha / (m - rank):
            break
        out[i] = True
    return out


def improvement(x: np.ndarray, y: np.ndarray, lower_better: bool = True) -> float:
    """P(a run of x is better than a run of y): mean over all pairs of 1 better, 1/2 tie."""
    x, y = np.asarray(x, float)[:, None], np.asarray(y, float)[None, :]
    better = (x < y) if lower_better else (x > y)
    return float((better + 0.5 * (x == y)).mean())


def improvement_interval(x: np.ndarray, y: np.ndarray, lower_better: bool = True,
                         draws: int = DRAWS, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``improvement`` over a paired bootstrap of the seeds (x[i],
    y[i] are one seed's)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(draws, len(x)))
    xs, ys = x[idx][:, :, None], y[idx][:, None, :]
    better = (xs < ys) if lower_better else (xs > ys)
    stats = (better + 0.5 * (xs == ys)).mean(axis=(1, 2))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def power(effect: float, n: int) -> float:
    """Power of the two-sided paired t test at ALPHA for a mean difference of ``effect`` sds
    with n seeds: the noncentral t distribution with noncentrality effect sqrt(n)."""
    from scipy import stats

    t, nc = stats.t.ppf(1 - ALPHA / 2, n - 1), effect * np.sqrt(n)
    # the far tail's cdf comes back NaN for a large noncentrality (it is below 1e-15 there)
    return float(stats.nct.sf(t, n - 1, nc) + np.nan_to_num(stats.nct.cdf(-t, n - 1, nc)))


def detectable(sd: float, n: int) -> float:
    """Smallest mean difference the two-sided paired t test at ALPHA finds with POWER, given n
    seeds and the sd of the paired differences (solved exactly on the noncentral t; the usual
    (t_0.975 + t_0.8) sd / sqrt(n) falls short of 80 % power at n = 3, 5); NaN below 2 seeds."""
    from scipy import optimize

    if n < 2 or np.isnan(sd):
        return float("nan")
    effect = optimize.brentq(lambda e: power(e, n) - POWER, 1e-6, 50.0, xtol=1e-10)
    return float(effect * sd)


def _paired(ok: pd.DataFrame, label: str, ref: pd.DataFrame, col: str):
    rows = ok[ok["label"] == label].set_index("seed")
    if col not in rows or col not in ref:
        return None
    seeds = sorted(s for s in set(rows.index) & set(ref.index)
                   if not (np.isnan(float(rows.loc[s, col])) or np.isnan(float(ref.loc[s, col]))))
    return (rows.loc[seeds, col].astype(float).to_numpy(),
            ref.loc[seeds, col].astype(float).to_numpy())


def verdicts(summary: pd.DataFrame, reference: str, col: str = "nll_is") -> pd.DataFrame:
    """One row per configuration (not the reference) of one setting: n, mean difference, its
    half-width, p, raw and Holm rejections, P(better) and its interval, detectable difference,
    the paired gap difference and the verdict of the gap-corrected IS (NaN / "" where the records
    lack them)."""
    from scipy import stats

    ok = summary[summary["status"] == "ok"]
    ref = ok[ok["label"].map(config_name) == reference].set_index("seed")
    rows = []
    for label in dict.fromkeys(ok["label"]):
        if config_name(label) == reference or ref.empty:
            continue
        pair = _paired(ok, label, ref, col)
        if pair is None or len(pair[0]) == 0:
            continue
        x, y = pair
        d, n = x - y, len(x)
        sd = float(d.std(ddof=1)) if n > 1 else float("nan")
        half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) if n > 1 else float("nan")
        p = float(stats.ttest_1samp(d, 0.0).pvalue) if n > 1 and sd > 0 else float("nan")
        lo, hi = improvement_interval(x, y) if n > 1 else (float("nan"),) * 2
        row = {"name": config_name(label), "n": n, "mean": float(d.mean()), "half": half,
               "p": p, "sd": sd, "poi": improvement(x, y), "poi_lo": lo, "poi_hi": hi,
               "detectable": detectable(sd, n), "gap": float("nan"), "corrected": ""}
        gaps = _paired(ok, label, ref, "is_minus_ais")
        if gaps is not None and len(gaps[0]):
            row["gap"] = float((gaps[0] - gaps[1]).mean())
        cor = _paired(ok, label, ref, "nll_is_corrected")
        if cor is not None and len(cor[0]) > 1:
            da = cor[0] - cor[1]
            h = stats.t.ppf(0.975, len(da) - 1) * da.std(ddof=1) / np.sqrt(len(da))
            row["corrected"] = "lower" if da.mean() + h < 0 else "higher" if da.mean() - h > 0 \
                else "n.s."
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["raw"] = out["p"] < ALPHA
        out["holm"] = holm(out["p"].tolist())
    return out


def _decides(r) -> bool:
    if np.isnan(r["gap"]) and not r["corrected"]:
        return False
    is_verdict = ("n.s." if np.isnan(r["half"]) or abs(r["mean"]) <= r["half"]
                  else "lower" if r["mean"] < 0 else "higher")
    return bool(abs(r["gap"]) >= abs(r["mean"])) or bool(r["corrected"]
                                                         and r["corrected"] != is_verdict)


def verdict_table(v: pd.DataFrame) -> pd.DataFrame:
    """The rendered verdicts (NLL)."""
    out = []
    for _, r in v.iterrows():
        ci = "" if np.isnan(r["half"]) else f" [{r['mean'] - r['half']:+.2f}, {r['mean'] + r['half']:+.2f}]"
        marks = ("*" if r["raw"] else "") + ("†" if r["holm"] else "")
        row = {"configuration": r["name"], "seeds": r["n"],
               "ΔNLL [95 %]": f"{r['mean']:+.2f}{ci}" + (f" {marks}" if marks else ""),
               "p": "n/a" if np.isnan(r["p"]) else f"{r['p']:.3f}",
               "P(better) [95 %]": f"{r['poi']:.2f}" + (
                   "" if np.isnan(r["poi_lo"]) else f" [{r['poi_lo']:.2f}, {r['poi_hi']:.2f}]"),
               "detectable": "n/a" if np.isnan(r["detectable"]) else f"{r['detectable']:.2f}"}
        if v["gap"].notna().any() or (v["corrected"] != "").any():
            row["Δ(IS − AIS)"] = "-" if np.isnan(r["gap"]) else f"{r['gap']:+.2f}"
            row["IS − gap verdict"] = r["corrected"] or "-"
            row["estimator decides"] = "yes" if _decides(r) else "no"
        out.append(row)
    return pd.DataFrame(out)


def ranking(summary: pd.DataFrame, col: str = "nll_is", draws: int = DRAWS,
            seed: int = 0) -> pd.DataFrame:
    """Configurations of one setting ranked by mean ``col`` (lower first) over the seeds every
    configuration finished, with the 95 % interval of each rank over a bootstrap of those seeds
    (one draw of seeds for all configurations, so a seed's runs stay together)."""
    ok = summary[summary["status"] == "ok"]
    if col not in ok or ok.empty:
        return pd.DataFrame()
    wide = ok.pivot_table(index="seed", columns="label", values=col, aggfunc="first",
                          sort=False).dropna()
    if wide.shape[0] < 2 or wide.shape[1] < 2:
        return pd.DataFrame()
    vals = wide.to_numpy(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vals.shape[0], size=(draws, vals.shape[0]))
    means = vals[idx].mean(axis=1)  # draws x configurations
    ranks = means.argsort(axis=1).argsort(axis=1) + 1
    point = vals.mean(axis=0).argsort().argsort() + 1
    lo, hi = np.percentile(ranks, [2.5, 97.5], axis=0)
    out = pd.DataFrame({"configuration": [config_name(c) for c in wide.columns], "rank": point,
                        "rank [95 %]": [f"{int(a)}–{int(b)}" for a, b in zip(lo, hi, strict=True)],
                        "mean": vals.mean(axis=0), "seeds": vals.shape[0]})
    return out.sort_values("rank").reset_index(drop=True)


def nll_reading(summary: pd.DataFrame) -> tuple[str, str]:
    """(column, what it is) of the NLL the verdicts read: the exact likelihood where every
    finished run has it over the whole test split (quadrature, small latents; a run without a
    latent has it from its metrics), else IS corrected by each run's IS - AIS gap where every run
    has that, else IS."""
    ok = summary[summary["status"] == "ok"]
    whole = ok["exact_points"].isna() | (ok["exact_points"] == "split") \
        if "exact_points" in ok else pd.Series(True, index=ok.index)
    if not ok.empty and "nll_exact" in ok and ok["nll_exact"].notna().all() and whole.all():
        return "nll_exact", "the exact likelihood, quadrature over the whole test split"
    if "nll_is_corrected" in summary and summary["nll_is_corrected"].notna().all():
        return "nll_is_corrected", "IS corrected by each run's IS − AIS gap"
    return "nll_is", "IS"


def verdict_lines(summary: pd.DataFrame, reference: str, where: str = "") -> list[str]:
    """The verdict block of one setting, or nothing where no configuration pairs with
    ``reference``."""
    use, label = nll_reading(summary)
    exact = use == "nll_exact"
    v = verdicts(summary, reference, "nll_exact" if exact else "nll_is")
    if v.empty:
        return []
    if exact:  # no estimator between the model and its number: no gap to read
        v = v.assign(gap=float("nan"), corrected="")
    sd = float(np.nanmedian(v["sd"])) if v["sd"].notna().any() else float("nan")
    n = int(v["n"].median())
    lines = [f"**How sure** (NLL{' (exact)' if exact else ''}, paired with `{reference}`{where}; "
             "* p < 0.05 by the paired t "
             "test, † also after Holm's correction across this setting's configurations; "
             "P(better): the chance a run of the configuration has the lower NLL than a run of "
             "the baseline, rliable's probability of improvement, with its paired bootstrap "
             "interval over seeds; detectable: the smallest difference these seeds resolve with "
             "80 % power" + ("; Δ(IS − AIS): the configuration's estimator gap minus the "
                             "baseline's; IS − gap verdict: the paired interval of the whole split's "
                             "IS corrected by each run's own gap (lower, higher, n.s.); the "
                             "estimator decides where the gap difference is at least the IS "
                             "difference or the corrected verdict is not the IS one: read that "
                             "conclusion with AIS"
                             if v["gap"].notna().any() else "") + "):", "",
             markdown(verdict_table(v)), ""]
    if not np.isnan(sd):
        lines += [f"Detectable difference: with {n} seeds and the median sd of the paired NLL "
                  f"differences ({sd:.2f} nats), differences below {detectable(sd, n):.2f} nats "
                  "are not resolvable here (paired t test, 5 %, 80 % power).", ""]
    rank = ranking(summary, use)
    if not rank.empty:
        rank = rank.assign(mean=rank["mean"].map(lambda m: f"{m:.2f}"))
        lines += [f"Ranking by NLL ({label}; 1 = lowest) over the {rank['seeds'].iloc[0]} seeds "
                  "every configuration finished, with each rank's 95 % interval over a "
                  "bootstrap of those seeds:", "", markdown(rank.drop(columns="seeds")), ""]
    return lines
