"""`vae-bench compare`: a verdict in levels with an exit code (bench/compare.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.compare import RANGE_FLOOR, conclusions, verdict

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
