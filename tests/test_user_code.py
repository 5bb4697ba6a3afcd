"""User code cannot end the grid silently: a variant that raises anything (SystemExit and
KeyboardInterrupt included) or kills its worker process is that run's recorded failure, the grid
goes on, and the suite's last line and exit code say how many runs failed; a variant whose
constructor raises is one line, not a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import variants
from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]

#: a variant whose training objective runs ``ACTION`` on its first call
BAD = """
import os
from variants import Variant

class Bad(Variant):
    def objective(self, terms, step, total_steps):
        {action}
        return super().objective(terms, step, total_steps)
"""

GRID = """
[profile]
description = "a plain vae beside a user's variant"
seeds = [0]

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [16]
"model.latent_dim" = 4
"train.epochs" = 1
"eval.is_samples" = 10

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "bad"
variant = "mine:Bad"
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user's directory holding ``mine.py``, as the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "grid.toml").write_text(GRID)
    yield tmp_path
    sys.modules.pop("mine", None)
    variants._OUTSIDE.clear()


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name.split("-")[0]: json.loads(p.read_text())
            for p in results.glob("*/runs/*/metrics.json")}


@pytest.mark.parametrize("action, error", [
    ("raise SystemExit(0)", "SystemExit: 0"),
    ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ("raise RuntimeError('boom')", "RuntimeError: boom"),
])
def test_a_variant_that_raises_anything_is_its_runs_failure_and_the_grid_goes_on(
        home, capsys, action, error):
    (home / "mine.py").write_text(BAD.format(action=action))
    code = main(["suite", "--profile", "grid.toml", "--results", str(home / "r")])
    out = capsys.readouterr().out.strip().splitlines()
    records = _records(home / "r")
    counts = json.loads(out[-1])
    assert code == 1 and (counts["failed"], counts["ok"], counts["total"]) == (1, 1, 2), out
    assert records["vae"]["status"] == "ok"
    assert records["mine.Bad"]["status"] == "failed" and records["mine.Bad"]["error"] == error


def test_a_variant_that_kills_its_worker_is_recorded_and_the_pool_goes_on(home):
    (home / "mine.py").write_text(BAD.format(action="os._exit(3)"))
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "suite", "--profile", "grid.toml",
                           "--results", "r", "--jobs", "2"], cwd=home, capture_output=True,
                          text=True, timeout=300)
    records = _records(home / "r")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (counts["failed"], counts["ok"], counts["total"]) == (1, 1, 2), proc.stdout
    assert records["vae"]["status"] == "ok"
    assert records["mine.Bad"]["status"] == "failed"
    assert "worker process died" in records["mine.Bad"]["error"]


def test_a_variant_whose_constructor_raises_is_one_line(home, capsys):
    (home / "mine.py").write_text("from variants import Variant\nclass Bad(Variant):\n"
                                  "    def __init__(self, **hp):\n"
                                  "        raise RuntimeError('no GPU here')\n")
    capsys.readouterr()
    assert main(["run", "--variant", "mine:Bad", "--dataset", "digits", "--epochs", "1",
                 "--out", str(home / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "variant 'mine:Bad': Bad() raised RuntimeError: no GPU here" in err
