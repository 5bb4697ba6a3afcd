"""CI regression of the numbers: the smoke profile against results/reference/smoke.csv.

Tolerances. The smoke profile runs in float64 on the CPU with fixed seeds, so on one machine the
numbers are bit-identical run to run (tests/test_cli.py and test_variants.py assert equality).
What may legitimately differ on another machine of the same kind is the reduction order of BLAS
kernels (CPU generation, thread count); in float64 that perturbs a value by ~1e-13 relative before
600 Adam steps amplify it. Measured here: the whole profile with 1 thread against the reference
made with 2 threads is bit-identical. We allow 1e-6 nats absolute plus 1e-7 relative, room for
another CPU generation's kernels and still ten thousand times below the 0.01-nat resolution of
the report, so any change to an estimator, the data or the training loop shows. Active units are
counts and must match exactly; the effective sample size is a ratio in [0, 1] (atol 1e-6).

Regenerating the reference is deliberate: `vae-bench reference --profile smoke`, which refuses
unless SUITE_VERSION in bench/config.py was bumped.
"""

from pathlib import Path

import pytest

from bench.config import SUITE_VERSION
from bench.grid.suite import load_profile, run_suite
from bench.report import REGRESSION_COLUMNS, regression_frame, summarize

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "smoke.csv"
NATS = {"atol": 1e-6, "rtol": 1e-7}
TOLERANCES = {**{c: NATS for c in REGRESSION_COLUMNS}, "active_units": {"atol": 0, "rtol": 0},
              "active_units_strict": {"atol": 0, "rtol": 0},
              "ess": {"atol": 1e-6, "rtol": 0}}


@pytest.mark.slow
def test_smoke_profile_matches_the_reference(tmp_path, dataframe_regression):
    import pandas as pd

    assert str(pd.read_csv(REFERENCE)["suite_version"].iloc[0]) == SUITE_VERSION, \
        "the suite version changed: regenerate with `vae-bench reference --profile smoke`"
    profile = load_profile("smoke")
    counts = run_suite(profile, tmp_path, jobs=1, progress=False)
    assert counts.get("failed", 0) == 0
    frame = regression_frame(summarize(profile, tmp_path))
    dataframe_regression.check(frame, fullpath=REFERENCE, tolerances=TOLERANCES)
