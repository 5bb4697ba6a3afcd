"""Run directories: self-describing, written atomically, never overwritten.

A run directory holds ``config.json``, ``metrics.json``, ``history.csv``, ``env.json`` and
``model.pt`` (a state dict of tensors only), and for image data ``previews.npz``
(reconstructions and prior samples as uint8 pixel means, for the report's figures). It is
assembled in a temporary sibling and renamed into place in one step, so a directory that exists
under its final name is always complete.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .schema import metrics_problem

RUN_FILES = ("config.json", "metrics.json", "history.csv", "env.json", "model.pt")


def _git(*args: str) -> str | None:
    """The output of a git command in this checkout (None: no git, or not a checkout)."""
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> bool | None:
    """Whether the tracked files of this checkout differ from its commit (None: no git)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out)


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def math_libraries() -> dict:
    """The BLAS and threading libraries behind the numbers: torch's BLAS (from its build
    configuration), its parallel backend and MKL/OpenMP versions, and numpy's BLAS."""
    show = torch.__config__.show()
    found = re.search(r"BLAS_INFO=(\w+)", show)
    blas = found.group(1) if found else None
    parallel = [line.strip() for line in torch.__config__.parallel_info().splitlines()
                if "OpenMP" in line or "Math Kernel" in line or "backend" in line]
    try:
        numpy_blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        numpy_blas = f"{numpy_blas.get('name')} {numpy_blas.get('version')}"
    except Exception:  # the layout of numpy's build information is not an API
        numpy_blas = None
    return {"torch_blas": blas, "torch_parallel": parallel, "numpy_blas": numpy_blas}


def environment(device: str, deterministic: dict, digests: dict) -> dict:
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(git_dirty()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        **math_libraries(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": device,
        # which machine and worker made the record: a Ray task names its node (bench.grid.backends)
        "host": platform.node(),
        "executor": os.environ.get("VAE_BENCH_EXECUTOR", "local"),
        "cuda_device": torch.cuda.get_device_name() if device == "cuda" else None,
        "deterministic": deterministic,
        "dataset_digests": digests,
    }


def history_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        # every column any row has, in order of appearance (rows may gain columns mid-run)
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def write_run(target: Path, *, config: dict, metrics: dict, history: list[dict], env: dict,
              state_dict: dict | None, previews: dict[str, np.ndarray] | None = None) -> Path:
    """Write a run directory atomically; an existing complete ``target`` is left untouched. A
    run whose metrics do not make a finished record (``schema.metrics_problem``: a NaN NLL) is
    written as failed, with the reason, not as a record every resume would set aside."""
    problem = metrics_problem(metrics)
    if problem and metrics.get("status") == "ok":
        metrics = {**metrics, "status": "failed", "error": f"its metrics are not a finished "
                   f"record: {problem}"}
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(f"{target} exists; run directories are never overwritten")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, obj in (("config.json", config), ("metrics.json", metrics), ("env.json", env)):
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        (tmp / "history.csv").write_text(history_csv(history))
        if state_dict is not None:
            save_torch(state_dict, tmp / "model.pt")
        if previews:
            np.savez_compressed(tmp / "previews.npz", **previews)
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, target)  # atomic; fails if another writer got there first
        except OSError:
            if not (target / "metrics.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the same run, finished elsewhere: keep it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@contextlib.contextmanager
def run_lock(target: Path):
    """Hold an exclusive lock on one run across processes (released by the kernel even when the
    holder is killed), and remove the orphaned temporary directories of killed writers."""
    locks = target.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{target.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for orphan in target.parent.glob(f".{target.name}.*"):
                shutil.rmtree(orphan, ignore_errors=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_writable(directory: Path) -> None:
    """Fail before any work if results cannot be written under ``directory``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as e:
        raise OSError(e.errno, f"results directory is not writable ({e.strerror})",
                      str(directory)) from None


def write_json(path: Path, record: dict) -> None:
    """``record`` as JSON at ``path``, whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """The JSON document at ``path``; ValueError for a path that is there but not a regular
    file (a FIFO would block the reader forever, a directory or device is no record)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    why = too_big(path) if path.exists() else None
    if why:
        raise ValueError(f"{path} {why}; not read")
    return json.loads(path.read_text())


def too_big(path: Path) -> str | None:
    """Why the file at ``path`` cannot be read whole here (larger than the memory the process
    may still use, ``bench.machine.budget``: read, it would take the machine down), else None."""
    from .machine.budget import available_bytes

    size, room = path.stat().st_size, available_bytes()
    if room is not None and size > room:
        return f"is {_bytes(size)}, more than the {_bytes(room)} this process may still use"
    return None


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 \
        else f"{n} bytes"


def history_problem(path: Path) -> str | None:
    """Why ``path`` (a run's history.csv) is not a history the report can read: not UTF-8
    text, a row with another number of fields than the header, an epoch that is not a count."""
    if path.exists() and not path.is_file():
        return f"{path}: not a regular file"
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        return f"{path}: not UTF-8 text"
    if not lines:
        return None  # a run that trained no epoch
    rows = list(csv.reader(lines))
    head = rows[0]
    if not head or head[0] != "epoch":
        return f"{path}: no epoch column"
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(head):
            return f"{path}, line {i}: {len(row)} fields where the header has {len(head)}"
        if not row[0].isdigit():
            return f"{path}, line {i}: epoch {row[0]!r} is not a count"
    return None


#: errors of the machine, not of the model: such a failure is retried, never trusted as a result
TRANSIENT = ("OSError", "PermissionError", "FileNotFoundError", "MemoryError", "DataError",
             "BrokenProcessPool", "unexpected pos", "enforce fail", "No space left",
             "can't allocate memory", "has status 'failed'")  # (the last: its decoder's)


def damage(path: Path) -> str | None:
    """Why the run directory ``path`` is not a complete, readable record (None: it is)."""
    try:
        metrics = read_json(path / "metrics.json")
    except FileNotFoundError:
        return f"{path}: no metrics.json"
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        return f"{path / 'metrics.json'}: unreadable ({type(e).__name__})"
    problem = metrics_problem(metrics)  # the record's schema (bench.schema)
    if problem:
        return f"{path / 'metrics.json'}: {problem}"
    try:
        config = read_json(path / "config.json")
        if not isinstance(config, dict) or not {"variant", "model", "train", "eval"} <= set(config):
            return f"{path / 'config.json'}: not a run config"
        env = read_json(path / "env.json") if (path / "env.json").exists() else {}
        if not isinstance(env, dict):
            return f"{path / 'env.json'}: not a JSON object"
        return history_problem(path / "history.csv")
    except FileNotFoundError as e:
        return f"{e.filename}: missing"
    except (OSError, ValueError) as e:
        return f"{path}: config.json, env.json or history.csv unreadable ({type(e).__name__})"


def retry_reason(path: Path) -> str | None:
    """Why a complete record must be trained again: a failure of the machine (disk, memory, an
    interrupted dependency), recorded by an earlier version or a transient fault."""
    metrics = read_json(path / "metrics.json")
    error = str(metrics.get("error", ""))
    if metrics.get("status") == "failed" and (metrics.get("transient")
                                              or any(t in error for t in TRANSIENT)):
        return f"{path}: failed for a reason of the machine, not the model ({error[:80]})"
    return None


def finished(path: Path) -> bool:
    """Whether ``path`` holds a record a resume may trust."""
    return path.is_dir() and damage(path) is None and retry_reason(path) is None


def set_aside(path: Path, why: str) -> Path:
    """Move a damaged or retried run directory to ``.damaged/`` beside it (never deleted), with
    a one-line report on stderr; returns where it went."""
    dest = path.parent / ".damaged" / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    print(f"vae-bench: {why}; moved to {dest} and trained again", file=sys.stderr)
    return dest


def save_torch(obj, path: Path) -> None:
    """torch.save whose failures are OSErrors in one line (torch reports a full disk as a
    RuntimeError "... unexpected pos ..."), leaving no partial file."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (RuntimeError, OSError) as e:
        path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise
        free = shutil.disk_usage(path.parent).free
        raise OSError(errno.ENOSPC if free < 2**26 else errno.EIO,
                      f"cannot write {path.name} ({str(e).splitlines()[0][:80]}; "
                      f"{free / 2**20:.0f} MiB free)", str(path)) from None
