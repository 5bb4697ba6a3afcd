"""The report's posterior-mean space (He et al. 2019, Figures 1 and 3): where the runs recorded it
(``eval.posterior_mean_points``; history columns ``val_pm_*``, bench.evaluation.quadrature), a
table of how far each configuration's encoder lags the model's exact posterior (the slope and
correlation of mu_q(x) on E_p(z|x)[z], first and last epoch, mean over seeds, and the first epoch
its slope reached 0.5) and the figure He et al. drew: per configuration, one seed's points at the
first, a middle and the last epoch, the diagonal where the encoder has caught up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .records import load_run
from .tables import _fmt, config_name, markdown

CAUGHT_UP = 0.5  # the slope at which an encoder counts as following the model's posterior


def _histories(ok: pd.DataFrame, runs: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for run in ok.get("run", pd.Series(dtype=object)).dropna():
        h = load_run(Path(runs) / str(run))[2]
        if h is not None and "val_pm_slope" in h:
            out[str(run)] = h
    return out


def lag_table(ok: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for label in dict.fromkeys(ok["label"]):
        hs = [histories[r] for r in ok.loc[ok["label"] == label, "run"] if r in histories]
        if not hs:
            continue
        first = np.array([h["val_pm_slope"].iloc[0] for h in hs], float)
        last = np.array([h["val_pm_slope"].iloc[-1] for h in hs], float)
        corr = np.array([h["val_pm_corr"].iloc[-1] for h in hs], float)
        spread = np.array([h["val_pm_spread"].iloc[-1] for h in hs], float)
        reached = [int(np.argmax(h["val_pm_slope"].to_numpy(float) >= CAUGHT_UP)) + 1
                   if (h["val_pm_slope"].to_numpy(float) >= CAUGHT_UP).any() else None for h in hs]
        sd = lambda a: a.std(ddof=1) if len(a) > 1 else float("nan")  # noqa: E731
        inside = _inside_first_epoch(hs)
        rows.append({"configuration": config_name(label), "seeds": len(hs),
                     **({"slope inside epoch 1 (step: mean over seeds)": inside} if inside
                        else {}),
                     "slope, epoch 1": _fmt(first.mean(), sd(first), 2),
                     "slope, last": _fmt(last.mean(), sd(last), 2),
                     "corr, last": _fmt(np.nanmean(corr), sd(corr), 2) if np.isfinite(corr).any()
                     else "n/a",
                     "spread of E_p[z|x]": _fmt(spread.mean(), sd(spread), 2),
                     f"first epoch slope ≥ {CAUGHT_UP}": ", ".join(
                         "never" if r is None else str(r) for r in reached)})
    return pd.DataFrame(rows)


def _inside_first_epoch(hs: list[pd.DataFrame]) -> str:
    """The slope at each snapshot inside epoch 1 (``eval.posterior_mean_every``; history column
    ``val_pm_steps``), mean over the seeds that have it, as "step: slope" pairs; "" if none."""
    snaps: dict[int, list[float]] = {}
    for h in hs:
        text = str(h["val_pm_steps"].iloc[0]) if "val_pm_steps" in h else ""
        for snap in filter(None, text.split(";") if text != "nan" else []):
            step, slope = snap.split(":")[:2]
            snaps.setdefault(int(step), []).append(float(slope))
    return ", ".join(f"{k}: {np.mean(v):.2f}" for k, v in sorted(snaps.items()))


def _kind(slope: float, corr: float) -> str:
    """One run's last epoch: lag (slope below CAUGHT_UP, or NaN), follow (slope and correlation
    at least CAUGHT_UP), or apart (means that move, but not with the model's posterior)."""
    if not slope >= CAUGHT_UP:
        return "lag"
    return "follow" if corr >= CAUGHT_UP else "apart"


def reading(ok: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> list[str]:
    """Which configurations' encoders follow the model's posterior at the last epoch (slope and
    correlation ≥ CAUGHT_UP in every seed), which lag (slope below it in every seed), whose means
    move without following it (slope above, correlation below), where the seeds disagree."""
    groups: dict[str, list[str]] = {"follow": [], "lag": [], "apart": [], "split": []}
    for label in dict.fromkeys(ok["label"]):
        last = [histories[r][["val_pm_slope", "val_pm_corr"]].iloc[-1]
                for r in ok.loc[ok["label"] == label, "run"] if r in histories]
        if last:
            kind = [_kind(float(v["val_pm_slope"]), float(v["val_pm_corr"])) for v in last]
            groups[kind[0] if len(set(kind)) == 1 else "split"].append(f"`{config_name(label)}`")
    say = {"follow": "the encoder follows the model's posterior in every seed",
           "lag": "it lags in every seed", "apart": f"its means move (slope ≥ {CAUGHT_UP}) but "
           f"not with the model's posterior (correlation below {CAUGHT_UP}) in every seed",
           "split": "the seeds disagree"}
    parts = [f"{say[k]}: {', '.join(v)}" for k, v in groups.items() if v]
    return [f"At the last epoch (slope and correlation ≥ {CAUGHT_UP} or not): " + "; ".join(parts)
            + ".", ""] \
        if parts else []


def _points(h: pd.DataFrame, i: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.array(str(h["val_pm_model"].iloc[i]).split(), float).reshape(-1, dim)
    e = np.array(str(h["val_pm_encoder"].iloc[i]).split(), float).reshape(-1, dim)
    return m[:, 0], e[:, 0]


def figure(profile, ok: pd.DataFrame, histories: dict[str, pd.DataFrame], path: Path,
           dim: int = 1) -> Path | None:
    """Per configuration (row), the lowest seed's run at its first, middle and last epoch
    (columns): E_p(z|x)[z] (x axis) against mu_q(x) (y axis) on the recorded points; for a 2-d
    latent, its first coordinate."""
    from .figures import _save, plt

    labels = [lab for lab in dict.fromkeys(ok["label"])
              if any(r in histories for r in ok.loc[ok["label"] == lab, "run"])]
    if not labels:
        return None
    fig, axes = plt.subplots(len(labels), 3, figsize=(8.4, 2.5 * len(labels)), squeeze=False)
    for row, lab in zip(axes, labels, strict=True):
        sub = ok[(ok["label"] == lab) & ok["run"].isin(list(histories))].sort_values("seed")
        h = histories[sub["run"].iloc[0]]
        for ax, i in zip(row, (0, (len(h) - 1) // 2, len(h) - 1), strict=True):
            m, e = _points(h, i, dim)
            lim = max(np.abs(m).max(), np.abs(e).max(), 0.5) * 1.1
            ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8, ls="--")
            ax.scatter(m, e, s=4, alpha=0.6)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim),
                   title=f"{config_name(lab)} s{sub['seed'].iloc[0]}, epoch {int(h['epoch'].iloc[i])}: "
                   f"slope {h['val_pm_slope'].iloc[i]:.2f}", xlabel="E_p(z|x)[z] (exact)",
                   ylabel="μ_q(x)")
            ax.title.set_fontsize(7)
    fig.suptitle(f"Posterior-mean space ({profile.name}; He et al. 2019, Fig. 1): on the "
                 "diagonal the encoder follows the model's posterior, on μ_q = 0 it lags",
                 fontsize=8)
    return _save(fig, path)


def section(profile, summary: pd.DataFrame, runs: Path, out: Path) -> tuple[list[str], list[Path]]:
    """The section's lines and its figure, or nothing where no run recorded the space."""
    ok = summary[summary["status"] == "ok"]
    histories = _histories(ok, runs)
    if not histories:
        return [], []
    first = next(iter(histories.values()))
    dim = len(str(first["val_kl_per_unit"].iloc[0]).split()) if "val_kl_per_unit" in first else 1
    table = lag_table(ok, histories)
    fig = figure(profile, ok, histories, out / "posterior_mean_space.png", dim)
    lines = ["## Posterior-mean space: does the encoder follow the model's posterior?", "",
             "At every epoch end, on fixed validation points, the model's exact posterior mean "
             "E_p(z|x)[z] (quadrature on He et al. 2019's grid) against the encoder's mean "
             "μ_q(x) (bench/evaluation/quadrature.py): slope and correlation of μ_q on E_p[z|x] "
             "(0: the encoder ignores what the model's posterior says, the lag behind collapse; "
             "1: caught up), and the spread (sd) of E_p[z|x] over the points (near 0: the model "
             "itself ignores z, nothing to lag behind). Mean ± sd over seeds; the last column "
             "lists each seed's first epoch with slope ≥ 0.5.", "", markdown(table), "",
             *reading(ok, histories)]
    if fig:
        lines += [f"![posterior_mean_space]({profile.name}/{fig.name})", ""]
    return lines, [fig] if fig else []
