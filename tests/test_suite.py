"""The grid: resume after SIGKILL, concurrent suites, divergence and failures, backends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.grid.suite import load_profile, run_suite
from bench.report import regression_frame, summarize, write_report

TINY_PROFILE = """
[profile]
description = "test grid"
seeds = [0, 1]

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [16]
"model.latent_dim" = 4
"train.epochs" = {epochs}
"eval.is_samples" = 20

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "beta=2"
variant = "beta"
beta = 2.0

[[config]]
label = "iwae"
variant = "iwae"
k = 3
"""


def write_profile(tmp_path, name="tiny", epochs=3, extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY_PROFILE.format(epochs=epochs) + extra)
    return path


def suite_cmd(profile_path, results, *extra):
    return [sys.executable, "-m", "bench.cli", "suite", "--profile", str(profile_path),
            "--results", str(results), *extra]


def frame(profile, results):
    return regression_frame(summarize(profile, results))


def complete_or_absent(runs: Path) -> list[str]:
    """Names of visible run directories; each must hold every file of a finished record."""
    names = [p.name for p in runs.iterdir() if not p.name.startswith(".")]
    for name in names:
        metrics = json.loads((runs / name / "metrics.json").read_text())
        assert metrics["status"] in ("ok", "diverged", "failed")
        for f in ("config.json", "env.json", "history.csv"):
            assert (runs / name / f).is_file()
    return names


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    profile = load_profile(str(write_profile(tmp, epochs=20)))
    run_suite(profile, tmp / "results", progress=False)
    return frame(profile, tmp / "results")


@pytest.mark.slow
def test_sigkill_then_resume_runs_only_the_missing_runs(tmp_path, uninterrupted):
    path = write_profile(tmp_path, epochs=20)
    profile = load_profile(str(path))
    runs = tmp_path / "results" / "tiny" / "runs"
    proc = subprocess.Popen(suite_cmd(path, tmp_path / "results"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (runs.is_dir() and complete_or_absent(runs)):
        time.sleep(0.05)
    time.sleep(0.3)  # most likely in the middle of the next run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = complete_or_absent(runs)
    assert 1 <= len(done) < 6, "the kill should land mid-grid"
    out = subprocess.run(suite_cmd(path, tmp_path / "results"), capture_output=True, text=True,
                         check=True)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["skipped"] == len(done) and counts["ok"] == 6 - len(done)
    leftovers = [p.name for p in runs.iterdir() if p.name.startswith(".") and p.name != ".locks"]
    assert not leftovers, f"orphaned temporaries remain: {leftovers}"
    assert frame(profile, tmp_path / "results").equals(uninterrupted)


@pytest.mark.slow
def test_two_suites_on_one_results_directory(tmp_path, uninterrupted):
    path = write_profile(tmp_path, epochs=20)
    profile = load_profile(str(path))
    procs = [subprocess.Popen(suite_cmd(path, tmp_path / "results"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(complete_or_absent(tmp_path / "results" / "tiny" / "runs")) == 6
    assert frame(profile, tmp_path / "results").equals(uninterrupted)


def test_divergence_and_failure_are_recorded_and_the_grid_goes_on(tmp_path):
    extra = """
[[config]]
label = "exploding"
variant = "vae"
"train.lr" = 1e30

[[config]]
label = "bad-groups"
variant = "free-bits"
groups = 3
"""
    profile = load_profile(str(write_profile(tmp_path, epochs=2, extra=extra)))
    counts = run_suite(profile, tmp_path / "results", progress=False)
    assert counts["ok"] == 6 and counts["diverged"] == 2 and counts["failed"] == 2
    summary = summarize(profile, tmp_path / "results")
    diverged = summary[summary["label"] == "exploding"]
    assert (diverged["status"] == "diverged").all() and (diverged["diverged_step"] >= 0).all()
    failed = summary[summary["label"] == "bad-groups"]
    assert failed["error"].str.contains("groups=3 does not divide the 4 latent units").all()
    write_report(profile, tmp_path / "results", tmp_path / "reports")
    report = (tmp_path / "reports" / "tiny.md").read_text()
    assert "## Runs that did not finish" in report and "exploding" in report
    assert "bad-groups" in report and "diverged" in report
    # a diverged run keeps the step it stopped at and the last finite training metrics
    for name in diverged["run"]:
        m = json.loads((tmp_path / "results" / "tiny" / "runs" / name / "metrics.json")
                       .read_text())
        assert m["diverged_step"] >= 1  # the first step starts from a finite initialization
        assert m["last_finite"]["step"] == m["diverged_step"] - 1
        assert all(abs(m["last_finite"][k]) < float("inf") for k in ("loss", "neg_elbo", "kl"))


@pytest.mark.slow
def test_process_pool_matches_in_process(tmp_path, uninterrupted):
    profile = load_profile(str(write_profile(tmp_path, epochs=20)))
    counts = run_suite(profile, tmp_path / "results", jobs=2, progress=False)
    assert counts["ok"] == 6
    assert frame(profile, tmp_path / "results").equals(uninterrupted)


@pytest.mark.slow
def test_ray_backend_matches_the_local_backend(tmp_path, uninterrupted):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    path = write_profile(tmp_path, epochs=20)
    profile = load_profile(str(path))
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run(suite_cmd(path, tmp_path / "results", "--backend", "ray"),
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["ok"] == 6
    assert frame(profile, tmp_path / "results").equals(uninterrupted)


@pytest.mark.slow
def test_two_ray_workers_on_a_loopback_cluster_run_each_run_once(tmp_path, uninterrupted):
    """The README's cluster recipe on one machine: `ray start --head` with 2 CPUs, a second
    node joining with `ray start --address` and 2 CPUs (a portable run reserves 2), then `suite --backend ray
    --ray-address`: the runs spread over both nodes (env.json names the node), every run of the
    grid lands exactly once, and the numbers equal the local backend's."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from bench.grid.suite import grid

    ray_bin = str(Path(sys.executable).parent / "ray")
    port = 6950 + os.getpid() % 40
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    try:
        head = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2",
                               "--include-dashboard=false", "--disable-usage-stats"],
                              capture_output=True, text=True, env=env, timeout=180)
        assert head.returncode == 0, head.stderr[-2000:]
        # a node joins a token-authenticated head (Ray >= 2.60) with RAY_AUTH_MODE=token
        node = subprocess.run([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2",
                               "--disable-usage-stats"], capture_output=True, text=True,
                              env={**env, "RAY_AUTH_MODE": "token"}, timeout=180)
        assert node.returncode == 0, node.stderr[-2000:]
        path = write_profile(tmp_path, epochs=20)
        profile = load_profile(str(path))
        out = subprocess.run(suite_cmd(path, tmp_path / "results", "--backend", "ray",
                                       "--ray-address", f"127.0.0.1:{port}"),
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        counts = json.loads(out.stdout.strip().splitlines()[-1])
        assert counts["ok"] == counts["total"] == 6
        runs = tmp_path / "results" / "tiny" / "runs"
        names = complete_or_absent(runs)
        assert sorted(names) == sorted(run.name for _, run in grid(profile))
        assert not (runs / ".damaged").exists()
        executors = {json.loads((runs / n / "env.json").read_text())["executor"] for n in names}
        assert len(executors) == 2 and all(e.startswith("ray node ") for e in executors), \
            executors
        assert frame(profile, tmp_path / "results").equals(uninterrupted)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


@pytest.mark.slow
def test_ray_cluster_started_as_ray_documents_it(tmp_path, uninterrupted):
    """`ray start --head` on loopback (Ray >= 2.60 turns token authentication on for it), then
    `suite --backend ray --ray-address HOST:PORT` with no RAY_AUTH_MODE set: the suite runs and
    matches the local backend. A driver that insists on no authentication is refused, in one
    line that says what to set."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    ray_bin = Path(sys.executable).parent / "ray"
    port = 6400 + os.getpid() % 500
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    start = subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        path = write_profile(tmp_path, epochs=20)
        address = f"127.0.0.1:{port}"
        out = subprocess.run(suite_cmd(path, tmp_path / "results", "--backend", "ray",
                                       "--ray-address", address),
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1])["ok"] == 6
        assert frame(load_profile(str(path)), tmp_path / "results").equals(uninterrupted)
        refused = subprocess.run(suite_cmd(path, tmp_path / "other", "--backend", "ray",
                                           "--ray-address", address),
                                 capture_output=True, text=True, timeout=300,
                                 env={**env, "RAY_AUTH_MODE": "disabled"})
        assert refused.returncode == 2
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("vae-bench: error: the Ray cluster refused") and \
            "set RAY_AUTH_MODE=token" in last
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env,
                       timeout=120)


def test_the_trained_profile_runs_the_default_profiles_configurations():
    """trained.toml lists its configurations (mmd watches its own objective there): every one
    is the default profile's, same label, variant and hyperparameters, in the same order, and
    the only additions are convergence-protocol keys."""
    default, trained = load_profile("default"), load_profile("trained")
    assert [c["label"] for c in trained.configs] == [c["label"] for c in default.configs]
    for ours, theirs in zip(trained.configs, default.configs, strict=True):
        extra = {k: v for k, v in ours.items() if k not in theirs}
        assert {k: v for k, v in ours.items() if k in theirs} == theirs, ours["label"]
        assert set(extra) <= {"train.monitor"}, ours["label"]
    assert [c["label"] for c in trained.configs if "train.monitor" in c] == ["mmd"]


def test_the_suite_submits_the_longest_runs_first(tmp_path, monkeypatch):
    """Submission order only (the numbers do not depend on it): runs without an estimate first,
    then by their configuration's mean time from the committed summary, longest first."""
    import bench.grid.suite as suite
    profile = load_profile(str(write_profile(tmp_path)))
    committed = tmp_path / "committed"
    (committed / "tiny").mkdir(parents=True)
    (committed / "tiny" / "summary.csv").write_text(
        "label,status,train_seconds,eval_seconds\n"
        "vae,ok,10,1\nvae,ok,12,1\niwae,ok,50,2\niwae,failed,900,\nbeta=2,ok,nan,\n")
    # failed runs and unreadable times give no estimate; vae (11 + 13) / 2, iwae 52
    assert suite.cost_estimates(profile, tmp_path / "results", committed) == \
        {"vae": 12.0, "iwae": 52.0}
    submitted = []

    def record(units, out, data_dir, jobs):  # a unit: one run, or the seeds of a stack
        submitted.extend((r.config.variant, r.config.seed) for unit in units for r in unit)
        return ["ok"] * sum(len(unit) for unit in units)

    monkeypatch.setattr(suite, "COMMITTED", committed)
    monkeypatch.setattr(suite, "_local", record)
    counts = run_suite(profile, tmp_path / "results", progress=False)
    assert counts["ok"] == 6
    assert submitted == [("beta", 0), ("beta", 1), ("iwae", 0), ("iwae", 1), ("vae", 0),
                         ("vae", 1)]


def test_the_dry_run_estimates_unstarted_configurations_from_the_screening_profile(monkeypatch):
    """A configuration without a finished seed gets the screening profile's seconds for it,
    scaled by the median ratio over the configurations finished in both (a, b, c: 2, 3, 2.5)."""
    from types import SimpleNamespace

    import bench.grid.suite as suite
    monkeypatch.setattr(suite, "load_profile", lambda name: name)
    monkeypatch.setattr(suite, "cost_estimates",
                        lambda p, results: {"a": 10.0, "b": 10.0, "c": 40.0, "d": 60.0})
    seconds = {"a": [20.0, 20.0], "b": [30.0], "c": [100.0]}
    line = suite.screening_estimate(SimpleNamespace(screening="s"), Path("r"), seconds,
                                    ["d", "d", "e"])  # two runs of d, one of e (unknown there)
    assert "about 5.0 min for 2 of those" in line and "median ratio 2.50x of the 3" in line
    assert suite.screening_estimate(SimpleNamespace(screening=None), Path("r"), seconds,
                                    ["d"]) == ""
    assert suite.screening_estimate(SimpleNamespace(screening="s"), Path("r"), {}, ["d"]) == ""
