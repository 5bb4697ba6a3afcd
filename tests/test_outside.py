"""Bring your own method and data: variants from outside the package (module:Class, entry
points), the contract helper, profiles extended by a variant, and .npz datasets."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import variants
from bench.cli import main
from bench.config import RunConfig, apply_overrides, resolve
from bench.contract import ContractError, check_variant
from bench.grid.runner import execute, load_dataset
from bench.grid.suite import load_profile, run_suite, with_variants
from bench.identity import run_id, run_name
from bench.report import summarize
from variants.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "capacity.py"
TINY = {"dataset": "digits", "dtype": "float64", "train.epochs": 1, "model.hidden": "16",
        "model.latent_dim": 4, "eval.is_samples": 10}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user's directory holding their own modules, as the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith(("mine", "capacity", "broken"))]:
        del sys.modules[name]
    variants._OUTSIDE.clear()


def one_line_error(argv, capsys) -> str:
    capsys.readouterr()  # what came before
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_an_outside_variant_runs_by_import_path_and_records_its_source(home):
    shutil.copy(EXAMPLE, home / "capacity.py")
    cfg = apply_overrides(RunConfig(), {**TINY, "variant": "capacity:CapacityVAE"})
    path = execute(cfg, home / "runs")
    metrics = json.loads((path / "metrics.json").read_text())
    env = json.loads((path / "env.json").read_text())
    assert metrics["status"] == "ok" and path.name.startswith("capacity.CapacityVAE-digits-s0-")
    assert env["variant_source"]["file"] == str((home / "capacity.py").resolve())
    import hashlib
    assert env["variant_source"]["sha256"] == \
        hashlib.sha256((home / "capacity.py").read_bytes()).hexdigest()
    # its hyperparameters are validated like a built-in's
    with pytest.raises(ConfigError, match="gamma=-1.0 is invalid; allowed: float > 0"):
        resolve(apply_overrides(cfg, {"gamma": -1.0}))


def test_editing_an_outside_variant_changes_its_run_id(home):
    shutil.copy(EXAMPLE, home / "capacity.py")
    cfg = resolve(apply_overrides(RunConfig(), {**TINY, "variant": "capacity:CapacityVAE"}))
    before = run_id(cfg)
    with open(home / "capacity.py", "a") as f:
        f.write("# an edit\n")
    assert run_id(cfg) != before


@pytest.mark.parametrize("source, name, message", [
    ("def f(:\n", "mine:X", r"mine\.py:1: SyntaxError"),
    ("import not_a_module_anywhere\n", "mine:X",
     r"mine\.py:1: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ("raise RuntimeError('boom')\n", "mine:X", r"mine\.py:1: RuntimeError: boom"),
    ("x = 1\n", "mine:Missing", r"mine\.py defines no 'Missing'"),
    ("class X:\n    pass\n", "mine:X", r"is not a subclass of variants\.Variant"),
    ("from variants import Variant\nclass X(Variant):\n    params = {'a': 3}\n", "mine:X",
     r"params must map names to variants\.Param; 'a' does not"),
    ("", "nomodule:X", r"no module 'nomodule' in the current directory"),
    ("", "mine:", r"is not an import path"),
])
def test_a_broken_outside_variant_is_refused_in_one_line_naming_its_file(
        home, capsys, source, name, message):
    (home / "mine.py").write_text(source)
    err = one_line_error(["run", "--variant", name, "--dataset", "digits", "--epochs", "1",
                          "--out", str(home / "runs")], capsys)
    import re
    assert re.search(message, err), err
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_an_entry_point_registers_a_variant_by_name(home, monkeypatch):
    shutil.copy(EXAMPLE, home / "capacity.py")
    dist = home / "capacity_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: capacity-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vae_bench.variants]\ncapacity = capacity:CapacityVAE\n")
    monkeypatch.setattr(variants, "_entry_points_loaded", False)
    monkeypatch.setattr(variants, "REGISTRY", dict(variants.REGISTRY))
    assert "capacity" in variants.names()
    assert variants.resolve("capacity").name == "capacity"
    assert variants.source("capacity")["file"] == str((home / "capacity.py").resolve())


def test_the_contract_helper_passes_the_example_and_fails_broken_methods(home, tmp_path):
    shutil.copy(EXAMPLE, home / "capacity.py")
    check_variant("capacity:CapacityVAE", tmp_path / "ok")
    (home / "broken.py").write_text(
        "import random\n"
        "from variants import Variant\n"
        "class NaN(Variant):\n"
        "    def objective(self, terms, step, total_steps):\n"
        "        return super().objective(terms, step, total_steps) * float('nan')\n"
        "class Noisy(Variant):\n"
        "    def kl_weight(self, step, total_steps):\n"
        "        return random.random()\n"  # not from the run's seeded streams
        "class FalseNeutral(Variant):\n"
        "    neutral = {}\n"
        "    def kl_weight(self, step, total_steps):\n"
        "        return 0.5\n")
    with pytest.raises(ContractError, match=r"broken\.py\) fails the contract: a finite scalar"):
        check_variant("broken:NaN", tmp_path / "nan")
    with pytest.raises(ContractError, match="the same seed gives the same numbers"):
        check_variant("broken:Noisy", tmp_path / "noisy")
    with pytest.raises(ContractError, match=r"neutral = \{\} reproduces vae"):
        check_variant("broken:FalseNeutral", tmp_path / "neutral")


PROFILE = """
[profile]
description = "base grid"
seeds = [0, 1]
baseline = "vae"

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [16]
"model.latent_dim" = 4
"train.epochs" = 2
"eval.is_samples" = 10

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "beta=2"
variant = "beta"
beta = 2.0
"""


def test_add_variant_trains_only_the_new_runs_and_pairs_them_with_the_baseline(home, capsys):
    shutil.copy(EXAMPLE, home / "capacity.py")
    (home / "base.toml").write_text(PROFILE)
    base = load_profile(str(home / "base.toml"))
    assert run_suite(base, home / "results", progress=False)["ok"] == 4
    extended = with_variants(base, ["capacity:CapacityVAE"])
    assert extended.name == "base+capacity.CapacityVAE" and extended.reuse == ("base",)
    counts = run_suite(extended, home / "results", progress=False)
    assert counts["reused"] == 4 and counts["ok"] == 2 and counts["total"] == 6
    summary = summarize(extended, home / "results")
    committed = summarize(base, home / "results").set_index(["label", "seed"])
    for _, row in summary[summary["label"] != "capacity:CapacityVAE"].iterrows():
        assert row["nll_is"] == committed.loc[(row["label"], row["seed"]), "nll_is"]
    assert main(["report", "--profile", str(home / "base.toml"), "--add-variant",
                 "capacity:CapacityVAE", "--results", str(home / "results"), "--reports",
                 str(home / "reports")]) == 0
    report = (home / "reports" / "base+capacity.CapacityVAE.md").read_text()
    assert "| capacity:CapacityVAE | 2 |" in report  # the paired row against vae, 2 seeds
    assert not (home / "reports" / "base.md").exists()  # nothing of the base profile rewritten
    err = one_line_error(["suite", "--profile", str(home / "base.toml"), "--add-variant", "vae",
                          "--results", str(home / "results")], capsys)
    assert "already has a configuration labelled 'vae'" in err


# ---- datasets from a file -------------------------------------------------------------------
def grey_npz(path: Path, n=(60, 20), shape=(8, 8), valid: int = 0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"train": rng.random((n[0], *shape)), "test": rng.random((n[1], *shape))}
    if valid:
        arrays["valid"] = (rng.random((valid, *shape)) < 0.5).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_an_npz_dataset_runs_end_to_end_and_records_its_digest(tmp_path):
    data = grey_npz(tmp_path / "shapes.npz")
    cfg = resolve(apply_overrides(RunConfig(), {**TINY, "dataset": str(data)}))
    assert cfg.train.validation_size == 7  # an eighth of 60 training points
    path = execute(cfg, tmp_path / "runs")
    metrics = json.loads((path / "metrics.json").read_text())
    env = json.loads((path / "env.json").read_text())
    import hashlib
    assert metrics["status"] == "ok" and path.name.startswith("vae-shapes-s0-")
    assert env["dataset_digests"]["file"] == hashlib.sha256(data.read_bytes()).hexdigest()
    dataset = load_dataset(cfg, None)
    assert dataset.image_shape == (8, 8) and len(dataset.train) == 53
    assert set(dataset.test.unique().tolist()) <= {0.0, 1.0}  # binarized once
    # the PixelCNN decoder works on its 2-d points
    pix = apply_overrides(cfg, {"model.decoder": "pixelcnn", "model.pixelcnn_layers": 2,
                                "model.pixelcnn_channels": 4})
    assert json.loads((execute(pix, tmp_path / "runs") / "metrics.json").read_text())[
        "status"] == "ok"
    # new contents, new run
    before = run_name(cfg)
    grey_npz(data, seed=1)
    assert run_name(cfg) != before


def test_an_npz_dataset_brings_its_own_validation_split(tmp_path):
    data = grey_npz(tmp_path / "v.npz", valid=9)
    cfg = resolve(apply_overrides(RunConfig(), {**TINY, "dataset": str(data)}))
    assert cfg.train.validation_size == 9
    dataset = load_dataset(cfg, None)
    assert len(dataset.train) == 60 and len(dataset.valid) == 9
    with pytest.raises(ConfigError, match="brings its own validation split of 9 points"):
        load_dataset(apply_overrides(cfg, {"train.validation_size": 5}), None)


@pytest.mark.parametrize("arrays, message", [
    ({"train": np.zeros((4, 3))}, "no test array"),
    ({"train": np.zeros((4, 3)), "test": np.zeros((2, 3)), "validation": np.zeros((2, 3))},
     "unknown array 'validation'"),
    ({"train": np.full((4, 3), 2.0), "test": np.zeros((2, 3))},
     r"'train' has values in \[2, 2\]; allowed: binary pixels or grey levels in \[0, 1\]"),
    ({"train": np.full((4, 3), np.nan), "test": np.zeros((2, 3))}, "NaN or infinite"),
    ({"train": np.zeros((0, 3)), "test": np.zeros((2, 3))}, r"has shape \(0, 3\)"),
    ({"train": np.zeros((4, 3)), "test": np.zeros((2, 4))},
     r"'test' has points of shape \(4,\), 'train' \(3,\)"),
    ({"train": np.array(["a", "b"]), "test": np.zeros((2, 3))}, "has dtype <U1"),
])
def test_a_bad_npz_dataset_is_refused_in_one_line(tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    err = one_line_error(["run", "--dataset", str(tmp_path / "bad.npz"), "--epochs", "1",
                          "--out", str(tmp_path / "runs")], capsys)
    import re
    assert re.search(message, err) and "bad.npz" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_missing_or_garbled_npz_file_is_refused_in_one_line(tmp_path, capsys):
    err = one_line_error(["run", "--dataset", str(tmp_path / "none.npz"), "--epochs", "1"],
                         capsys)
    assert "none.npz: cannot read it" in err
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    err = one_line_error(["run", "--dataset", str(tmp_path / "junk.npz"), "--epochs", "1",
                          "--out", str(tmp_path / "runs")], capsys)
    assert "junk.npz: not a readable .npz" in err


def test_a_pretrained_decoder_without_weights_is_rebuilt_only_to_the_same_numbers(tmp_path):
    """Committed records carry no weights: a lagging run on a fresh clone trains the pretrained
    decoder again and installs its weights only if its numbers are the record's."""
    from bench.identity import pretrain_config

    cfg = resolve(apply_overrides(RunConfig(), {
        **TINY, "model.decoder": "made", "model.decoder_hidden": "16",
        "train.decoder_pretrain_epochs": 1}))
    first = json.loads((execute(cfg, tmp_path / "a") / "metrics.json").read_text())
    pre = tmp_path / "a" / run_name(pretrain_config(cfg))
    (pre / "model.pt").unlink()
    shutil.rmtree(tmp_path / "a" / run_name(cfg))
    again = json.loads((execute(cfg, tmp_path / "a") / "metrics.json").read_text())
    assert (pre / "model.pt").is_file() and again["nll_is"] == first["nll_is"]
    # a record that another training does not reproduce: refused, the record untouched
    (pre / "model.pt").unlink()
    shutil.rmtree(tmp_path / "a" / run_name(cfg))
    record = json.loads((pre / "metrics.json").read_text())
    (pre / "metrics.json").write_text(json.dumps({**record, "kl": record["kl"] + 1}))
    with pytest.raises(ConfigError, match=r"training it again here gives other numbers \(kl:"):
        execute(cfg, tmp_path / "a")
    assert not (pre / "model.pt").exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")) \
        == [".locks"]  # no rebuild directory left behind
