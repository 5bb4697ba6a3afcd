"""A control setting read from another profile (``control`` in [profile]): a group of that
profile's grid that this one leaves out on purpose (for ``converged``, the MLP decoder where no
configuration collapses, kept in ``trained`` at its 25-epoch cap). The report says how its runs
stopped, how far the cap left them from convergence (their validation trajectory and how fast
it still fell at the end) and their test NLL, so a reader knows what the control's numbers are:
capped, not converged, where that is so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from variants.errors import ConfigError

from ..grid.suite import Profile, runs_dir
from .compute import still_falling
from .records import summarize
from .tables import config_name, markdown

#: how many points of the validation trajectory the table shows (evenly spaced to the cap)
POINTS = 5


def _val_curve(runs: Path, name: str) -> pd.Series:
    """The run's watched validation number by epoch (``val_loss`` where it has one, else
    ``val_neg_elbo``), empty where history.csv cannot be read."""
    try:
        history = pd.read_csv(Path(runs) / name / "history.csv")
    except (OSError, ValueError, pd.errors.ParserError):
        return pd.Series(dtype=float)
    col = "val_loss" if "val_loss" in history else "val_neg_elbo"
    if col not in history or "epoch" not in history:
        return pd.Series(dtype=float)
    return pd.Series(history[col].astype(float).to_numpy(), index=history["epoch"].astype(int))


def control_table(summary: pd.DataFrame, runs: Path, group: str) -> pd.DataFrame:
    """One row per configuration of ``group`` with finished runs: runs, epochs, stopped by the
    rule, the watched validation number at ``POINTS`` epochs up to the longest run (mean over
    the runs that reached the epoch), its fall per epoch over the capped runs' last 3 epochs
    (median; positive: still improving) and the test NLL (IS), mean ± sd over seeds."""
    ok = summary[(summary["status"] == "ok") & (summary["group"] == group)]
    if ok.empty:
        return pd.DataFrame()
    cap = int(ok["stopped_epoch"].max())
    marks = sorted({max(1, round(cap * i / POINTS)) for i in range(1, POINTS + 1)})
    rows = []
    for label, frame in ok.groupby("label", sort=False):
        curves = [_val_curve(runs, str(n)) for n in frame["run"]]
        capped = frame[frame["stop_reason"] == "cap"]
        falls = [f for f in (still_falling(runs, str(n)) for n in capped["run"]) if f == f]
        epochs = frame["stopped_epoch"].astype(int)
        row = {"configuration": config_name(label), "runs": len(frame),
               "epochs": (f"{epochs.min()}" if epochs.min() == epochs.max()
                          else f"{epochs.min()}–{epochs.max()}"),
               "by the rule": f"{len(frame) - len(capped)}/{len(frame)}"}
        for e in marks:
            vals = [c[e] for c in curves if e in c.index]
            row[f"val @{e}"] = f"{np.mean(vals):.2f}" if vals else "-"
        row["still falling /epoch"] = f"{np.median(falls):+.2f}" if falls else "-"
        nll = frame["nll_is"].astype(float)
        row["NLL (IS)"] = f"{nll.mean():.2f} ± {nll.std(ddof=1):.2f}" if len(nll) > 1 \
            else f"{nll.mean():.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def control_section(profile: Profile, results: Path) -> list[str]:
    """The report's section for ``profile.control`` (profile, group, note), or nothing."""
    if not profile.control:
        return []
    from ..grid.suite import load_profile

    name, group, note = profile.control
    other = load_profile(name)
    groups = [g["name"] for g in other.groups]
    if group not in groups:
        raise ConfigError(f"profile {profile.name!r}: control group {group!r} is not a group of "
                          f"{name!r}; allowed: {', '.join(groups) or '(it has none)'}")
    head = [f"## The control setting `{group}`, in `{name}`", ""]
    summary = summarize(other, results)
    table = control_table(summary, runs_dir(results, other), group)
    if table.empty:
        return head + [f"No finished `{group}` runs of `{name}` under "
                       f"{runs_dir(results, other)}: run `vae-bench suite --profile {name}`.", ""]
    ok = summary[(summary["status"] == "ok") & (summary["group"] == group)]
    capped = int((ok["stop_reason"] == "cap").sum())
    cap = int(ok["stopped_epoch"].max())
    reading = (f"{capped} of its {len(ok)} runs reached the {cap}-epoch cap before the rule "
               "stopped them" + (": its numbers are of capped, not converged, models" if capped
                                 else "; all stopped by the rule"))
    return head + [
        (note + " " if note else "")
        + f"This profile leaves it out; its runs are read from `{name}` as they are. "
        f"**{reading[0].upper() + reading[1:]}.**", "",
        markdown(table), "",
        "val @e: the watched validation number (-ELBO, or the objective for runs that watch it) "
        "at epoch e, mean over the runs that reached it; still falling /epoch: how much it fell "
        "per epoch over the capped runs' last 3 epochs (median, nats; positive: still "
        "improving when the cap stopped it).", ""]
