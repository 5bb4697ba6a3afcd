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


#: a variant that changes torch's global state, as user code may (at import, construction and
#: in every step)
MUTATES = """
import torch
from variants import Variant

def mutate():
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(123)
    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision("medium")

mutate()

class Mutates(Variant):
    def __init__(self, **hp):
        super().__init__(**hp)
        mutate()

    def objective(self, terms, step, total_steps):
        mutate()
        return super().objective(terms, step, total_steps)
"""


def test_a_variant_that_changes_global_state_cannot_change_the_next_runs_record(home, capsys):
    grid = GRID.replace('dtype = "float64"', 'dtype = "float32"')
    vae_only = grid[:grid.index('[[config]]\nlabel = "bad"')]
    (home / "solo.toml").write_text(vae_only)
    assert main(["suite", "--profile", "solo.toml", "--results", str(home / "solo")]) == 0
    (home / "mine.py").write_text(MUTATES)
    (home / "both.toml").write_text(grid.replace('"mine:Bad"', '"mine:Mutates"').replace(
        '[[config]]\nlabel = "vae"\nvariant = "vae"\n', "") + '\n[[config]]\nlabel = "vae"\n'
        'variant = "vae"\n')  # the mutating variant runs first
    assert main(["suite", "--profile", "both.toml", "--results", str(home / "both")]) == 0
    solo, after = _records(home / "solo")["vae"], _records(home / "both")["vae"]
    seconds = {k for k in solo if "seconds" in k or k.endswith("_per_s")}
    assert {k: v for k, v in after.items() if k not in seconds} == \
        {k: v for k, v in solo.items() if k not in seconds}
    env = json.loads(next((home / "both").glob("*/runs/vae-*/env.json")).read_text())
    assert env["torch_state"]["default_dtype"] == "torch.float32", env["torch_state"]
