"""Nothing lost and nothing wrongly trusted: transient failures are retried, damaged records are
named and retrained, foreign checkpoints are skipped, user errors end in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import results
from bench.backends import check_ray_address, run_one, transient
from bench.checkpoints import Checkpoints
from bench.cli import main
from bench.config import RunConfig, apply_overrides, resolve
from bench.report import summarize
from bench.runner import checkpoint_dir, execute, run_name
from bench.suite import dry_run, load_profile, run_suite
from variants.base import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LAGGING = """
[profile]
description = "lagging grid"
seeds = [0, 1]

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [16]
"model.latent_dim" = 4
"model.decoder" = "made"
"model.decoder_hidden" = [16]
"train.epochs" = 2
"train.decoder_pretrain_epochs" = 1
"eval.is_samples" = 10

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "beta=2"
variant = "beta"
beta = 2.0
"""


def one_line(argv, capsys, code=2) -> str:
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


def statuses(path: Path) -> list[str]:
    return sorted(json.loads((d / "metrics.json").read_text())["status"]
                  for d in path.iterdir() if not d.name.startswith("."))


def test_a_full_disk_then_room_again_ends_with_every_run_ok(tmp_path, monkeypatch):
    """The disk fills up while the pretrained decoders' weights are written (torch reports it as
    "unexpected pos"): nothing is recorded as failed; once there is room, a resume finishes
    every run, with no manual deletion."""
    (tmp_path / "lag.toml").write_text(LAGGING)
    profile = load_profile(str(tmp_path / "lag.toml"))
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(results.torch, "save", full_disk)
    first = run_suite(profile, tmp_path / "results", progress=False)
    assert first["pretrained decoders failed (not recorded: retried on resume)"] == 2
    assert first["failed (not recorded: retried on resume)"] == 4  # each tried its decoder
    runs = tmp_path / "results" / "lag" / "runs"
    assert not [d for d in runs.iterdir() if not d.name.startswith(".")]  # nothing trusted
    assert not list(runs.glob(".*.*"))  # no temporaries left behind
    monkeypatch.setattr(results.torch, "save", real_save)
    second = run_suite(profile, tmp_path / "results", progress=False)
    assert second["ok"] == 4 and second["pretrained decoders ok"] == 2
    assert statuses(runs) == ["ok"] * 6


def test_old_failed_records_of_a_machine_fault_are_retried(tmp_path):
    (tmp_path / "lag.toml").write_text(LAGGING)
    profile = load_profile(str(tmp_path / "lag.toml"))
    run_suite(profile, tmp_path / "results", progress=False)
    runs = tmp_path / "results" / "lag" / "runs"
    victim = next(d for d in runs.iterdir() if d.name.startswith("beta"))
    metrics = json.loads((victim / "metrics.json").read_text())
    (victim / "metrics.json").write_text(json.dumps({
        "status": "failed", "error": "ConfigError: pretrained decoder run decoder-only-x has "
        "status 'failed'; allowed: a finished run (remove it to retrain)"}))
    assert run_suite(profile, tmp_path / "results", progress=False)["ok"] == 1
    again = json.loads((victim / "metrics.json").read_text())
    assert again["status"] == "ok" and again["nll_is"] == metrics["nll_is"]
    assert len(list((runs / ".damaged").iterdir())) == 1  # the old record kept aside


@pytest.mark.parametrize("damage", ["broken-json", "list", "text-metric", "no-metrics",
                                    "broken-config", "broken-history"])
def test_a_damaged_record_is_named_set_aside_and_retrained(tmp_path, capsys, damage):
    cfg = resolve(apply_overrides(RunConfig(), {"dataset": "digits", "dtype": "float64",
                                                "model.hidden": "16", "model.latent_dim": 4,
                                                "train.epochs": 1, "eval.is_samples": 10}))
    path = execute(cfg, tmp_path)
    before = json.loads((path / "metrics.json").read_text())
    edit = {"broken-json": ("metrics.json", '{"status": "ok", '),
            "list": ("metrics.json", "[]"),
            "text-metric": ("metrics.json", json.dumps({**before, "nll_is": "ninety"})),
            "broken-config": ("config.json", "{"),
            "broken-history": ("history.csv", "garbage\n")}
    if damage == "no-metrics":
        (path / "metrics.json").unlink()
    else:
        name, text = edit[damage]
        (path / name).write_text(text)
    why = results.damage(path)
    assert why and str(path) in why
    capsys.readouterr()
    again = execute(cfg, tmp_path)
    err = capsys.readouterr().err
    assert f"moved to {tmp_path / '.damaged'}" in err and why in err
    after = json.loads((again / "metrics.json").read_text())
    assert after["nll_is"] == before["nll_is"]
    assert len(list((tmp_path / ".damaged").iterdir())) == 1


def test_dry_run_and_report_name_a_damaged_record(tmp_path):
    (tmp_path / "lag.toml").write_text(LAGGING)
    profile = load_profile(str(tmp_path / "lag.toml"))
    run_suite(profile, tmp_path / "results", progress=False)
    runs = tmp_path / "results" / "lag" / "runs"
    victim = next(d for d in runs.iterdir() if d.name.startswith("vae"))
    (victim / "metrics.json").write_text("{")
    rows, _ = dry_run(profile, tmp_path / "results")
    bad = [r for r in rows if r["status"] == "damaged"]
    assert len(bad) == 1 and str(victim / "metrics.json") in bad[0]["why"]
    summary = summarize(profile, tmp_path / "results")
    row = summary[summary["run"] == victim.name].iloc[0]
    assert row["status"] == "damaged" and str(victim) in row["error"]


def test_a_foreign_checkpoint_is_skipped_in_one_line(tmp_path, capsys):
    over = {"dataset": "digits", "dtype": "float64", "model.hidden": "16",
            "model.latent_dim": 4, "train.epochs": 3, "eval.is_samples": 10}
    whole = json.loads((execute(apply_overrides(RunConfig(), over), tmp_path / "whole")
                        / "metrics.json").read_text())
    cfg = resolve(apply_overrides(RunConfig(), {**over, "train.checkpoint_every": 1}))
    other = resolve(apply_overrides(RunConfig(), {**over, "model.latent_dim": 6}))
    folder = checkpoint_dir(tmp_path / "part" / run_name(cfg))
    # a snapshot of another model (another code version's, or another run's) in its place
    from bench import train
    real = train.fit
    saved = {}

    def keep_first(*args, **kwargs):
        kwargs["checkpoints"].save = lambda e, st: saved.setdefault(e, st)
        return real(*args, **kwargs)

    import bench.runner as runner
    runner.fit = keep_first
    try:
        execute(apply_overrides(other, {"train.checkpoint_every": 1}), tmp_path / "other")
    finally:
        runner.fit = real
    folder.mkdir(parents=True)
    torch.save({**saved[2], "run": None}, folder / "epoch-000002.pt")
    capsys.readouterr()
    part = json.loads((execute(cfg, tmp_path / "part") / "metrics.json").read_text())
    err = capsys.readouterr().err
    assert "does not match this run's model" in err and len(err.strip().splitlines()) == 1
    stable = {k: v for k, v in part.items() if "seconds" not in k and k not in ("run_id",
                                                                               "train_samples_per_s")}
    assert stable == {k: whole[k] for k in stable}
    # another run's snapshot by name: refused by identity
    ck = Checkpoints(tmp_path / "ck", 1, identity="this-run")
    ck.save(1, {**saved[2], "run": None})
    assert Checkpoints(tmp_path / "ck", 1, identity="another-run").latest() is None
    assert "is a snapshot of another run (this-run)" in capsys.readouterr().err


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1 vs 2")

    monkeypatch.setattr(results.torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write epoch-000001.tmp \(\[enforce fail"):
        Checkpoints(tmp_path / "ck", 1).save(1, {"model": {}})
    assert not list((tmp_path / "ck").iterdir())


def test_transient_and_permanent_failures_are_told_apart():
    assert transient(OSError(28, "No space left on device"))
    assert transient(RuntimeError("[enforce fail at inline_container.cc] unexpected pos 5"))
    assert transient(MemoryError())
    assert not transient(ConfigError("model.decoder=x is invalid"))
    assert not transient(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_portable_runs_keep_their_thread_count_on_every_backend(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    cfg = resolve(apply_overrides(RunConfig(), {"dataset": "digits", "train.epochs": 1,
                                                "model.hidden": "8", "model.latent_dim": 2,
                                                "eval.is_samples": 5}))
    assert cfg.numerics == "portable"
    assert run_one(cfg, tmp_path, None, 1) == "ok"  # 1: what a Ray task asks for
    from bench.numerics import PORTABLE_THREADS
    assert calls and set(calls) == {PORTABLE_THREADS}  # the mode's count, not the backend's


@pytest.mark.parametrize("text, message", [
    ('inherits = "SELF"\n', "profile inheritance loops"),
    ('profile = 3\n[[config]]\nlabel = "a"\nvariant = "vae"\n', "profile = 3 is invalid"),
    ('[[config]]\nlabel = 3\nvariant = "vae"\n', "label and variant must be strings"),
    ('[profile]\nseeds = [0, 0]\n[[config]]\nlabel = "a"\nvariant = "vae"\n',
     "repeats a seed"),
    ('[[config]]\nlabel = "a"\nvariant = "vae"\nseed = 5\n', "sets seed; allowed: seeds only"),
])
def test_profile_mistakes_end_in_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text.replace("SELF", str(path)))
    err = one_line(["suite", "--profile", str(path), "--results", str(tmp_path / "r")], capsys)
    assert message in err, err


def test_unreadable_profiles_end_in_one_line(tmp_path, capsys):
    (tmp_path / "latin.toml").write_bytes(b'[profile]\ndescription = "caf\xe9"\n')
    assert "not UTF-8 text" in one_line(["suite", "--profile", str(tmp_path / "latin.toml")],
                                        capsys)
    assert "cannot read it" in one_line(["suite", "--profile", str(tmp_path / "none.toml")],
                                        capsys)


def test_a_setting_given_twice_is_refused(capsys):
    err = one_line(["run", "--epochs", "1", "--set", "epochs=2"], capsys)
    assert "set the same value twice" in err
    err = one_line(["run", "--variant", "beta", "--set", "beta=2", "--set", "beta=3"], capsys)
    assert "set the same value twice" in err


@pytest.mark.parametrize("setting", ["model.latent_dim=100000000", "model.hidden=1000000000",
                                     "k=1000000000"])
def test_sizes_that_cannot_fit_are_refused_before_allocating(capsys, setting):
    variant = "iwae" if setting.startswith("k=") else "vae"
    err = one_line(["run", "--variant", variant, "--set", setting], capsys)
    assert "needs an estimated" in err and "VAE_BENCH_MEMORY_CHECK=0" in err


def test_a_pixelcnn_kernel_larger_than_the_image_is_refused(capsys):
    err = one_line(["run", "--dataset", "digits", "--set", "model.decoder=pixelcnn", "--set",
                    "model.pixelcnn_kernel=99999"], capsys)
    assert "allowed: an odd int <= 15" in err


def test_a_ray_address_that_does_not_answer_fails_in_one_line():
    with pytest.raises(ConfigError, match="is invalid; allowed: HOST:PORT"):
        check_ray_address("notahost:abc")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="nothing answers there within 2 s"):
        check_ray_address("127.0.0.1:1", timeout=2)
    assert time.monotonic() - start < 5


def _as_from_a_terminal() -> None:
    """In the child: SIGINT as a terminal gives it. A test run started in the background
    (`make test &`, nohup, some CI runners) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler at all, so Ctrl-C could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_as_from_a_terminal, **kw)


@pytest.fixture
def group_killed_after():
    """Popen objects appended here have their whole process group killed when the test ends,
    passed or failed: a failed signal test must not leave a training suite running."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def children_of(proc: subprocess.Popen, n: int, wait: float = 60) -> list[int]:
    """The pids of ``proc``'s children once there are ``n`` (or after ``wait`` seconds)."""
    deadline, children = time.time() + wait, []
    while time.time() < deadline and len(children) < n:
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
    return children


def training(runs: Path, n: int, wait: float = 120) -> bool:
    """Whether ``n`` runs under ``runs`` hold their locks (they train) within ``wait`` s, and a
    moment more: a signal then reaches code that is running, not a process still importing."""
    deadline = time.time() + wait
    while time.time() < deadline:
        if len(list((runs / ".locks").glob("*.lock"))) >= n:
            time.sleep(2)
            return True
        time.sleep(0.2)
    return False


def still_alive(pids: list[int], wait: float = 30) -> list[int]:
    """Those of ``pids`` still running (not zombies) after up to ``wait`` seconds: a worker still
    importing torch when its parent died goes once it has started."""
    def alive() -> list[int]:
        return [p for p in pids if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]

    deadline = time.time() + wait
    while alive() and time.time() < deadline:
        time.sleep(0.5)
    return alive()


def checkpointed(runs: Path, wait: float = 120) -> bool:
    """Whether a run under ``runs`` has written a mid-run checkpoint within ``wait`` s: it is
    past its set-up (data, torch's lazy imports) and inside its epochs."""
    deadline = time.time() + wait
    while time.time() < deadline:
        if any((runs / ".checkpoints").glob("*/*")):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_ctrl_c_ends_a_run_in_one_line_with_exit_130(tmp_path, group_killed_after):
    proc = cli("run", "--dataset", "digits", "--epochs", "500", "--out", str(tmp_path),
               "--set", "train.checkpoint_every=1")
    group_killed_after.append(proc)
    assert checkpointed(tmp_path)  # inside training, not in its set-up (the next test's case)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole process group
    code = proc.wait(60)
    err = proc.stderr.read().strip().splitlines()
    assert code == 130, (code, err[-20:])  # what it said, should this ever fail again
    assert err[-1].startswith("vae-bench: interrupted;") and "Traceback" not in "\n".join(err)


A_COMMAND_THAT = """
import os, signal, sys
from bench import cli
def command(args):
    {body}
cli.cmd_variants = command
sys.exit(cli.main(["variants"]))
"""
INTERRUPTED_IN_EXEC = "exec('raise KeyboardInterrupt')"  # a dataclass's __init__ while torch imports
SWALLOWED_THEN_FAILED = ("try:\n        os.kill(os.getpid(), signal.SIGINT)\n"  # raises here
                         "    except KeyboardInterrupt:\n        pass\n"
                         "    raise ImportError('cannot import name X (partially initialized)')")
FAILED = "raise ImportError('cannot import name X')"


def python_m(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """Run ``cli.main`` under ``python -m`` with the variants command replaced by ``body``."""
    (tmp_path / "a_command.py").write_text(A_COMMAND_THAT.format(body=body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    return subprocess.run([sys.executable, "-m", "a_command"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_as_from_a_terminal)


@pytest.mark.parametrize("body", [INTERRUPTED_IN_EXEC, SWALLOWED_THEN_FAILED],
                         ids=["in-exec", "swallowed-then-failed"])
def test_ctrl_c_in_set_up_ends_in_one_line_with_exit_130(tmp_path, body):
    """Ctrl-C in a run's set-up lands in third-party imports. In an exec() of source text
    CPython marks the KeyboardInterrupt unhandled although the CLI catches it, and under
    ``python -m`` the process then left by SIGINT (-2) after its one line (the CI failure of
    stop 29). Third-party code may also swallow the interrupt and fail next (seen once: an
    ImportError from a half-imported torch._dynamo, exit 1 with a traceback). Deterministic:
    the command raises the interrupt in an exec, or sends itself SIGINT, swallows it and fails."""
    proc = python_m(tmp_path, body)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 130, (proc.returncode, err[-20:])
    assert err[-1].startswith("vae-bench: interrupted;") and "Traceback" not in proc.stderr


def test_an_error_without_ctrl_c_still_shows_its_traceback(tmp_path):
    proc = python_m(tmp_path, FAILED)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ImportError" in proc.stderr


@pytest.mark.slow
def test_pool_workers_die_with_a_killed_parent(tmp_path, group_killed_after):
    (tmp_path / "lag.toml").write_text(LAGGING.replace('"train.epochs" = 2',
                                                       '"train.epochs" = 400'))
    proc = cli("suite", "--profile", str(tmp_path / "lag.toml"), "--jobs", "2", "--results",
               str(tmp_path / "r"))
    group_killed_after.append(proc)
    children = children_of(proc, 2)
    assert children, "no workers started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not still_alive(children), "workers outlived their parent"


@pytest.mark.parametrize("setting, message", [
    (["--set", "eval.test_points=1"], "eval.test_points=1 is invalid"),
    (["--set", "eval.test_points=1000000000"], "eval.test_points=1000000000 is invalid for digits"),
    (["--variant", "delta-vae", "--set", "delta=1e9"], "delta='1e9' is invalid; allowed: float in [0, 50]"),
])
def test_evaluation_and_variant_sizes_outside_their_range_are_refused(tmp_path, capsys, setting,
                                                                      message):
    err = one_line(["run", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path),
                    *setting], capsys)
    assert message in err, err
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_run_that_diverges_says_so_and_exits_1(tmp_path, capsys):
    err = one_line(["run", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path),
                    "--set", "train.lr=1e30", "--set", "train.clip=0"], capsys, code=1)
    assert err.startswith("vae-bench: the run diverged at step")


@pytest.mark.slow
def test_ctrl_c_ends_a_parallel_suite_in_one_line_without_leftover_workers(
        tmp_path, group_killed_after):
    (tmp_path / "lag.toml").write_text(LAGGING.replace('"train.epochs" = 2',
                                                       '"train.epochs" = 400'))
    proc = cli("suite", "--profile", str(tmp_path / "lag.toml"), "--jobs", "2", "--results",
               str(tmp_path / "r"))
    group_killed_after.append(proc)
    children = children_of(proc, 3)  # the resource tracker and two workers
    assert training(tmp_path / "r" / "lag" / "runs", 2)  # both workers inside a run
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(60)
    err = proc.stderr.read().strip().splitlines()
    assert code == 130, (code, err[-20:])
    assert err[-1].startswith("vae-bench: interrupted;") and "Traceback" not in "\n".join(err)
    assert not still_alive(children)


def test_a_variant_precondition_is_checked_before_training(tmp_path, capsys):
    """Aggressive's switch-off reads the validation split: without one the run is refused at
    once, not after a first epoch of training."""
    start = time.monotonic()
    err = one_line(["run", "--variant", "aggressive", "--dataset", "digits", "--out",
                    str(tmp_path), "--set", "train.validation_size=0"], capsys)
    assert "validation" in err and time.monotonic() - start < 30
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_ray_cluster_without_a_node_large_enough_is_refused_in_one_line(tmp_path, monkeypatch):
    """A portable run's task reserves 2 CPUs; on a cluster whose nodes have 1 CPU each Ray would
    wait forever, so the suite refuses before submitting anything (Ray itself replaced by a
    stand-in that reports such a cluster)."""
    import types

    from bench.backends import _ray

    submitted = []
    fake = types.SimpleNamespace(
        init=lambda **kw: None,
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": 1.0}},
                       {"Alive": False, "Resources": {"CPU": 8.0}}],  # a dead node counts not
        remote=lambda fn: submitted.append(fn))
    monkeypatch.setitem(sys.modules, "ray", fake)
    cfg = resolve(apply_overrides(RunConfig(), {"dataset": "digits"}))
    assert cfg.numerics == "portable"
    with pytest.raises(ConfigError, match="reserves 2 CPUs .* no node of this Ray cluster has "
                                          "more than 1;"):
        list(_ray([cfg], tmp_path, None, None))
    assert not submitted
