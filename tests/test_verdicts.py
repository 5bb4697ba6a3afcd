"""The report's verdicts (bench/report/verdicts.py) against truth: Holm's rejections by hand,
the probability of improvement by enumeration, the detectable difference by simulating its
power, and the table on a grid whose differences are known."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report.verdicts import (
    detectable,
    holm,
    improvement,
    improvement_interval,
    ranking,
    verdict_lines,
    verdicts,
)


def test_holm_step_down_by_hand():
    # m = 4: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2 stops it (0.04 not rejected either)
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert holm([0.2, float("nan"), 0.01]) == [False, False, True]  # NaN: not counted in m
    assert holm([0.049]) == [True] and holm([]) == []


def test_probability_of_improvement_by_enumeration_and_its_interval():
    x, y = np.array([1.0, 3.0, 2.0]), np.array([2.0, 2.0, 4.0])
    pairs = list(itertools.product(x, y))
    truth = sum((a < b) + 0.5 * (a == b) for a, b in pairs) / len(pairs)
    assert improvement(x, y) == pytest.approx(truth) and improvement(y, x) == pytest.approx(1 - truth)
    assert improvement(x, y, lower_better=False) == pytest.approx(1 - truth)
    lo, hi = improvement_interval(x, y)
    assert 0 <= lo <= truth <= hi <= 1
    assert improvement_interval(x - 10, y) == (1.0, 1.0)  # always better: no spread
    assert improvement_interval(x, y) == improvement_interval(x, y)  # a fixed generator


@pytest.mark.parametrize("n", [3, 5])
def test_detectable_difference_has_80_percent_power(n):
    # simulate paired differences with mean = the detectable difference (sd 1): the paired t
    # test at 5 % rejects in 80 % of 40,000 draws (Monte-Carlo SE 0.002; tolerance 0.01)
    rng = np.random.default_rng(1)
    d = rng.standard_normal((40_000, n)) + detectable(1.0, n)
    p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    assert abs((p < 0.05).mean() - 0.8) < 0.01
    assert detectable(2.0, n) == pytest.approx(2 * detectable(1.0, n))
    assert np.isnan(detectable(1.0, 1))


def _grid(shifts: dict[str, float], seeds=5, sd=0.1):
    rng = np.random.default_rng(0)
    base = 90 + rng.standard_normal(seeds)  # seed effects shared by every configuration
    rows = []
    for name, shift in shifts.items():
        for s in range(seeds):
            rows.append({"label": name, "seed": s, "status": "ok",
                         "nll_is": base[s] + shift + sd * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_verdicts_mark_the_known_difference_and_not_the_null():
    v = verdicts(_grid({"vae": 0.0, "better": -1.0, "same": 0.0}), "vae").set_index("name")
    assert v.loc["better", "raw"] and v.loc["better", "holm"] and v.loc["better", "poi"] > 0.9
    assert v.loc["better", "mean"] == pytest.approx(-1.0, abs=0.2)
    assert not v.loc["same", "holm"]
    assert v.loc["better", "detectable"] < 1.0  # sd 0.1 x sqrt 2 over 5 seeds resolves 1 nat
    rank = ranking(_grid({"vae": 0.0, "better": -1.0, "worse": 2.0}))
    assert list(rank["configuration"]) == ["better", "vae", "worse"]
    assert list(rank["rank [95 %]"]) == ["1–1", "2–2", "3–3"]
    text = "\n".join(verdict_lines(_grid({"vae": 0.0, "better": -1.0}), "vae"))
    assert "not resolvable" in text and "† also after Holm" in text


def test_where_every_run_has_the_exact_likelihood_the_verdicts_read_it():
    """IS says 'better' is 1 nat lower; the exact likelihood (the whole split) says it is the
    same model with a tighter bound: the verdicts and the ranking follow the exact one."""
    grid = _grid({"vae": 0.0, "better": -1.0, "floor": 3.0})
    grid["nll_exact"] = grid["nll_is"] - np.where(grid["label"] == "better", 0.0, 1.0)
    grid["exact_points"] = np.where(grid["label"] == "floor", None, "split")  # floor: no latent
    text = "\n".join(verdict_lines(grid, "vae"))
    assert "NLL (exact)" in text and "the exact likelihood" in text
    v = verdicts(grid, "vae", "nll_exact").set_index("name")
    assert not v.loc["better", "holm"] and abs(v.loc["better", "mean"]) < 0.2
    grid.loc[0, "exact_points"] = "subset"  # one run's exact value on a subset only: IS again
    assert "NLL (exact)" not in "\n".join(verdict_lines(grid, "vae"))
