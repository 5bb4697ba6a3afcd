"""The report itself: ``reports/P.md`` (header of protocol and environment, the tables per
setting, the paired comparison and its reading, stages, published numbers, throughput,
figures) and its ``.csv`` / ``.tex`` twins, written from the run records alone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from variants.errors import ConfigError

from ..config import SUITE_VERSION
from ..data.builtin import TEST_BINARIZATION_SEED
from ..grid.profile import grid
from ..grid.suite import Profile, runs_dir
from . import generator, posterior_space
from .compute import compute_section
from .control import control_section
from .estimators import estimator_section
from .figures import figures
from .paired import paired_table, reading
from .records import PRINTED, load_run, summarize
from .screening import screening_reading, screening_table
from .tables import config_name, main_table, markdown, published_table, reference_section, stage_table
from .timing import throughput_section
from .verdicts import verdict_lines


def _environment(profile: Profile, summary: pd.DataFrame, results: Path) -> dict:
    ok = summary[summary["status"] == "ok"]
    if ok.empty:
        return {}
    _, config, _, env = load_run(runs_dir(results, profile) / ok["run"].iloc[0])
    envs = [load_run(runs_dir(results, profile) / r)[3] for r in ok["run"]]
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
    if model.get("decoder") == "lstm":
        return (f"decoder `lstm` ({model.get('lstm_layers', 1)} layer(s), embeddings "
                f"{model.get('embedding_dim')}, {model.get('lstm_hidden')} units, dropout "
                f"{model.get('dropout', 0.0):g}, word dropout {model.get('word_dropout', 0.0):g})")
    return f"decoder `{model.get('decoder', 'mlp')}` {model.get('decoder_hidden')}"


def _encoder_text(model: dict) -> str:
    if model.get("encoder") == "lstm":
        return f"encoder `lstm` ({model.get('lstm_hidden')} units)"
    return f"encoder {model.get('hidden')} {model.get('activation')}"


def _optimizer(train: dict, model: dict) -> str:
    name = "SGD" if train.get("optimizer") == "sgd" else "Adam"
    init = model.get("init", "default")
    return f"{name} lr {train.get('lr')}" + (f", init {init}" if init != "default" else "")


def _data_line(dataset: str, digests: dict) -> str:
    from ..data import likelihood

    try:
        kind = likelihood(dataset)
    except Exception:  # a dataset file no longer there: say what the records say
        kind = "bernoulli"
    if kind == "categorical":
        return "- data: token ids, used as they are (no binarization)"
    if kind == "gaussian":
        return "- data: continuous, used as they are (no binarization)"
    return ("- binarization: training images dynamically binarized each epoch from the run's "
            f"seeded stream; test images binarized once (seed {TEST_BINARIZATION_SEED}), sha256 "
            f"`{digests.get('test_binarized', 'n/a')}`")


def _clip(train: dict) -> str:
    clip = train.get("clip")
    if clip is None:
        return "no gradient clipping (recorded before train.clip)"
    return f"gradient norm clipped at {clip:g}" if clip else "no gradient clipping"


def _protocol(train: dict, profile: Profile) -> str:
    monitor = train.get("monitor", "val_neg_elbo")
    parts = [f"cap {train.get('epochs')} epochs"]
    if train.get("stop_patience"):
        parts.append(f"early stopping after {train['stop_patience']} epochs without a new best "
                     f"{monitor}")
    if train.get("lr_decay_patience"):
        parts.append(f"lr x {train.get('lr_decay')} after {train['lr_decay_patience']} epochs "
                     f"worse than the best {monitor}, stop at "
                     f"{train.get('max_decays') or 'no limit of'} decays")
    own = [c["label"] for c in profile.configs
           if c.get("train.monitor", monitor) != monitor]
    if own:
        parts.append(f"{', '.join(own)} watching {'its' if len(own) == 1 else 'their'} own "
                     "training objective on the "
                     "validation split instead (val_loss; see the profile)")
    return "; ".join(parts)


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
        table = main_table(sub, profile.baseline, profile.columns)
        out += ([f"### {g}", ""] if g else []) + [markdown(table), ""]
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
                        "positive is more use of the latent).", "", markdown(paired), ""]
                out += verdict_lines(sub, profile.baseline, f" in {g}" if g else "")
            text = reading(sub, profile.baseline, profile.floor, profile.collapse_kl)
            if text:
                out += [f"**Reading{' ' + g if g else ''}** (generated from the numbers): {text}", ""]
    return out


def _screening_section(profile: Profile, summary: pd.DataFrame, results: Path) -> list[str]:
    """The conclusions of the screening profile (``screening`` in [profile]) set beside this
    profile's, configuration by configuration (bench/report/screening.py)."""
    if not profile.screening or not profile.baseline:
        return []
    from ..grid.suite import load_profile

    screen_profile = load_profile(profile.screening)
    name = screen_profile.name
    head = [f"## Which conclusions of the screening profile `{name}` hold here", ""]
    screen = summarize(screen_profile, results)
    if (screen["status"] != "ok").all():
        return head + [f"No finished runs of `{name}` under {runs_dir(results, screen_profile)}"
                       f": run `vae-bench suite --profile {name}` to compare.", ""]
    table = screening_table(summary, screen, profile.baseline, (name, profile.name))
    if table.empty:
        labels = [set(s["label"].map(config_name)) for s in (summary, screen)]
        shared = labels[0] & labels[1] - {profile.baseline}
        if shared:  # a grid in progress: no shared configuration has finished runs in both yet
            return head + [f"None of the {len(shared)} configurations `{name}` and `{profile.name}` "
                           f"share besides `{profile.baseline}` has finished runs in both yet.", ""]
        return head + [f"`{name}` and `{profile.name}` share no configuration.", ""]
    return head + [
        f"Each configuration's paired difference with `{profile.baseline}` (mean over seeds; * "
        f"where the 95 % t interval excludes 0) in `{name}` (screening) and here, and the "
        "verdict per metric: held (the same conclusion: the same sign with the interval "
        "excluding 0, or no difference in both), reversed (opposite signs, both excluding 0), "
        "lost (a screening difference not found here), new (found here only).", "",
        markdown(table), "",
        f"**Reading** (generated from the numbers): {screening_reading(table)}", ""]


def _mi_bound(summary: pd.DataFrame) -> str:
    if "mutual_info_bound" not in summary:
        return ""
    bound = summary["mutual_info_bound"].dropna().astype(float)
    return "" if bound.empty else (f": no estimate pooled over N points exceeds log N = "
                                   f"{bound.max():.2f} nats, so MI near it is saturated")


def _ais_lines(profile: Profile, summary: pd.DataFrame) -> list[str]:
    """The estimator section where the profile's runs have AIS records (bench/report/estimators.py)."""
    points = grid(profile)
    if not points or not points[0][1].config.eval.ais_points:
        return []
    ev = points[0][1].config.eval
    return estimator_section(summary, profile.baseline,
                             f"T = {ev.ais_steps} intermediate distributions, {ev.ais_chains} "
                             f"chains of {ev.ais_leapfrog}-step HMC started at the {ev.ais_start}, "
                             f"{ev.ais_points} test points")


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
        f"- dataset: `{cfg.get('dataset')}`; model: {_encoder_text(model)}, "
        f"z = {model.get('latent_dim')} (categorical variants: their "
        f"own latent), {_decoder_text(profile, model)}; batch "
        f"{train.get('batch_size')}, {_optimizer(train, model)}, "
        f"{_clip(train)}, {train.get('epochs')} epochs"
        f"{_train_points(train)}, "
        f"dtype {cfg.get('dtype')}",
        f"- evaluation: {_test_split(ev)}; NLL by importance sampling with K = {ev.get('is_samples')} "
        f"samples from q (eval seed {ev.get('seed')}); -ELBO with the analytic KL, "
        f"{ev.get('elbo_samples')} sample(s)",
        _data_line(cfg.get("dataset", ""), digests),
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
    gen = generator.section(summary, generator.read(results, profile.name, cfg.get("dataset", "")))
    lines += ["", *gen[:-1]] if gen else []
    pm_lines, _ = posterior_space.section(profile, summary, runs_dir(results, profile),
                                          reports / profile.name)
    lines += ["", *pm_lines[:-1]] if pm_lines else []
    ais_lines = _ais_lines(profile, summary)
    lines += ["", *ais_lines[:-1]] if ais_lines else []
    if "stop_reason" in summary and summary["stop_reason"].notna().any():
        lines += ["", f"stopped: the convergence protocol ({_protocol(train, profile)}); "
                  "converged = stopped by its rule, capped = reached the epoch cap first. Every "
                  "metric is of the best-on-validation weights (bench/training/convergence.py)."]
    bad = summary[summary["status"] != "ok"]
    if not bad.empty:
        cols = [c for c in ("label", "seed", "status", "diverged_step", "error") if c in bad]
        lines += ["", "## Runs that did not finish", "", markdown(bad[cols].astype(object).fillna(""))]
    stages = stage_table(profile, summary, Path(results))
    if not stages.empty:
        lines += ["", "## By learning-rate stage", "", markdown(stages), "",
                  "The last epoch of each stage of constant learning rate (history.csv): training "
                  "-ELBO over the epoch, and the diagnostics of the validation split at its end "
                  "(mean ± sd over seeds). The test NLL is measured once, after the last epoch."]
    pub = published_table(profile, summary)
    if not pub.empty:
        lines += ["", "## Published numbers beside ours", "", markdown(pub), "",
                  "Protocols differ where the table says so; a gap is expected where ours trains "
                  "for minutes and theirs for days."]
    lines += reference_section(profile)
    screening = _screening_section(profile, summary, results)
    lines += ["", *screening[:-1]] if screening else []
    control = control_section(profile, results)
    lines += ["", *control[:-1]] if control else []
    if "stop_reason" in summary and summary["stop_reason"].notna().any():  # long profiles
        lines += ["", *compute_section(summary, runs_dir(results, profile))]
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
    table = main_table(summary, profile.baseline, profile.columns)
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
