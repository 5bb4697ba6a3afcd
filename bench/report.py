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

from .config import SUITE_VERSION
from .data import TEST_BINARIZATION_SEED
from .metrics import METRICS
from .results import read_json
from .suite import Profile, grid, runs_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAIN_COLUMNS = ["neg_elbo", "nll_is", "kl", "mutual_info", "active_units", "recon"]
TITLES = {"neg_elbo": "-ELBO", "nll_is": "NLL (IS)", "kl": "KL", "mutual_info": "MI",
          "active_units": "AU", "recon": "recon"}
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
        row = {"label": label, "variant": cfg.variant,
               "hparams": json.dumps(cfg.hparams, sort_keys=True), "dataset": cfg.dataset,
               "seed": cfg.seed, "run": path.name}
        if not (path / "metrics.json").exists():
            rows.append({**row, "status": "missing"})
            continue
        metrics = read_json(path / "metrics.json")
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
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


def main_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: seeds finished, and mean ± sd over seeds of the main metrics."""
    ok = summary[summary["status"] == "ok"]
    out = []
    for label in dict.fromkeys(summary["label"]):
        rows = ok[ok["label"] == label]
        first = summary[summary["label"] == label].iloc[0]
        rec = {"configuration": label, "variant": first["variant"],
               "seeds": f"{len(rows)}/{(summary['label'] == label).sum()}"}
        for col in MAIN_COLUMNS:
            vals = rows[col].astype(float) if col in rows else pd.Series(dtype=float)
            digits = 1 if col == "active_units" else 2
            rec[TITLES[col] + _arrow(col)] = _fmt(vals.mean(), vals.std(ddof=1), digits)
        out.append(rec)
    return pd.DataFrame(out)


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
    cmap = plt.get_cmap("tab10")
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


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

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for lab in labels:
        r = ok[ok["label"] == lab]
        ax.scatter(r["kl"], r["recon"], color=color[lab], label=lab, s=25)
    ax.set(xlabel="rate: KL (nats)", ylabel="distortion: -E_q log p(x|z) (nats)",
           title=f"Rate-distortion plane ({profile.name}), one point per run")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "rate_distortion.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    au = [ok.loc[ok["label"] == lab, "active_units"].astype(float) for lab in labels]
    ax.bar(labels, [a.mean() for a in au], yerr=[a.std(ddof=1) if len(a) > 1 else 0 for a in au],
           color=[color[lab] for lab in labels])
    ax.set(ylabel="active units", title="Active units per configuration (mean ± sd over seeds)")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    paths.append(_save(fig, out / "active_units.png"))

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


# ---- throughput ----------------------------------------------------------------------------
def throughput_section(results: Path) -> str:
    """CPU and GPU columns from results/throughput/{cpu,cuda}.json ("n/a" where absent)."""
    found = {dev: read_json(results / "throughput" / f"{dev}.json")
             for dev in ("cpu", "cuda") if (results / "throughput" / f"{dev}.json").exists()}
    if not found:
        return "No throughput measured yet: run `vae-bench throughput`."
    names = list(dict.fromkeys(r["variant"] for t in found.values() for r in t["train"]))

    def cell(dev: str, name: str) -> str:
        rows = [r for r in found.get(dev, {}).get("train", []) if r["variant"] == name]
        if not rows:
            return "n/a"
        r = rows[0]
        same = r.get("ratio_same_optimizer")
        same = "" if same is None else f", {same:.2f}× with the same optimizer"
        fast = (f"; fast mode {r['fast_samples_per_s']:,.0f}/s = {r['fast_over_eager']:.2f}× eager"
                if "fast_over_eager" in r else "")
        return (f"{r['samples_per_s']:,.0f}/s ({r['ratio_to_baseline']:.2f}× hand-written{same}, "
                f"{r['fraction_of_peak']:.0%} of peak{fast})")

    table = pd.DataFrame([{"train step (batch 100)": n, "CPU": cell("cpu", n),
                           "GPU": cell("cuda", n)} for n in names])

    def eval_cell(dev: str) -> str:
        ev = found.get(dev, {}).get("eval")
        if not ev:
            return "n/a"
        return (f"{ev['samples_per_s']:,.0f} point-samples/s, {ev['fraction_of_peak']:.0%} of "
                f"peak; memory +{ev['memory_growth']:.0%} from K={ev['k']} to {10 * ev['k']}")

    table.loc[len(table)] = {"train step (batch 100)": "IS evaluation", "CPU": eval_cell("cpu"),
                             "GPU": eval_cell("cuda")}
    hw = "; ".join(f"{dev}: {t['env'].get('cuda_device') or t['env']['cpu_capability']}, "
                   f"{t['env']['threads']} threads, torch {t['env']['torch']}, measured matmul "
                   f"peak {t['matmul_peak_gflops']:.0f} GFLOP/s" for dev, t in found.items())
    return (f"{_markdown(table)}\n\nMeasured by `vae-bench throughput` ({hw}). Ratios are "
            "medians of interleaved repeats in one process. \"hand-written\" is a minimal "
            "PyTorch loop with the default Adam; \"the same optimizer\" is that loop with the "
            "fused Adam that training uses, so it isolates the harness's own cost. Peak is the "
            "fp32 matmul rate measured in the same process (for IS evaluation, in each round "
            "next to the evaluator).")


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
    commits = sorted({_load_run(runs_dir(results, profile) / r)[3].get("git_commit") or "?"
                      for r in ok["run"]})
    return {"config": config, "env": env, "commits": commits}


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
        f"- dataset: `{cfg.get('dataset')}`; model: {model.get('hidden')} {model.get('activation')}"
        f", z = {model.get('latent_dim')} (categorical variants: their own latent); batch "
        f"{train.get('batch_size')}, Adam lr {train.get('lr')}, {train.get('epochs')} epochs, "
        f"dtype {cfg.get('dtype')}",
        f"- evaluation: test split; NLL by importance sampling with K = {ev.get('is_samples')} "
        f"samples from q (eval seed {ev.get('seed')}); -ELBO with the analytic KL, "
        f"{ev.get('elbo_samples')} sample(s)",
        "- binarization: training images dynamically binarized each epoch from the run's seeded "
        f"stream; test images binarized once (seed {TEST_BINARIZATION_SEED}), sha256 "
        f"`{digests.get('test_binarized', 'n/a')}`",
        f"- budget: {profile.budget}; measured compute (train + eval, summed over runs): "
        f"{wall / 60:.1f} min",
        f"- environment: Python {env.get('python')}, torch {env.get('torch')}, numpy "
        f"{env.get('numpy')}, {env.get('cpu_capability')} CPU, {env.get('threads')} threads, "
        f"device {env.get('device')}; commits {', '.join(c[:10] for c in info.get('commits', []))}",
        "",
        "## Main table (mean ± sd over seeds; ↑ higher is better, ↓ lower is better)",
        "",
        _markdown(main_table(summary)),
        "",
        "All values in nats per test image. -ELBO is always the unmodified ELBO, whatever the "
        "variant optimizes. AU: units with Var_x E_q[z|x] > 0.01 (for categorical variables, the "
        "summed variance of their class probabilities). MI: I_q(x; z) with the aggregate posterior "
        "pooled over the test split.",
    ]
    bad = summary[summary["status"] != "ok"]
    if not bad.empty:
        cols = [c for c in ("label", "seed", "status", "diverged_step", "error") if c in bad]
        lines += ["", "## Runs that did not finish", "", _markdown(bad[cols].astype(object).fillna(""))]
    pub = published_table(profile, summary)
    if not pub.empty:
        lines += ["", "## Published numbers beside ours", "", _markdown(pub), "",
                  "Protocols differ where the table says so; a gap is expected where ours trains "
                  "for minutes and theirs for days."]
    lines += ["", "## Throughput", "", throughput_section(Path(results))]
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(reports).as_posix()})" for p in figure_paths]
    return "\n".join(lines) + "\n"


def write_report(profile: Profile, results: Path, reports: Path) -> list[Path]:
    summary = summarize(profile, results)
    reports.mkdir(parents=True, exist_ok=True)
    summary_path = Path(results) / profile.name / "summary.csv"
    summary.to_csv(summary_path, index=False, float_format="%.10g")
    table = main_table(summary)
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
                      "active_units", "mutual_info", "mutual_info_se"]


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
