"""The report's figures: the rate-distortion plane, active units, collapse trajectories on the
validation split, sorted KL per unit with training curves, reconstructions and samples."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from ..grid.suite import Profile, runs_dir
from .records import load_run
from .tables import config_name

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: per-epoch validation diagnostics drawn as collapse trajectories (history.csv columns)
TRAJECTORIES = [("val_neg_elbo", "-ELBO (nats)"), ("val_kl", "KL (nats)"), ("val_mutual_info", "MI (nats)"),
                ("val_active_units", "AU (δ = 0.01)"), ("val_active_units_strict", "AU (δ = 0.1)")]


def _colors(labels: list[str]) -> dict[str, tuple]:
    """A distinct color per label: tab10 up to 10 labels, then tab20 (then repeating)."""
    n = 10 if len(labels) <= 10 else 20
    cmap = plt.get_cmap(f"tab{n}")
    return {lab: cmap(i % n) for i, lab in enumerate(labels)}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of different lengths (runs stopped at different epochs) as one array, NaN-padded."""
    out = np.full((len(rows), max(map(len, rows))), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def figures(profile: Profile, summary: pd.DataFrame, results: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    ok = summary[summary["status"] == "ok"]
    labels = list(dict.fromkeys(summary["label"]))
    color = _colors(labels)
    runs = runs_dir(results, profile)
    paths = []

    groups = list(dict.fromkeys(summary["group"])) if "group" in summary else [""]
    names = list(dict.fromkeys(config_name(lab) for lab in labels))
    name_color = _colors(names)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        sub = ok[ok["group"] == group] if group else ok
        for lab in dict.fromkeys(sub["label"]):
            r = sub[sub["label"] == lab]
            ax.scatter(r["kl"], r["recon"], color=name_color[config_name(lab)], label=config_name(lab), s=25)
        ax.set(xlabel="rate: KL (nats)", ylabel="distortion: -E_q log p(x|z) (nats)",
               title=f"Rate-distortion plane{': ' + group if group else ''}, one point per run")
        ax.set_xscale("symlog", linthresh=1.0)
        if ax.get_legend_handles_labels()[0]:  # nothing finished: no legend to draw
            ax.legend(fontsize=6)
    paths.append(_save(fig, out / "rate_distortion.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    au = [ok.loc[ok["label"] == lab, "active_units"].astype(float) for lab in labels]
    ax.bar(labels, [a.mean() for a in au], yerr=[a.std(ddof=1) if len(a) > 1 else 0 for a in au],
           color=[color[lab] for lab in labels])
    ax.set(ylabel="active units", title="Active units per configuration (mean ± sd over seeds)")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    paths.append(_save(fig, out / "active_units.png"))

    traj = trajectories_figure(profile, ok, runs, out / "collapse_trajectories.png")
    paths += [traj] if traj else []

    fig, (ax_kl, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
    for lab in labels:
        kls, curves = [], []
        for run in ok.loc[ok["label"] == lab, "run"]:
            metrics, _, history, _ = load_run(runs / run)
            kls.append(np.sort(metrics["kl_per_dim"])[::-1])
            if history is not None:
                curves.append(history["neg_elbo"].to_numpy())
        if kls:
            ax_kl.plot(np.arange(1, len(kls[0]) + 1), np.mean(kls, 0), color=color[lab],
                       label=lab)
        if curves:  # seeds stopped by the convergence protocol end at different epochs
            ax_curve.plot(np.arange(1, max(map(len, curves)) + 1), np.nanmean(_padded(curves), 0),
                          color=color[lab], label=lab)
    ax_kl.set(yscale="log", xlabel="latent unit (sorted)", ylabel="KL per unit (nats)",
              title="Sorted KL per unit: the collapse picture")
    ax_curve.set(xlabel="epoch", ylabel="training -ELBO (nats)", title="Training curves")
    if ax_kl.get_legend_handles_labels()[0]:
        ax_kl.legend(fontsize=7)
    paths.append(_save(fig, out / "kl_profile_and_training.png"))

    previews = [(lab, runs / ok.loc[ok["label"] == lab, "run"].iloc[0] / "previews.npz")
                for lab in labels if (ok["label"] == lab).any()]
    previews = [(lab, rows) for lab, p in previews if p.exists()
                for rows in [_preview_rows(p)] if rows is not None]
    if previews:
        fig, axes = plt.subplots(len(previews), 1, figsize=(8, 1.1 * len(previews) + 0.5),
                                 squeeze=False)
        for ax, (lab, rows) in zip(axes[:, 0], previews, strict=True):
            ax.imshow(np.concatenate(rows, axis=1), cmap="gray", vmin=0, vmax=255)
            ax.set_axis_off()
            ax.set_title(f"{lab}: data | reconstructions | prior samples", fontsize=7)
        paths.append(_save(fig, out / "reconstructions_and_samples.png"))
    return paths


def _preview_rows(path: Path) -> list | None:
    """The image rows of a run's previews.npz (data, reconstructions, prior samples), or None,
    said in one line on stderr, where the file is not a readable preview (previews illustrate;
    no number of the report comes from them)."""
    try:
        if not path.is_file():
            raise ValueError("not a regular file")
        with np.load(path, allow_pickle=False) as z:
            return [np.concatenate(list(z[k]), axis=1) for k in ("data", "recon", "samples")]
    except Exception as e:  # a truncated zip, another array layout, a directory
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        print(f"vae-bench: {path}: not a readable preview ({first}); left out of the figure",
              file=sys.stderr)
        return None


def trajectories_figure(profile: Profile, ok: pd.DataFrame, runs: Path, path: Path) -> Path | None:
    """Per group (row) the validation -ELBO, KL, MI and both AU counts against epoch (columns),
    one line per configuration: the mean over the seeds still training at that epoch (runs under
    the convergence protocol stop at different epochs), with a band from the lowest to the
    highest seed."""
    groups = list(dict.fromkeys(ok["group"])) if "group" in ok else [""]
    histories = {run: load_run(runs / run)[2] for run in ok["run"]}
    if not any(h is not None and "val_kl" in h for h in histories.values()):
        return None
    fig, axes = plt.subplots(len(groups), len(TRAJECTORIES), squeeze=False,
                             figsize=(3.6 * len(TRAJECTORIES), 2.9 * len(groups)))
    names = list(dict.fromkeys(lab.split(" / ")[-1] for lab in ok["label"]))
    color = _colors(names)
    for row, group in zip(axes, groups, strict=True):
        sub = ok[ok["group"] == group] if group else ok
        elbo = []  # the -ELBO values drawn in this row, to frame its axis
        for lab in dict.fromkeys(sub["label"]):
            hs = [histories[r] for r in sub.loc[sub["label"] == lab, "run"]]
            hs = [h for h in hs if h is not None and "val_kl" in h]
            if not hs:
                continue
            n = max(len(h) for h in hs)
            epochs = np.arange(1, n + 1)
            for ax, (col, title) in zip(row, TRAJECTORIES, strict=True):
                if not all(col in h for h in hs):
                    continue
                vals = _padded([h[col].to_numpy(dtype=float) for h in hs])
                if col == "val_neg_elbo":
                    elbo.append(vals)
                c = color[lab.split(" / ")[-1]]
                ax.plot(epochs, np.nanmean(vals, 0), color=c, label=lab.split(" / ")[-1], lw=1.3)
                ax.fill_between(epochs, np.nanmin(vals, 0), np.nanmax(vals, 0), color=c,
                                alpha=0.15, lw=0)
                ax.set(xlabel="epoch", title=f"{group + ': ' if group else ''}{title}")
        values = np.concatenate([v.ravel() for v in elbo]) if elbo else np.array([])
        values = values[np.isfinite(values)]
        if values.size:  # an autoencoder phase's -ELBO would squash every other curve
            low, high = values.min(), np.percentile(values, 90)
            row[0].set_ylim(low - 0.05 * (high - low) - 0.5, high + 0.5)
    axes[0, -1].legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    for ax in axes.ravel():
        ax.xaxis.get_major_locator().set_params(integer=True)
    bounds = [h["val_mutual_info_bound"].max() for h in histories.values()
              if h is not None and "val_mutual_info_bound" in h]
    for ax in axes[:, 1:3].ravel():  # KL and MI
        ax.set_yscale("symlog", linthresh=0.1)
    if bounds:  # a pooled MI cannot exceed log N: curves at the line are saturated
        for ax in axes[:, 2]:
            ax.axhline(max(bounds), color="0.4", ls="--", lw=0.8)
            ax.set_title(ax.get_title() + f" (dashed: bound log N = {max(bounds):.2f})",
                         fontsize=8)
    fig.suptitle(f"Collapse trajectories on the validation split ({profile.name}): mean over "
                 "seeds, band = min..max", fontsize=9)
    return _save(fig, path)
