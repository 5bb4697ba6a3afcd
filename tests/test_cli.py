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


def test_evaluate_adds_davidsons_ll_estimate_only_when_asked(digits_run):
    # s-vae-tf's "LL" keeps log p(x|z) of one sample: in expectation between the ELBO and
    # E_q log p(x|z) = -recon (4 standard errors of slack at both ends)
    plain = json.loads(vae_bench("evaluate", str(digits_run)).stdout)
    assert "svae_tf_ll" not in plain
    out = json.loads(vae_bench("evaluate", str(digits_run), "--svae-tf-ll", "50").stdout)
    assert out["svae_tf_ll_samples"] == 50
    assert -out["neg_elbo"] - 4 * out["svae_tf_ll_se"] < out["svae_tf_ll"] \
        < -out["recon"] + 4 * out["svae_tf_ll_se"]


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
    (["run", "--set", "train.lr=inf"], "train.lr='inf' is invalid; allowed: float > 0"),
    (["run", "--variant", "beta", "--set", "beta=inf"], "beta: beta='inf' is invalid"),
    (["run", "--variant", "beta", "--set", "beta=-inf"], "beta: beta='-inf' is invalid"),
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
    # which variants two stochastic layers refuse, and why: gumbel, decoder-only, the three
    # posterior heads and mmd
    assert out.count("not with two stochastic layers") == 6
    assert "CategoricalLatent" in out and "p(h1 | h2) is not N(0, I)" in out
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "linear-gaussian" in out


def test_report_on_a_results_directory_without_runs_says_how_to_run_them(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["report", "--profile", "default", "--results", str(tmp_path),
                               "--reports", str(tmp_path / "reports")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs of profile 'default'" in err[0]
    assert "vae-bench suite --profile default" in err[0]
    assert not (tmp_path / "reports").exists()


def test_data_dir_is_accepted_before_and_after_the_subcommand(capsys, tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"")  # an incomplete set
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    after = capsys.readouterr().out
    assert main(["--data-dir", str(tmp_path), "datasets"]) == 0
    assert capsys.readouterr().out == after
    # the listing and a run say the same thing about an incomplete IDX set
    line = next(x for x in after.splitlines() if x.startswith("mnist"))
    assert "not usable:" in line and "incomplete IDX set, missing train-labels-idx1-ubyte" in line
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path),
                               "--out", str(tmp_path / "runs")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert line.split("not usable: ", 1)[1] in err


def test_suite_dry_run_lists_the_grid_and_estimates_from_finished_runs(capsys, tmp_path):
    from bench.config import to_dict
    from bench.grid.suite import grid, load_profile, runs_dir
    from bench.identity import run_name

    profile = load_profile("smoke")
    points = grid(profile)
    label, run = points[0]
    cfg = run.config
    done = runs_dir(tmp_path, profile) / run_name(cfg)
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"status": "ok", "nll_is": 90.0,
                                                   "neg_elbo": 95.0, "kl": 5.0,
                                                   "train_seconds": 50.0, "eval_seconds": 10.0}))
    (done / "config.json").write_text(json.dumps(to_dict(cfg)))
    (done / "history.csv").write_text("epoch,loss\n1,100\n")
    assert main(["suite", "--profile", "smoke", "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == len(points) + 1
    assert out[0].split()[-2:] == ["done", run_name(cfg)]
    assert all(line.split()[-2] == "pending" for line in out[1:-1])
    same = sum(1 for lab, _ in points if lab == label) - 1  # the other seeds of that config
    assert out[-1].startswith(f"{len(points)} runs: 1 done, {len(points) - 1} to run; "
                              f"estimated {same * 60 / 60:.1f} min for the {same} of them")
    assert sorted(p.name for p in runs_dir(tmp_path, profile).iterdir()) == [done.name]


def test_suite_only_keeps_the_named_configurations_and_refuses_unknown_ones(capsys, tmp_path):
    from bench.grid.suite import grid, load_profile

    points = grid(load_profile("smoke"))
    label = points[-1][0]
    args = ["suite", "--profile", "smoke", "--results", str(tmp_path), "--dry-run"]
    assert main([*args, "--only", label]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[:-1]
    assert len(rows) == sum(lab == label for lab, _ in points) >= 1
    assert all(r.split()[0] == label.split()[0] for r in rows)
    proc = vae_bench(*args, "--only", "no-such-config", check=False)
    assert proc.returncode == 2 and "--only 'no-such-config'" in proc.stderr
    assert f"allowed: {points[0][0]}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_environment_names_the_cpu_and_the_math_libraries(digits_run):
    env = json.loads((digits_run / "env.json").read_text())
    assert env["cpu_model"] and env["torch_blas"] and env["numpy_blas"]
    assert any("OpenMP" in x or "backend" in x for x in env["torch_parallel"])


@pytest.mark.parametrize("edit, message", [
    ({"model": {"hidden": [1000000000]}}, "needs an estimated"),
    ({"model": {"latent_dim": "many"}}, "config.json"),
    ({"train": {"batch_size": -3}}, "batch_size"),
])
def test_evaluate_checks_an_edited_config_json_in_one_line(digits_run, tmp_path, edit, message):
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(digits_run, run)
    cfg = json.loads((run / "config.json").read_text())
    for section, values in edit.items():
        cfg[section].update(values)
    (run / "config.json").write_text(json.dumps(cfg))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = vae_bench("evaluate", str(run), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "config.json" in proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written
