"""Ctrl-C and kills: a run, a suite and a pool of workers end in one line with exit 130 and
leave no worker behind, also when Ctrl-C arrives during set-up."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]





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
def test_pool_workers_die_with_a_killed_parent(tmp_path, group_killed_after, lagging_toml):
    proc = cli("suite", "--profile", str(lagging_toml(epochs=400)), "--jobs", "2", "--results",
               str(tmp_path / "r"))
    group_killed_after.append(proc)
    children = children_of(proc, 2)
    assert children, "no workers started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not still_alive(children), "workers outlived their parent"


@pytest.mark.slow
@pytest.mark.parametrize("when", ["training", "starting"])
def test_ctrl_c_ends_a_parallel_suite_in_one_line_without_leftover_workers(
        tmp_path, group_killed_after, lagging_toml, when):
    """Ctrl-C reaches the whole process group: while the runs train, or while a worker is
    still importing (stop 41: a worker spawned after the first had started a stack of 2 runs
    printed KeyboardInterrupt's traceback from inside its import of scipy)."""
    proc = cli("suite", "--profile", str(lagging_toml(epochs=400)), "--jobs", "2", "--results",
               str(tmp_path / "r"))
    group_killed_after.append(proc)
    if when == "training":
        children = children_of(proc, 3)  # the resource tracker and two workers
        assert training(tmp_path / "r" / "lag" / "runs", 2)  # inside runs
    else:  # deterministic: the first worker is signalled alone while it imports, then all
        children = children_of(proc, 2, wait=120)  # the tracker and the first worker
        workers = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert workers, "no worker started"
        time.sleep(0.5)  # inside its imports (torch, scipy: several seconds)
        os.kill(workers[0], signal.SIGINT)
        time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(60)
    err = proc.stderr.read().strip().splitlines()
    assert code == 130, (code, err[-20:])
    assert err[-1].startswith("vae-bench: interrupted;") and "Traceback" not in "\n".join(err)
    assert not still_alive(children)
