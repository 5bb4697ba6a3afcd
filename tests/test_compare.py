"""`vae-bench compare`: a verdict in levels with an exit code (bench/report/compare.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report.compare import RANGE_FLOOR, conclusions, verdict

ROOT = Path(__file__).resolve().parent.parent


def summary(seed_noise: float = 0.0, shift: dict | None = None) -> pd.DataFrame:
    """A two-group summary: vae, a mitigation that clearly helps, one that does not matter."""
    rng = np.random.default_rng(0)
    rows = []
    base = {"vae": (100.0, 5.0, 4.0), "good": (95.0, 9.0, 7.0), "null": (100.0, 5.0, 4.0)}
    for group in ("mlp", "made"):
        for label, (nll, kl, mi) in base.items():
            for seed in range(3):
                jitter = [0.3, -0.2, 0.1][seed] if label == "null" else [0.1, 0.0, -0.1][seed]
                row = {"label": f"{group} / {label}", "group": group, "seed": seed,
                       "status": "ok", "nll_is": nll + jitter, "neg_elbo": nll + 2 + jitter,
                       "kl": kl + jitter / 2, "mutual_info": mi + jitter / 3}
                for col in ("nll_is", "neg_elbo", "kl", "mutual_info"):
                    row[col] += seed_noise * rng.standard_normal()
                rows.append(row)
    frame = pd.DataFrame(rows)
    for label, delta in (shift or {}).items():
        frame.loc[frame["label"] == label, "nll_is"] += delta
    return frame


def test_identical_summaries_are_level_1():
    v = verdict(summary(), summary(), "vae")
    assert (v.level, v.exit_code) == (1, 0) and v.name == "identical"


def test_rounding_differences_are_statistically_reproduced():
    fresh = summary(seed_noise=1e-6)
    v = verdict(fresh, summary(), "vae")
    assert (v.level, v.exit_code) == (2, 0), v.text()
    assert "paired conclusions" in v.text()


def test_a_configuration_that_moved_is_named_and_exits_1():
    v = verdict(summary(shift={"made / good": 10.0}), summary(), "vae")
    assert (v.level, v.exit_code) == (0, 1)
    text = v.text()
    assert "'made / good': fresh mean nll_is" in text
    assert "conclusion made / good vs vae, nll_is" in text and "mlp / good" not in text


def test_conclusions_are_sign_and_whether_the_interval_excludes_zero():
    c = conclusions(summary(), "vae")
    assert c[("mlp", "good", "nll_is")] == (-1, True)  # -5 nats, seeds agree
    assert c[("mlp", "good", "kl")] == (1, True)
    assert c[("mlp", "null", "nll_is")][1] is False  # within seed noise


def test_the_range_margin_has_a_floor_for_single_valued_ranges():
    committed = summary()
    committed.loc[committed["label"] == "mlp / vae", "kl"] = 0.0  # a range of one value
    fresh = committed.copy()
    fresh.loc[fresh["label"] == "mlp / vae", "kl"] = RANGE_FLOOR / 2
    assert verdict(fresh, committed, "vae").level == 2
    fresh.loc[fresh["label"] == "mlp / vae", "kl"] = RANGE_FLOOR * 2
    assert verdict(fresh, committed, "vae").level == 0


def test_cli_verdict_exit_codes_and_one_line_when_nothing_matched(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bench.cli", "compare", *map(str, args)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    a, b, other = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "other.csv"
    summary().to_csv(a, index=False)
    summary(shift={"mlp / good": 8.0}).to_csv(b, index=False)
    other_frame = summary()
    other_frame["label"] = "x / " + other_frame["label"]
    other_frame.to_csv(other, index=False)
    ok = cli(a, a, "--baseline", "vae")
    assert ok.returncode == 0 and "verdict: identical (level 1)" in ok.stdout
    moved = cli(b, a, "--baseline", "vae")
    assert moved.returncode == 1 and "verdict: not reproduced" in moved.stdout
    none = cli(other, a)
    assert none.returncode == 1 and "verdict: nothing matched" in none.stdout
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    bad = cli(empty, a)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "empty.csv" in bad.stderr


def test_a_baseline_the_summary_lacks_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"baseline 'vea' is not a configuration .*allowed: "
                                         r"vae, good, null"):
        verdict(summary(seed_noise=1e-6), summary(), "vea")


def test_a_baseline_with_no_checkable_conclusion_is_refused():
    def baseline_failed(frame):
        frame = frame.copy()
        rows = frame["label"].str.endswith("/ vae")
        frame.loc[rows, "status"] = "failed"
        frame.loc[rows, ["nll_is", "neg_elbo", "kl", "mutual_info"]] = np.nan
        return frame

    fresh, committed = baseline_failed(summary(seed_noise=1e-6)), baseline_failed(summary())
    with pytest.raises(ValueError, match="no paired conclusion against 'vae' can be checked"):
        verdict(fresh, committed, "vae")
    assert verdict(fresh, committed).level == 2  # without a baseline: the seed ranges only


@pytest.mark.parametrize("damage, message", [
    (lambda f: pd.concat([f, f.iloc[[4]]], ignore_index=True),
     r"line 20 \('mlp / good', seed 1\): a second row"),
    (lambda f: f.astype({"nll_is": object}).pipe(_set, 2, "nll_is", "abc"),
     r"line 4 .*'nll_is' is 'abc'"),
    (lambda f: f.astype({"nll_is": object}).pipe(_set, 2, "nll_is", True),
     r"line 4 .*'nll_is' is True"),
    (lambda f: _set(f, 5, "kl", np.nan), r"line 7 \('mlp / good', seed 2\): column 'kl' is nan"),
    (lambda f: _set(f, 0, "mutual_info", np.inf), r"line 2 .*'mutual_info' is inf"),
    (lambda f: f.assign(seed=f["seed"].astype(object)).pipe(_set, 1, "seed", "one"),
     r"line 3 .*column 'seed' is 'one', not an integer"),
])
def test_a_summary_compare_cannot_trust_is_refused_naming_line_and_column(damage, message):
    with pytest.raises(ValueError, match=message):
        verdict(damage(summary()), summary(), "vae")


def test_a_failed_run_may_have_empty_metrics():
    fresh = _set(_set(summary(), 3, "status", "failed"), 3, "nll_is", np.nan)
    committed = _set(_set(summary(), 3, "status", "failed"), 3, "nll_is", np.nan)
    assert verdict(fresh, committed, "vae").level == 1


def _set(frame: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.at[row, col] = value
    return frame


def test_cli_refuses_a_mistyped_baseline_a_directory_and_a_fifo_in_one_line(tmp_path):
    import os

    a = tmp_path / "a.csv"
    summary().to_csv(a, index=False)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    for args in ([a, a, "--baseline", "vea"], [tmp_path, a], [a, fifo]):
        out = subprocess.run([sys.executable, "-m", "bench.cli", "compare", *map(str, args)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == ""
