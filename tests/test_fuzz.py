"""Fuzzing as a test (Hypothesis): generated config values, profile TOML, summary CSVs and run
records end in success or a one-line error (exit 2), never a traceback, and reading a record
never changes it.

CI runs a fixed, derandomized handful of examples per property (``VAE_BENCH_FUZZ=ci``, the
default); ``make fuzz`` runs the ``long`` profile (many more, freshly random); a number
(``VAE_BENCH_FUZZ=150``) runs that many."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import variants
from bench.cli import main
from bench.config import RunConfig, apply_overrides, validate
from bench.keys import SECTIONS, rows
from bench.results import damage
from variants.errors import ConfigError

_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=_QUIET, database=None)
settings.register_profile("long", max_examples=600, deadline=None, suppress_health_check=_QUIET)
_ASKED = os.environ.get("VAE_BENCH_FUZZ", "ci")  # ci, long, or a number of examples
FUZZ = settings(settings.get_profile("long"), max_examples=int(_ASKED)) if _ASKED.isdigit() \
    else settings.get_profile(_ASKED)

#: every config key (dotted), and names that are not keys
KEYS = [k for section in (None, *SECTIONS) for k, *_ in rows(section)]
NAMES = st.sampled_from([*KEYS, "model.nope", "train", "hparams.beta", "seed", ""])

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**15, 10**15), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["mlp", "made", "pixelcnn", "digits", "mnist", "portable", "native", "auto",
                     "-1", "1e400", "nan", "200,200", "0x10", "1.5"]))
VALUES = st.one_of(SCALARS, st.lists(st.one_of(st.integers(-5, 10**7), st.text(max_size=3)),
                                     max_size=4),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def one_line(text: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) <= 1 and "Traceback" not in text


@FUZZ
@given(key=NAMES, value=VALUES)
def test_a_config_value_is_taken_or_refused_in_one_line(key, value):
    try:
        validate(apply_overrides(RunConfig(), {"dataset": "digits", key: value}))
    except ConfigError as e:
        assert one_line(str(e)), str(e)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return '""'


@st.composite
def profiles(draw) -> str:
    """A profile's TOML: mostly well-formed tables of generated values, sometimes raw text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=80))
    meta = {"seeds": draw(st.one_of(st.lists(st.integers(-2, 3), max_size=3), VALUES))}
    if draw(st.booleans()):
        meta[draw(st.sampled_from(["stack", "stack_size", "baseline", "reuse", "columns",
                                   "screening", "budget"]))] = draw(VALUES)
    defaults = {"dataset": "digits", "train.epochs": 1}
    defaults.update(draw(st.dictionaries(NAMES.filter(bool), VALUES, max_size=2)))
    configs = []
    for _ in range(draw(st.integers(0, 2))):
        entry = {"label": draw(st.one_of(st.text(min_size=1, max_size=6), VALUES)),
                 "variant": draw(st.one_of(st.sampled_from(sorted(variants.REGISTRY)),
                                           st.text(max_size=8), VALUES))}
        if draw(st.booleans()):
            entry[draw(st.text(min_size=1, max_size=6))] = draw(VALUES)
        configs.append(entry)
    out = ["[profile]", *(f"{k} = {toml_value(v)}" for k, v in meta.items()), "",
           "[defaults]", *(f"{json.dumps(k)} = {toml_value(v)}" for k, v in defaults.items())]
    for entry in configs:
        out += ["", "[[config]]", *(f"{json.dumps(k)} = {toml_value(v)}"
                                    for k, v in entry.items())]
    return "\n".join(out) + "\n"


@FUZZ
@given(text=profiles())
def test_a_profile_is_listed_or_refused_in_one_line(tmp_path, capsys, text):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(text.encode("utf-8", "replace"))
    try:
        code = main(["suite", "--profile", str(path), "--dry-run", "--results",
                     str(tmp_path / "results")])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert one_line(err), err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.json"))


COLUMNS = ["label", "group", "seed", "status", "nll_is", "neg_elbo", "kl", "mutual_info"]
CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-3, 5),
                  st.text(max_size=6), st.none(), st.booleans(),
                  st.sampled_from(["vae", "mlp / vae", "ok", "failed", "mlp"]))


@st.composite
def summaries(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=60))
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=8, unique=True))
    rows_ = draw(st.lists(st.fixed_dictionaries({c: CELLS for c in columns}), max_size=6))
    return pd.DataFrame(rows_, columns=columns).to_csv(index=False)


@FUZZ
@given(fresh=summaries(), committed=summaries(),
       baseline=st.sampled_from(["vae", "mlp / vae", "nope", None]))
def test_compare_gives_a_verdict_or_refuses_in_one_line(tmp_path, capsys, fresh, committed,
                                                        baseline):
    a, b = tmp_path / "fresh.csv", tmp_path / "committed.csv"
    fresh, committed = fresh.encode("utf-8", "replace"), committed.encode("utf-8", "replace")
    a.write_bytes(fresh)
    b.write_bytes(committed)
    args = ["compare", str(a), str(b)] + (["--baseline", baseline] if baseline else [])
    code = main(args)
    err = capsys.readouterr().err
    assert code in (0, 1, 2), err
    if code == 2:
        assert one_line(err), err
    assert a.read_bytes() == fresh and b.read_bytes() == committed


PROFILE = """
[profile]
seeds = [0]

[defaults]
dataset = "digits"
"model.hidden" = [8]
"model.latent_dim" = 2
"train.epochs" = 1
"eval.is_samples" = 4
"eval.test_points" = 20

[[config]]
label = "vae"
variant = "vae"
"""


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """A finished tiny run of the profile above, written once: (profile path, run directory)."""
    from bench.grid.suite import load_profile, run_suite, runs_dir

    root = tmp_path_factory.mktemp("fuzz-record")
    (root / "p.toml").write_text(PROFILE)
    profile = load_profile(str(root / "p.toml"))
    run_suite(profile, root / "pristine", progress=False)
    run = next(p for p in runs_dir(root / "pristine", profile).iterdir()
               if not p.name.startswith("."))
    return root / "p.toml", run


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@FUZZ
@given(field=st.sampled_from(["nll_is", "neg_elbo", "kl", "status", "active_units", "run_id",
                              "mutual_info", "steps", "suite_version", "ess", "nll_is_se"]),
       value=st.one_of(VALUES, st.just("<delete>")),
       whole=st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=40)))
def test_a_damaged_record_is_named_never_averaged_or_changed(capsys, record, field, value,
                                                             whole):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # one per example
        damaged_record(Path(tmp), capsys, record, field, value, whole)


def damaged_record(tmp_path: Path, capsys, record, field, value, whole) -> None:
    import shutil

    profile, pristine = record
    runs = tmp_path / "results" / "p" / "runs"
    run = runs / pristine.name
    shutil.copytree(pristine, run)
    path = run / "metrics.json"
    if whole is not None:  # the file replaced by garbage
        path.write_bytes(whole if isinstance(whole, bytes) else whole.encode())
    else:
        metrics = json.loads(path.read_text())
        assume(metrics.get(field, "<delete>") != value)
        if value == "<delete>":
            metrics.pop(field, None)
        else:
            metrics[field] = value
        path.write_text(json.dumps(metrics))
    before = digest(run)
    why = damage(run)  # never raises
    assert why is None or one_line(why)
    code = main(["report", "--profile", str(profile), "--results", str(tmp_path / "results"),
                 "--reports", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert one_line(err), err
    assert digest(run) == before  # reading a record never changes it
    summary = tmp_path / "results" / "p" / "summary.csv"
    if why is not None and summary.is_file():  # a damaged record is not a seed of the table
        frame = pd.read_csv(summary)
        assert "ok" not in set(frame.get("status", pd.Series(dtype=object)).astype(str)) or \
            len(frame) == 0
