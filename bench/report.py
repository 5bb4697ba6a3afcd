"""Reports: a pure function of a profile's run records.

``summarize`` reads every run of the grid into one tidy DataFrame (one row per run);
``main_table`` aggregates it per configuration (mean ± sd over seeds); ``write_report`` writes
``results/P/summary.csv``, ``reports/P.md`` / ``.csv`` / ``.tex`` and the figures in
``reports/P/``. Nothing here trains, evaluates or reads the clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from variants.base import ConfigError

from .config import SUITE_VERSION
from .data import TEST_BINARIZATION_SEED
from .metrics import METRICS
from .results import read_json
from .suite import Profile, grid, group_of, runs_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAIN_COLUMNS = ["neg_elbo", "nll_is", "kl", "mutual_info", "active_units",
                "active_units_strict", "recon"]
TITLES = {"neg_elbo": "-ELBO", "nll_is": "NLL (IS)", "kl": "KL", "mutual_info": "MI",
          "active_units": "AU", "active_units_strict": "AU strict", "recon": "recon"}
#: per-epoch validation diagnostics drawn as collapse trajectories (history.csv columns)
TRAJECTORIES = [("val_kl", "KL (nats)"), ("val_mutual_info", "MI (nats)"),
                ("val_active_units", "AU (δ = 0.01)"), ("val_active_units_strict", "AU (δ = 0.1)")]
PRINTED = "%.10g"  # the float format of summary.csv
TIMING = ["train_samples_per_s", "train_seconds", "eval_seconds", "wall_seconds"]


def _load_run(path: Path) -> tuple[dict, dict, pd.DataFrame | None, dict]:
    metrics = read_json(path / "metrics.json")
    config = read_json(path / "config.json")
    hist = path / "history.csv"
    history = pd.read_csv(hist) if hist.exists() and hist.stat().st_size else None
    env = read_json(path / "env.json") if (path / "env.json").exists() else {}
    return metrics, config, history, env


def summarize(profile: Profile, results: Path) -> pd.DataFrame:
    """One row per grid point: identity, status, every scalar metric and its SE, timings."""
    from .runner import run_name

    rows = []
    for label, cfg in grid(profile):
        path = runs_dir(results, profile) / run_name(cfg)
        row = {"label": label, "group": group_of(label), "variant": cfg.variant,
               "hparams": json.dumps(cfg.hparams, sort_keys=True), "dataset": cfg.dataset,
               "seed": cfg.seed, "run": path.name}
        if not (path / "metrics.json").exists():
            rows.append({**row, "status": "missing"})
            continue
        metrics = read_json(path / "metrics.json")
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        if "active_units_by_layer" in metrics:  # stochastic layers: "layer1+layer2"
            scalars["active_units_by_layer"] = "+".join(map(str, metrics["active_units_by_layer"]))
        scalars.pop("traceback", None)
        scalars["wall_seconds"] = scalars.get("train_seconds", 0) + scalars.get("eval_seconds", 0)
        rows.append({**row, **scalars})
    return pd.DataFrame(rows)


def _fmt(mean: float, sd: float, digits: int) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if not np.isnan(sd) else f"{mean:.{digits}f}"


def _arrow(metric: str) -> str:
    m = METRICS.get(metric)
    return "" if m is None or m.higher_is_better is None else (" ↑" if m.higher_is_better else " ↓")


def _name(label: str) -> str:
    """The configuration part of a "group / configuration" label."""
    return label.split(" / ")[-1]


def main_table(summary: pd.DataFrame, baseline: str = "") -> pd.DataFrame:
    """Per configuration: seeds finished, and mean ± sd over seeds of the main metrics; with a
    ``baseline`` configuration, the cost: mean training seconds relative to the baseline's (in
    the same group), as measured, with the range of the seed-by-seed ratios in brackets."""
    ok = summary[summary["status"] == "ok"]
    base = ok[ok["label"].map(_name) == baseline]
    base_seconds = base["train_seconds"].astype(float).mean() if len(base) else np.nan
    base_by_seed = base.set_index("seed")["train_seconds"].astype(float)
    out = []
    for label in dict.fromkeys(summary["label"]):
        rows = ok[ok["label"] == label]
        first = summary[summary["label"] == label].iloc[0]
        rec = {"configuration": _name(label), "variant": first["variant"],
               "seeds": f"{len(rows)}/{(summary['label'] == label).sum()}"}
        for col in MAIN_COLUMNS:
            vals = rows[col].astype(float) if col in rows else pd.Series(dtype=float)
            digits = 1 if col.startswith("active_units") else 2
            rec[TITLES[col] + _arrow(col)] = _fmt(vals.mean(), vals.std(ddof=1), digits)
            if col == "active_units" and "active_units_by_layer" in summary:
                rec["AU by layer"] = _by_layer(rows["active_units_by_layer"])
        if baseline:  # mean over mean, then the range of the seed-by-seed ratios
            cost = rows["train_seconds"].astype(float).mean() / base_seconds if len(rows) \
                else np.nan
            per_seed = (rows.set_index("seed")["train_seconds"].astype(float)
                        / base_by_seed).dropna()
            spread = f" ({per_seed.min():.2f}–{per_seed.max():.2f})" if len(per_seed) > 1 else ""
            rec[f"cost (x {baseline})"] = "n/a" if np.isnan(cost) else f"{cost:.2f}{spread}"
        out.append(rec)
    return pd.DataFrame(out)


def _by_layer(values: pd.Series) -> str:
    """Mean over seeds of the active units of each stochastic layer, "layer1+layer2" as Burda
    et al. 2016 report them; "-" for a model with one stochastic layer."""
    parts = [[int(v) for v in s.split("+")] for s in values.dropna().astype(str)]
    if not parts:
        return "-"
    return "+".join(f"{np.mean(layer):.1f}" for layer in zip(*parts, strict=True))


#: metrics of the paired comparison, and whether a positive difference is an improvement
PAIRED = [("nll_is", "NLL"), ("kl", "KL"), ("mutual_info", "MI")]


def paired_differences(summary: pd.DataFrame, reference: str) -> dict[str, dict]:
    """Per configuration (not the reference): for each metric of ``PAIRED``, the differences
    configuration - reference over the seeds both finished, their mean, and the half-width of
    the 95 % t interval (n - 1 degrees of freedom): {name: {metric: (mean, half, n)}}."""
    from scipy import stats

    ok = summary[summary["status"] == "ok"]
    ref = ok[ok["label"].map(_name) == reference].set_index("seed")
    out = {}
    for label in dict.fromkeys(ok["label"]):
        if _name(label) == reference or ref.empty:
            continue
        rows = ok[ok["label"] == label].set_index("seed")
        seeds = sorted(set(rows.index) & set(ref.index))
        rec = {}
        for col, _ in PAIRED:
            d = (rows.loc[seeds, col].astype(float) - ref.loc[seeds, col].astype(float)).to_numpy()
            n = len(d)
            half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
            rec[col] = (d.mean() if n else np.nan, half, n)
        out[_name(label)] = rec
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


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def reading(summary: pd.DataFrame, baseline: str, floor: str) -> str:
    """A short reading of one group's numbers, generated from them: whether the baseline
    collapsed, which configurations kept KL above 1 nat, which beat the decoder alone on NLL
    (paired 95 % interval below 0), the best NLL and the most expensive method."""
    ok = summary[summary["status"] == "ok"]
    if ok.empty:
        return ""
    mean = ok.groupby(ok["label"].map(_name), sort=False)[["kl", "mutual_info", "nll_is",
                                                           "train_seconds"]].mean()
    latent = [n for n in mean.index if n != floor]
    parts = []
    if baseline in mean.index:
        b = mean.loc[baseline]
        state = "collapsed (KL below 1 nat)" if b["kl"] < 1 else "did not collapse"
        parts.append(f"The plain `{baseline}` {state}: KL {b['kl']:.2f}, MI {b['mutual_info']:.2f} "
                     "nats.")
    kept = [n for n in latent if mean.loc[n, "kl"] >= 1]
    lost = [n for n in latent if mean.loc[n, "kl"] < 1]
    parts.append(f"KL above 1 nat: {_names(kept)}; below: {_names(lost)}.")
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
        parts.append(f"Most expensive: {top}, {cost[top]:.1f}x the training time of `{baseline}`.")
    return " ".join(parts)


def published_table(profile: Profile, summary: pd.DataFrame) -> pd.DataFrame:
    ok = summary[summary["status"] == "ok"]
    rows = []
    for pub in profile.published:
        vals = ok.loc[ok["label"] == pub["label"], pub["metric"]].astype(float)
        rows.append({"configuration": pub["label"], "metric": TITLES.get(pub["metric"],
                                                                          pub["metric"]),
                     "ours": _fmt(vals.mean(), vals.std(ddof=1), 2), "published": pub["value"],
                     "source": pub["source"], "their protocol": pub["protocol"]})
    return pd.DataFrame(rows)


# ---- figures --------------------------------------------------------------------------------
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


def figures(profile: Profile, summary: pd.DataFrame, results: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    ok = summary[summary["status"] == "ok"]
    labels = list(dict.fromkeys(summary["label"]))
    color = _colors(labels)
    runs = runs_dir(results, profile)
    paths = []

    groups = list(dict.fromkeys(summary["group"])) if "group" in summary else [""]
    names = list(dict.fromkeys(_name(lab) for lab in labels))
    name_color = _colors(names)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        sub = ok[ok["group"] == group] if group else ok
        for lab in dict.fromkeys(sub["label"]):
            r = sub[sub["label"] == lab]
            ax.scatter(r["kl"], r["recon"], color=name_color[_name(lab)], label=_name(lab), s=25)
        ax.set(xlabel="rate: KL (nats)", ylabel="distortion: -E_q log p(x|z) (nats)",
               title=f"Rate-distortion plane{': ' + group if group else ''}, one point per run")
        ax.set_xscale("symlog", linthresh=1.0)
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
            metrics, _, history, _ = _load_run(runs / run)
            kls.append(np.sort(metrics["kl_per_dim"])[::-1])
            if history is not None:
                curves.append(history["neg_elbo"].to_numpy())
        if kls:
            ax_kl.plot(np.arange(1, len(kls[0]) + 1), np.mean(kls, 0), color=color[lab],
                       label=lab)
        if curves:
            ax_curve.plot(np.arange(1, len(curves[0]) + 1), np.mean(curves, 0),
                          color=color[lab], label=lab)
    ax_kl.set(yscale="log", xlabel="latent unit (sorted)", ylabel="KL per unit (nats)",
              title="Sorted KL per unit: the collapse picture")
    ax_curve.set(xlabel="epoch", ylabel="training -ELBO (nats)", title="Training curves")
    ax_kl.legend(fontsize=7)
    paths.append(_save(fig, out / "kl_profile_and_training.png"))

    previews = [(lab, runs / ok.loc[ok["label"] == lab, "run"].iloc[0] / "previews.npz")
                for lab in labels if (ok["label"] == lab).any()]
    previews = [(lab, p) for lab, p in previews if p.exists()]
    if previews:
        fig, axes = plt.subplots(len(previews), 1, figsize=(8, 1.1 * len(previews) + 0.5),
                                 squeeze=False)
        for ax, (lab, p) in zip(axes[:, 0], previews, strict=True):
            z = np.load(p)
            rows = [np.concatenate(list(z[k]), axis=1) for k in ("data", "recon", "samples")]
            ax.imshow(np.concatenate(rows, axis=1), cmap="gray", vmin=0, vmax=255)
            ax.set_axis_off()
            ax.set_title(f"{lab}: data | reconstructions | prior samples", fontsize=7)
        paths.append(_save(fig, out / "reconstructions_and_samples.png"))
    return paths


def trajectories_figure(profile: Profile, ok: pd.DataFrame, runs: Path, path: Path) -> Path | None:
    """Per group (row) the validation KL, MI and both AU counts against epoch (columns), one line
    per configuration: the mean over seeds, with a band from the lowest to the highest seed."""
    groups = list(dict.fromkeys(ok["group"])) if "group" in ok else [""]
    histories = {run: _load_run(runs / run)[2] for run in ok["run"]}
    if not any(h is not None and "val_kl" in h for h in histories.values()):
        return None
    fig, axes = plt.subplots(len(groups), len(TRAJECTORIES), squeeze=False,
                             figsize=(3.6 * len(TRAJECTORIES), 2.9 * len(groups)))
    names = list(dict.fromkeys(lab.split(" / ")[-1] for lab in ok["label"]))
    color = _colors(names)
    for row, group in zip(axes, groups, strict=True):
        sub = ok[ok["group"] == group] if group else ok
        for lab in dict.fromkeys(sub["label"]):
            hs = [histories[r] for r in sub.loc[sub["label"] == lab, "run"]]
            hs = [h for h in hs if h is not None and "val_kl" in h]
            if not hs:
                continue
            n = min(len(h) for h in hs)
            epochs = hs[0]["epoch"].to_numpy()[:n]
            for ax, (col, title) in zip(row, TRAJECTORIES, strict=True):
                vals = np.stack([h[col].to_numpy(dtype=float)[:n] for h in hs])
                c = color[lab.split(" / ")[-1]]
                ax.plot(epochs, vals.mean(0), color=c, label=lab.split(" / ")[-1], lw=1.3)
                ax.fill_between(epochs, vals.min(0), vals.max(0), color=c, alpha=0.15, lw=0)
                ax.set(xlabel="epoch", title=f"{group + ': ' if group else ''}{title}")
    axes[0, -1].legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    for ax in axes.ravel():
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[:, :2].ravel():
        ax.set_yscale("symlog", linthresh=0.1)
    fig.suptitle(f"Collapse trajectories on the validation split ({profile.name}): mean over "
                 "seeds, band = min..max", fontsize=9)
    return _save(fig, path)


# ---- throughput ----------------------------------------------------------------------------
def _train_cell(result: dict | None, name: str) -> str:
    rows = [r for r in (result or {}).get("train", []) if r["variant"] == name]
    if not rows:
        return "n/a"
    r = rows[0]
    same = r.get("ratio_same_optimizer")
    same = "" if same is None else f", {same:.2f}× with the same optimizer"
    fast = (f"; fast mode {r['fast_samples_per_s']:,.0f}/s = {r['fast_over_eager']:.2f}× eager"
            if "fast_over_eager" in r else "")
    return (f"{r['samples_per_s']:,.0f}/s ({r['ratio_to_baseline']:.2f}× hand-written{same}, "
            f"{r['fraction_of_peak']:.0%} of peak{fast})")


def _eval_cell(result: dict | None) -> str:
    ev = (result or {}).get("eval")
    if not ev:
        return "n/a"
    memory = (f"; memory +{ev['memory_growth']:.0%} from K={ev['k']} to {10 * ev['k']}"
              if "memory_growth" in ev else "")
    return (f"{ev['samples_per_s']:,.0f} point-samples/s, {ev['fraction_of_peak']:.0%} of "
            f"{ev.get('peak', 'matmul')} peak{memory}")


def throughput_section(results: Path) -> str:
    """CPU and GPU columns from results/throughput/{cpu,cuda}[-DECODER].json ("n/a" where
    absent): every variant with the MLP decoder, then the other decoder families."""
    def load(dev: str, suffix: str) -> dict | None:
        path = results / "throughput" / f"{dev}{suffix}.json"
        return read_json(path) if path.exists() else None

    found = {dev: t for dev in ("cpu", "cuda") if (t := load(dev, ""))}
    if not found:
        return "No throughput measured yet: run `vae-bench throughput`."
    rows = []
    for decoder, suffix in (("", ""), ("made", "-made"), ("pixelcnn", "-pixelcnn")):
        by_dev = {dev: load(dev, suffix) for dev in ("cpu", "cuda")}
        present = [t for t in by_dev.values() if t]
        if not present:
            continue
        tag = f", {decoder} decoder" if decoder else ""
        for name in dict.fromkeys(r["variant"] for t in present for r in t["train"]):
            rows.append({"train step (batch 100)": f"{name}{tag}",
                         "CPU": _train_cell(by_dev["cpu"], name),
                         "GPU": _train_cell(by_dev["cuda"], name)})
        rows.append({"train step (batch 100)": f"IS evaluation{tag}",
                     "CPU": _eval_cell(by_dev["cpu"]), "GPU": _eval_cell(by_dev["cuda"])})
    table = pd.DataFrame(rows)
    hw = "; ".join(f"{dev}: {t['env'].get('cuda_device') or t['env']['cpu_capability']}, "
                   f"{t['env']['threads']} threads, torch {t['env']['torch']}, measured matmul "
                   f"peak {t['matmul_peak_gflops']:.0f} GFLOP/s" for dev, t in found.items())
    return (f"{_markdown(table)}\n\nMeasured by `vae-bench throughput` ({hw}). Ratios are "
            "medians of interleaved repeats in one process. \"hand-written\" is a minimal "
            "PyTorch loop with the default Adam; \"the same optimizer\" is that loop with the "
            "fused Adam that training uses, so it isolates the harness's own cost. Peak is the "
            "fp32 matmul rate measured in the same process (for IS evaluation, in each round "
            "next to the evaluator). Other decoders (`vae-bench throughput --decoder made|"
            "pixelcnn`, the plain VAE): for MADE (one masked hidden layer of 500, direct "
            "connections) the hand-written loop is an independent masked MLP of the same "
            "architecture; for the PixelCNN (3 gated layers x 16 channels, k = 3) it is the "
            "minimal loop around the same decoder module, and its peak is a 3x3 convolution's "
            "(64 -> 64 channels, 28x28).")


# ---- the report -----------------------------------------------------------------------------
def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _environment(profile: Profile, summary: pd.DataFrame, results: Path) -> dict:
    ok = summary[summary["status"] == "ok"]
    if ok.empty:
        return {}
    _, config, _, env = _load_run(runs_dir(results, profile) / ok["run"].iloc[0])
    envs = [_load_run(runs_dir(results, profile) / r)[3] for r in ok["run"]]
    commits = sorted({e.get("git_commit") or "?" for e in envs})
    dirty = sum(bool(e.get("git_dirty")) for e in envs)
    return {"config": config, "env": env, "commits": commits, "dirty": dirty}


def _machine(env: dict) -> str:
    """The CPU model and math libraries, where the runs recorded them."""
    if not env.get("cpu_model"):
        return ""
    libs = ", ".join(x for x in (f"torch BLAS {env.get('torch_blas')}",
                                 *env.get("torch_parallel", []),
                                 f"numpy BLAS {env.get('numpy_blas')}") if x)
    mode = env.get("numerics", "native (recorded before the numerics key)")
    if env.get("numerics") == "portable":
        mode += (f": MKL_CBWR={env.get('env', {}).get('MKL_CBWR')}, ATen "
                 f"{env.get('aten_cpu_capability')}, oneDNN "
                 f"{'on' if env.get('mkldnn_enabled') else 'off'}, {env.get('threads')} threads")
    return f" ({env['cpu_model']}; {libs}; numerics {mode})"


def _dirty(info: dict) -> str:
    n = info.get("dirty", 0)
    return f" ({n} runs from a checkout with uncommitted changes)" if n else ""


def _decoder_text(profile: Profile, model: dict) -> str:
    if any(k.startswith("model.") for g in profile.groups for k in g):
        return "decoder per setting (below)"
    return f"decoder `{model.get('decoder', 'mlp')}` {model.get('decoder_hidden')}"


def _clip(train: dict) -> str:
    clip = train.get("clip")
    if clip is None:
        return "no gradient clipping (recorded before train.clip)"
    return f"gradient norm clipped at {clip:g}" if clip else "no gradient clipping"


def _train_points(train: dict) -> str:
    n = train.get("train_points")
    return f" on the first {n} points of the training split" if n else ""


def _test_split(ev: dict) -> str:
    n = ev.get("test_points")
    return f"the first {n} points of the test split" if n else "the whole test split"


def _group_lines(profile: Profile) -> list[str]:
    if not profile.groups:
        return []
    return ["- settings (groups; each crosses every configuration): " + "; ".join(
        f"**{g['name']}**: " + ", ".join(f"{k} = {v}" for k, v in g.items() if k != "name")
        for g in profile.groups)]


def _main_tables(summary: pd.DataFrame, profile: Profile) -> list[str]:
    groups = [g for g in dict.fromkeys(summary.get("group", pd.Series(dtype=str))) if g]
    out = []
    for g in groups or [None]:
        sub = summary if g is None else summary[summary["group"] == g]
        out += ([f"### {g}", ""] if g else []) + [_markdown(main_table(sub, profile.baseline)),
                                                 ""]
        if profile.baseline:
            out += [f"cost: training seconds (validation diagnostics and evaluation excluded) "
                    f"relative to `{profile.baseline}`, mean over mean, and in brackets the range "
                    "of the seed-by-seed ratios; runs that train for a few seconds vary by tens "
                    "of percent on a shared machine.", ""]
            paired = paired_table(sub, profile.baseline)
            if not paired.empty:
                out += [f"Paired with `{profile.baseline}` of the same seed"
                        f"{' and setting' if g else ''}: mean difference over seeds [95 % t "
                        "interval]; * where it excludes 0 (NLL: negative is better; KL, MI: "
                        "positive is more use of the latent).", "", _markdown(paired), ""]
            text = reading(sub, profile.baseline, profile.floor)
            if text:
                out += [f"**Reading{' ' + g if g else ''}** (generated from the numbers): {text}", ""]
    return out


#: history columns of the by-stage table: (column, title, decimals)
STAGE_COLUMNS = [("neg_elbo", "train -ELBO", 2), ("val_neg_elbo", "val -ELBO", 2),
                 ("val_kl", "val KL", 2), ("val_mutual_info", "val MI", 2),
                 ("val_active_units", "val AU", 1)]


def stage_table(profile: Profile, summary: pd.DataFrame, results: Path) -> pd.DataFrame:
    """Per configuration and learning-rate stage (a run of epochs at one ``lr`` in history.csv,
    e.g. Burda et al.'s schedule): the last epoch's training -ELBO and validation diagnostics,
    mean over the seeds that reached it. Empty when no run changed its learning rate."""
    ok = summary[summary["status"] == "ok"]
    rows = []
    for label in dict.fromkeys(ok["label"]):
        ends: dict[int, list[pd.Series]] = {}
        for run in ok.loc[ok["label"] == label, "run"]:
            history = _load_run(runs_dir(results, profile) / run)[2]
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
    return ["", f"## Reference: {ref['title']}", "", _markdown(table), "", ref.get("note", "")]


def _mi_bound(summary: pd.DataFrame) -> str:
    if "mutual_info_bound" not in summary:
        return ""
    bound = summary["mutual_info_bound"].dropna().astype(float)
    return "" if bound.empty else (f": no estimate pooled over N points exceeds log N = "
                                   f"{bound.max():.2f} nats, so MI near it is saturated")


def render(profile: Profile, summary: pd.DataFrame, results: Path, figure_paths: list[Path],
           reports: Path) -> str:
    info = _environment(profile, summary, results)
    env, cfg = info.get("env", {}), info.get("config", {})
    digests = env.get("dataset_digests", {})
    wall = summary.get("wall_seconds", pd.Series(dtype=float)).astype(float).sum()
    model, train, ev = cfg.get("model", {}), cfg.get("train", {}), cfg.get("eval", {})
    lines = [
        f"# vae-bench report: `{profile.name}`",
        "",
        f"{profile.description}. Generated by `vae-bench report --profile {profile.name}` from "
        f"the run records in `results/{profile.name}/runs/`; do not edit by hand.",
        "",
        f"- suite version: {SUITE_VERSION}; runs: {len(summary)} "
        f"({(summary['status'] == 'ok').sum()} ok); seeds: {list(profile.seeds)}",
        f"- dataset: `{cfg.get('dataset')}`; model: encoder {model.get('hidden')} "
        f"{model.get('activation')}, z = {model.get('latent_dim')} (categorical variants: their "
        f"own latent), {_decoder_text(profile, model)}; batch "
        f"{train.get('batch_size')}, Adam lr {train.get('lr')}, "
        f"{_clip(train)}, {train.get('epochs')} epochs"
        f"{_train_points(train)}, "
        f"dtype {cfg.get('dtype')}",
        f"- evaluation: {_test_split(ev)}; NLL by importance sampling with K = {ev.get('is_samples')} "
        f"samples from q (eval seed {ev.get('seed')}); -ELBO with the analytic KL, "
        f"{ev.get('elbo_samples')} sample(s)",
        "- binarization: training images dynamically binarized each epoch from the run's seeded "
        f"stream; test images binarized once (seed {TEST_BINARIZATION_SEED}), sha256 "
        f"`{digests.get('test_binarized', 'n/a')}`",
        f"- validation: {train.get('validation_size')} points held out of the training split "
        f"(sha256 `{digests.get('validation', 'n/a')}`), diagnosed at every epoch end",
        f"- budget: {profile.budget}; measured compute (train + eval, summed over runs): "
        f"{wall / 60:.1f} min",
        f"- environment: Python {env.get('python')}, torch {env.get('torch')}, numpy "
        f"{env.get('numpy')}, {env.get('cpu_capability')} CPU{_machine(env)}, "
        f"{env.get('threads')} threads, device {env.get('device')}; commits "
        f"{', '.join(c[:10] for c in info.get('commits', []))}{_dirty(info)}",
        *_group_lines(profile),
        "",
        "## Main table (mean ± sd over seeds; ↑ higher is better, ↓ lower is better)",
        "",
        *_main_tables(summary, profile),
        "All values in nats per test image. -ELBO is always the unmodified ELBO, whatever the "
        "variant optimizes. AU: units with Var_x E_q[z|x] > 0.01 (Burda et al. 2016; for "
        "categorical variables, the summed variance of their class probabilities); AU strict: the "
        "same statistic > 0.1, which a collapsed encoder's wobbling means do not clear. MI: "
        f"I_q(x; z) with the aggregate posterior pooled over the test split{_mi_bound(summary)}.",
    ]
    bad = summary[summary["status"] != "ok"]
    if not bad.empty:
        cols = [c for c in ("label", "seed", "status", "diverged_step", "error") if c in bad]
        lines += ["", "## Runs that did not finish", "", _markdown(bad[cols].astype(object).fillna(""))]
    stages = stage_table(profile, summary, Path(results))
    if not stages.empty:
        lines += ["", "## By learning-rate stage", "", _markdown(stages), "",
                  "The last epoch of each stage of constant learning rate (history.csv): training "
                  "-ELBO over the epoch, and the diagnostics of the validation split at its end "
                  "(mean ± sd over seeds). The test NLL is measured once, after the last epoch."]
    pub = published_table(profile, summary)
    if not pub.empty:
        lines += ["", "## Published numbers beside ours", "", _markdown(pub), "",
                  "Protocols differ where the table says so; a gap is expected where ours trains "
                  "for minutes and theirs for days."]
    lines += reference_section(profile)
    lines += ["", "## Throughput", "", throughput_section(Path(results))]
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(reports).as_posix()})" for p in figure_paths]
    return "\n".join(lines) + "\n"


def write_report(profile: Profile, results: Path, reports: Path) -> list[Path]:
    summary = summarize(profile, results)
    if (summary["status"] == "missing").all():
        raise ConfigError(f"no runs of profile {profile.name!r} under "
                          f"{runs_dir(results, profile)}; run them first: vae-bench suite "
                          f"--profile {profile.name} --results {results} (or make bench "
                          f"PROFILE={profile.name})")
    reports.mkdir(parents=True, exist_ok=True)
    summary_path = Path(results) / profile.name / "summary.csv"
    summary.to_csv(summary_path, index=False, float_format=PRINTED)
    table = main_table(summary, profile.baseline)
    if "group" in summary and summary["group"].astype(bool).any():
        table.insert(0, "setting", summary.drop_duplicates("label")["group"].to_numpy())
    figs = figures(profile, summary, results, reports / profile.name)
    md = reports / f"{profile.name}.md"
    md.write_text(render(profile, summary, results, figs, reports))
    table.to_csv(reports / f"{profile.name}.csv", index=False)
    (reports / f"{profile.name}.tex").write_text(
        table.to_latex(index=False).replace("±", r"$\pm$").replace("↑", r"$\uparrow$")
        .replace("↓", r"$\downarrow$"))
    return [summary_path, md, reports / f"{profile.name}.csv", reports / f"{profile.name}.tex",
            *figs]


# ---- regression of the numbers --------------------------------------------------------------
REGRESSION_COLUMNS = ["neg_elbo", "neg_elbo_se", "recon", "kl", "nll_is", "nll_is_se", "ess",
                      "active_units", "active_units_strict", "mutual_info", "mutual_info_se"]


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
