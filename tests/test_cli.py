"""The command line: a run on digits, evaluate reproduces it, determinism, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main


def vae_bench(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


SMALL = ["--dataset", "digits", "--seed", "0", "--epochs", "2", "--k", "50",
         "--set", "model.hidden=32", "--set", "dtype=float64"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = vae_bench("run", "--variant", "vae", *SMALL, "--out", str(out))
    return Path(proc.stdout.strip().splitlines()[-1])


def test_run_writes_a_self_describing_directory(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    assert {"config.json", "metrics.json", "history.csv", "env.json", "model.pt"} <= names
    m = json.loads((digits_run / "metrics.json").read_text())
    assert m["status"] == "ok" and m["nll_is"] < m["neg_elbo"]
    env = json.loads((digits_run / "env.json").read_text())
    assert env["dataset_digests"]["test_binarized"] and env["torch"]
    assert len((digits_run / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_evaluate_reproduces_the_run_metrics(digits_run):
    proc = vae_bench("evaluate", str(digits_run))
    again = json.loads(proc.stdout)
    saved = json.loads((digits_run / "metrics.json").read_text())
    for key in ("neg_elbo", "nll_is", "kl", "recon", "mutual_info", "active_units", "ess"):
        assert again[key] == saved[key], key


def test_same_command_twice_gives_identical_metrics(digits_run, tmp_path):
    proc = vae_bench("run", "--variant", "vae", *SMALL, "--out", str(tmp_path),
                     "--deterministic")
    other = json.loads((Path(proc.stdout.strip()) / "metrics.json").read_text())
    first = json.loads((digits_run / "metrics.json").read_text())
    volatile = {"train_seconds", "train_samples_per_s", "eval_seconds", "run_id",
            "diagnostics_seconds"}
    assert {k: v for k, v in other.items() if k not in volatile} == \
        {k: v for k, v in first.items() if k not in volatile}


@pytest.mark.parametrize("args, needle", [
    (["run", "--variant", "nope"], "unknown variant 'nope'; allowed: vae, beta"),
    (["run", "--dataset", "cifar"], "unknown dataset 'cifar'; allowed: digits"),
    (["run", "--set", "bogus=1"], "unknown config key 'bogus'; allowed:"),
    (["run", "--set", "model.hidden=-3"], "model.hidden='-3' is invalid"),
    (["run", "--set", "train.lr=0"], "train.lr='0' is invalid; allowed: float > 0"),
    (["run", "--set", "model.latent_dim=-1"], "allowed: int >= 0"),
    (["run", "--variant", "beta", "--set", "beta=-1"], "beta: beta='-1' is invalid; allowed: float >= 0"),
    (["run", "--variant", "vae", "--set", "beta=2"], "unknown config key 'beta'"),
    (["run", "--epochs", "0"], "allowed: an integer >= 1"),
    (["run", "--k", "0"], "allowed: an integer >= 1"),
    (["evaluate", "/nonexistent"], "is not a run directory"),
])
def test_bad_input_is_one_line_exit_2(args, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([*args, *(["--out", str(tmp_path)] if args[0] == "run" else [])]))
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert needle in lines[-1], lines  # argparse may print its usage line before the error
    assert len(lines) == 1 or lines[0].startswith("usage:"), lines
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_variants_and_datasets_listings(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "beta" in out and "Higgins" in out and "tau_min" in out
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "linear-gaussian" in out
