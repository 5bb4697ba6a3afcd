"""Does a fresh grid reproduce a committed one? A verdict in levels (``vae-bench compare``).

- Level 1, *identical*: the same (configuration, seed) runs, the same statuses, and every metric
  of ``REGRESSION_COLUMNS`` equal to the precision summary.csv prints (``PRINTED``: 10
  significant digits; the run records themselves hold every bit, and on one machine they agree
  bit for bit).
- Level 2, *statistically reproduced*: for every configuration and every metric of ``RANGED``,
  the fresh mean over seeds lies within the committed seeds' range [min, max], widened on each
  side by ``RANGE_MARGIN`` of that range and at least ``RANGE_FLOOR`` nats (a range of one
  value, such as the decoder's KL of 0, would otherwise admit no rounding at all); and every
  paired conclusion of the report is the same: for each configuration against the baseline in
  its group and each of NLL, KL and MI, the sign of the mean seed-by-seed difference and
  whether its 95 % t interval excludes 0 (``bench.report.paired_differences``).
- Otherwise *not reproduced*, naming each configuration and conclusion that moved.

Counts (active units) and timings are not part of level 2: integers near a threshold and the
machine's speed are not conclusions of the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import PAIRED, PRINTED, REGRESSION_COLUMNS, paired_differences
from .tables import config_name

RANGED = ["neg_elbo", "nll_is", "kl", "mutual_info"]
RANGE_MARGIN = 0.25
RANGE_FLOOR = 0.01
KEYS = ["label", "seed"]


@dataclass
class Verdict:
    level: int  # 1 identical, 2 statistically reproduced, 0 not reproduced
    name: str
    lines: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.level else 1

    def text(self) -> str:
        return "\n".join([f"verdict: {self.name}" + (f" (level {self.level})" if self.level
                                                      else ""), *self.lines])


def _check_columns(frame: pd.DataFrame, what: str) -> None:
    missing = [c for c in (*KEYS, "status") if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is not a vae-bench summary: no column {missing[0]!r}; "
                         "expected results/PROFILE/summary.csv")


def check_summary(frame: pd.DataFrame, what: str) -> None:
    """ValueError, in one line naming ``what`` (the file), the row and the column, unless
    ``frame`` is a summary compare can read: its key and status columns, a label and a status
    of text in every row, one row per (label, seed), an integer seed, and in every finished run
    (status ok) each metric of ``REGRESSION_COLUMNS`` it has a finite number (a failed run's may
    be empty)."""
    _check_columns(frame, what)

    def where(i) -> str:  # the CSV's line: the header is line 1
        return f"{what}, line {i + 2} ({frame.at[i, 'label']!r}, seed {frame.at[i, 'seed']})"

    for col in ("label", "status"):  # text: a number or an empty cell is no configuration
        for i, value in frame[col].items():
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{what}, line {i + 2}: column {col!r} is {value!r}, not "
                                 "a name")
    for i, seed in frame["seed"].items():
        if not (isinstance(seed, (int, np.integer)) or (isinstance(seed, float)
                                                        and float(seed).is_integer())):
            raise ValueError(f"{where(i)}: column 'seed' is {seed!r}, not an integer")
    dup = frame.duplicated(KEYS, keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"{where(frame.index[i])}: a second row for the same (label, seed); "
                         "a summary has one row per run")
    ok = frame["status"] == "ok"
    for col in (c for c in REGRESSION_COLUMNS if c in frame.columns):
        boolean = frame[col].map(lambda v: isinstance(v, (bool, np.bool_)))
        values = pd.to_numeric(frame[col].mask(boolean), errors="coerce").astype(float)
        text = frame[col].notna() & values.isna()  # a word or a boolean where a number belongs
        bad = text | (ok & ~np.isfinite(values))
        if bad.any():
            i = frame.index[int(np.flatnonzero(bad.to_numpy())[0])]
            value = frame.at[i, col]
            shown = float(value) if isinstance(value, np.floating) else repr(value)
            raise ValueError(f"{where(i)}: column {col!r} is {shown}, not a finite number (a "
                             "finished run needs one)")


def identical(fresh: pd.DataFrame, committed: pd.DataFrame) -> list[str]:
    """What keeps two summaries from being identical (empty: they are)."""
    out = []
    a, b = fresh.set_index(KEYS), committed.set_index(KEYS)
    for key in sorted(set(a.index) ^ set(b.index), key=str):
        out.append(f"run {key[0]!r} seed {key[1]} is only in the "
                   f"{'fresh' if key in a.index else 'committed'} summary")
    for key in sorted(set(a.index) & set(b.index), key=str):
        if a.loc[key, "status"] != b.loc[key, "status"]:
            out.append(f"{key[0]!r} seed {key[1]}: status {a.loc[key, 'status']} vs "
                       f"{b.loc[key, 'status']}")
            continue
        for col in REGRESSION_COLUMNS:
            x, y = a.loc[key].get(col), b.loc[key].get(col)
            same = (pd.isna(x) and pd.isna(y)) or (not pd.isna(x) and not pd.isna(y)
                                                   and PRINTED % float(x) == PRINTED % float(y))
            if not same:
                out.append(f"{key[0]!r} seed {key[1]}: {col} {x} vs {y}")
    return out


def ranges(fresh: pd.DataFrame, committed: pd.DataFrame) -> list[str]:
    """Configurations whose fresh mean leaves the (widened) committed seed range."""
    out = []
    f_ok, c_ok = (d[d["status"] == "ok"] for d in (fresh, committed))
    for label in dict.fromkeys(committed["label"]):
        f, c = f_ok[f_ok["label"] == label], c_ok[c_ok["label"] == label]
        if c.empty and f.empty:
            continue
        if c.empty or f.empty:
            out.append(f"{label!r}: finished runs only in the {'fresh' if c.empty else 'committed'}"
                       " summary")
            continue
        for col in RANGED:
            if col not in c or col not in f:
                continue
            lo, hi, mean = c[col].min(), c[col].max(), f[col].mean()
            margin = max(RANGE_MARGIN * (hi - lo), RANGE_FLOOR)
            if not lo - margin <= mean <= hi + margin:
                out.append(f"{label!r}: fresh mean {col} {mean:.4f} outside the committed seeds' "
                           f"range [{lo:.4f}, {hi:.4f}] +- {margin:.3g}")
    return out


def conclusions(summary: pd.DataFrame, baseline: str) -> dict:
    """{(group, configuration, metric): (sign of the mean difference, interval excludes 0)}."""
    out = {}
    groups = summary["group"].fillna("") if "group" in summary else pd.Series("", summary.index)
    for group in dict.fromkeys(groups):
        part = summary[groups == group]
        for name, rec in paired_differences(part, baseline).items():
            for col, _ in PAIRED:
                mean, half, n = rec[col]
                if not n:
                    continue
                excludes = bool(np.isfinite(half) and abs(mean) > half)
                out[(group, name, col)] = (int(np.sign(mean)), excludes)
    return out


def changed_conclusions(fresh: pd.DataFrame, committed: pd.DataFrame, baseline: str) -> list[str]:
    a, b = conclusions(fresh, baseline), conclusions(committed, baseline)
    out = []

    def say(c):
        sign, excl = c
        return f"{ {1: '+', -1: '-', 0: '0'}[sign]}{', 95 % CI excludes 0' if excl else ''}"

    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            group, name, col = key
            where = f"{group} / {name}" if group else name
            out.append(f"conclusion {where} vs {baseline}, {col}: "
                       f"{say(a[key]) if key in a else 'absent'} (fresh) vs "
                       f"{say(b[key]) if key in b else 'absent'} (committed)")
    return out


def verdict(fresh: pd.DataFrame, committed: pd.DataFrame, baseline: str = "") -> Verdict:
    """The level at which ``fresh`` reproduces ``committed`` (both summary.csv frames). A
    ValueError (one line) for a summary compare cannot read (``check_summary``), a ``baseline``
    that is no configuration of the committed summary, or a baseline against which not one paired
    conclusion can be checked: a verdict never claims a check it did not make."""
    check_summary(fresh, "the fresh summary")
    check_summary(committed, "the committed summary")
    if baseline:
        names = list(dict.fromkeys(committed["label"].map(config_name)))
        if baseline not in names:
            raise ValueError(f"baseline {baseline!r} is not a configuration of the committed "
                             f"summary; allowed: {', '.join(map(str, names))}")
    shared = set(map(tuple, fresh[KEYS].values)) & set(map(tuple, committed[KEYS].values))
    if not shared:
        return Verdict(0, "nothing matched", [
            "no (configuration, seed) of the fresh summary is in the committed one: are they "
            "summaries of the same profile?"])
    diffs = identical(fresh, committed)
    if not diffs:
        return Verdict(1, "identical", [f"{len(shared)} runs, every metric equal to the "
                                        f"{PRINTED} digits of summary.csv"])
    moved = ranges(fresh, committed)
    if baseline:
        moved += changed_conclusions(fresh, committed, baseline)
    n_conc = len(conclusions(committed, baseline)) if baseline else 0
    head = [f"{len(diffs)} differences from bit-identity (the first: {diffs[0]})"]
    if moved:
        return Verdict(0, "not reproduced", head + moved)
    if baseline and not n_conc:
        raise ValueError(f"no paired conclusion against {baseline!r} can be checked (each needs "
                         "a configuration and the baseline finished on a common seed); compare "
                         "without --baseline to check the seed ranges only")
    checked = (f"every configuration's fresh mean of {', '.join(RANGED)} within its committed "
               f"seed range (+-{RANGE_MARGIN:.0%} of it, at least {RANGE_FLOOR} nats)")
    checked += (f"; all {n_conc} paired conclusions against {baseline!r} (sign, 95 % CI "
                "excludes 0) the same" if baseline else "; no baseline: paired conclusions "
                "not checked")
    return Verdict(2, "statistically reproduced", head + [checked])
