"""Where a grid's runs execute: in this process or a process pool (``local``), or one Ray task
per run on a cluster (``ray``). Each yields the statuses of the runs as they finish."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

from variants.errors import ConfigError

from ..config import RunConfig, to_dict
from ..identity import ResolvedRun, resolve_run, run_name
from ..machine.interrupt import is_ctrl_c
from ..results import TRANSIENT, environment, read_json, write_run


def transient(error: BaseException) -> bool:
    """A failure of the machine (disk, memory, data not there), not of the run's model."""
    return isinstance(error, (OSError, MemoryError)) or \
        any(t in f"{type(error).__name__}: {error}" for t in TRANSIENT)


def run_one(run: ResolvedRun | RunConfig, out: Path | str, data_dir: str | None,
            threads: int) -> str:
    """Run one grid point (a resolved run in this process; its resolved config in a worker,
    which resolves it once there). A failure of the model or its config becomes a record with
    status 'failed' and its error; a failure of the machine (``transient``) is reported on
    stderr in one line and not recorded, so the next resume trains the run again."""
    from ..machine.allocator import tune
    from ..machine.isolation import pin_threads
    from .runner import execute

    tune()  # in every worker process, whatever the backend
    out = Path(out)
    cfg = run.config if isinstance(run, ResolvedRun) else run
    if threads and cfg.numerics != "portable":  # portable numerics fix their own thread count
        pin_threads(threads)
    try:  # a worker resolves here, inside: a check that fails there (memory) is recorded too
        run = resolve_run(run)
        return read_json(execute(run, out, data_dir) / "metrics.json")["status"]
    except BaseException as e:  # recorded, and the grid goes on; user code may raise anything
        if is_ctrl_c(e):  # the user's Ctrl-C ends the grid (a KeyboardInterrupt raised by a
            raise         # variant is that run's failure)
        target = out / (run.name if isinstance(run, ResolvedRun) else run_name(cfg))
        first = (str(e).strip().splitlines() or [""])[0]
        error = f"{type(e).__name__}: {first}" if first else type(e).__name__
        if transient(e):
            print(f"vae-bench: {target.name} not recorded, retried on resume: {error}",
                  file=sys.stderr)
            return "failed (not recorded: retried on resume)"
        record_failure(cfg, target, error, traceback.format_exc())
        return "failed"


def run_unit(unit: list, out: Path | str, data_dir: str | None, threads: int) -> list[str]:
    """A unit of a grid's work (``bench.grid.stack.pack``): one run (``run_one``), or a stack of
    runs of one configuration trained together (``bench.grid.stack.execute_stack``); the
    statuses of its runs. A stack that fails as a whole (its code raised) is not recorded:
    its runs then train alone, where a run's own failure is recorded as such."""
    if len(unit) == 1:
        return [run_one(unit[0], out, data_dir, threads)]
    from ..machine.allocator import tune
    from .stack import execute_stack

    tune()
    try:
        paths = execute_stack([resolve_run(r) for r in unit], Path(out), data_dir)
        return [read_json(p / "metrics.json")["status"] for p in paths]
    except BaseException as e:
        if is_ctrl_c(e):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"vae-bench: a stack of {len(unit)} runs failed ({type(e).__name__}: {first}); "
              "they train alone", file=sys.stderr)
        return [run_one(r, out, data_dir, threads) for r in unit]


def record_failure(cfg: RunConfig, target: Path, error: str, trace: str = "") -> None:
    """A run that failed for a reason of its own, recorded as such (unless a record is there)."""
    if not target.exists():
        write_run(target, config=to_dict(cfg), history=[], state_dict=None,
                  metrics={"status": "failed", "error": error, "traceback": trace},
                  env=environment(cfg.device, {}, {}))


BACKENDS = ("local", "ray")
#: how long a Ray address may take to answer before the suite gives up (seconds)
RAY_CONNECT_TIMEOUT = 10.0


@contextmanager
def sigint_blocked():
    """SIGINT blocked in this thread while the body runs, delivered (as KeyboardInterrupt) when
    it ends: a pool worker spawned inside inherits the blocked signal through fork and exec, so
    a Ctrl-C to the process group while it still imports (before ``die_with_parent`` ignores
    SIGINT) cannot print a traceback from inside its import (stop 41's CI failure; Python's
    resource tracker starts the same way). Elsewhere than POSIX: nothing."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def die_with_parent(parent: int) -> None:
    """In a pool worker: be killed when the parent (pid ``parent``) dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG; elsewhere nothing), so no worker outlives a killed suite; a
    worker whose parent died while it was starting exits at once."""
    try:
        import ctypes

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        if hasattr(signal, "pthread_sigmask"):  # started blocked (sigint_blocked): a pending
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one is now dropped
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the parent died before the call (we were re-parented)
            os._exit(1)
    except (OSError, AttributeError):
        pass


def check_ray_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """ConfigError in one line for an address (``--ray-address``, else ``RAY_ADDRESS``) that is
    malformed, or where nothing answers within ``timeout`` seconds (Ray itself retries for
    minutes, warning every 10 s), in either form: HOST:PORT of a head, or ``ray://HOST:PORT``
    of a Ray client server, which also needs the client's library (``ray[client]``)."""
    name = "--ray-address"
    if address is None and os.environ.get("RAY_ADDRESS"):
        address, name = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if address in (None, "auto", "local"):
        return
    client = address.startswith("ray://")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} {address!r} is invalid; allowed: HOST:PORT of a Ray head "
                          "(ray start --head prints it), ray://HOST:PORT of a Ray client "
                          "server, auto, or none for a local Ray")
    if client:
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            raise ConfigError(f"{name} {address}: a ray:// address needs Ray's client (pip "
                              "install 'ray[client]'); allowed without it: HOST:PORT of the "
                              "head, or --backend local")
    import socket

    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as e:
        raise ConfigError(f"{name} {address}: nothing answers there within {timeout:g} s "
                          f"({e.strerror or type(e).__name__}); allowed: the address `ray start "
                          "--head` printed, or --backend local") from None
    with conn:
        heard = _http2_settings(conn)
    if heard is not None:
        raise ConfigError(f"{name} {address}: something listens there but it is not a Ray "
                          f"{'client server' if client else 'head'} ({heard}); allowed: the "
                          "address `ray start --head` printed, or --backend local")


#: the connection preface every HTTP/2 client sends first (RFC 9113, section 3.4)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _http2_settings(conn) -> str | None:
    """None where the peer answers as an HTTP/2 server does (a SETTINGS frame first: Ray's
    head and client server speak gRPC, which is HTTP/2), else what it did instead. Ray itself,
    pointed at another kind of listener, retries for minutes."""
    try:
        conn.sendall(HTTP2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return "it closed the connection" if not head else "it sent a few bytes, then closed"
            head += chunk
    except TimeoutError:
        return "it sends nothing back"
    except (ConnectionResetError, BrokenPipeError):
        return "it closed the connection"
    except OSError as e:
        return f"the connection failed: {e.strerror or type(e).__name__}"
    if head[3] != 0x4:  # frame type SETTINGS
        return f"it answers {head[:9]!r}, not an HTTP/2 SETTINGS frame"
    return None


_TRACKER_LEAK = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


def _quiet_resource_tracker() -> None:
    """Ctrl-C SIGKILLs the pool's workers on purpose (a run resumes from its checkpoint); the
    multiprocessing resource tracker, which then unlinks what they held, would print a two-line
    "leaked semaphore" warning after the CLI's one-line message. The tracker and the workers take
    their warning filters from ``sys.warnoptions`` when they start, so this one warning is
    silenced there (every other warning still shows)."""
    if _TRACKER_LEAK not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_LEAK)


def _local(units: list[list], out: Path, data_dir: str | None, jobs: int):
    """The embedded default: in this process for one job, else a process pool (a worker gets a
    unit's resolved configs and resolves them once, in its own process). ``units``: runs, or
    stacks of runs (``bench.grid.stack.pack``), each yielding its runs' statuses.

    A worker that dies (user code calling ``os._exit``, a segfault, the kernel's OOM killer)
    breaks the pool for every unit in it: the units left unfinished are rerun one at a time,
    each in a fresh worker of its own, so the unit that killed its worker is known; a stack
    that kills its worker again is split into its runs, and a run whose worker dies again
    alone is recorded as failed; the rest go back to the pool."""
    if jobs == 1:
        for unit in units:
            yield from run_unit(unit, out, data_dir, 0)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    _quiet_resource_tracker()
    todo = list(units)
    while todo:
        left = yield from _pool_pass(todo, out, data_dir, jobs, threads)
        todo = []
        for i, unit in enumerate(left):
            if (yield from _pool_pass([unit], out, data_dir, 1, threads)):  # it killed it alone
                if len(unit) > 1:
                    todo = [[run] for run in unit] + left[i + 1:]
                    break
                run = unit[0]
                record_failure(run.config, out / run.name, "its worker process died, in the pool "
                               "and again alone (os._exit, a crash or the OOM killer)")
                yield "failed"
                todo = left[i + 1:]
                break


def _pool_pass(units: list[list], out: Path, data_dir: str | None, jobs: int, threads: int):
    """Yields the statuses of ``units`` run in a pool of ``jobs`` workers; returns the units left
    unfinished because a worker died (empty when none did)."""
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: a forked child of a process that has run OpenMP threads can deadlock
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        with sigint_blocked():  # the workers start (on submit) with SIGINT blocked
            futures = {pool.submit(run_unit, [run.config for run in unit], out, data_dir,
                                   threads): unit for unit in units}
        seen = set()
        for fut in as_completed(futures):
            seen.add(fut)
            if isinstance(fut.exception(), BrokenProcessPool):
                break
            yield from fut.result()
        else:
            pool.shutdown()
            return []
        left = []
        for fut, unit in futures.items():  # finished before the break but not yet counted
            if fut.done() and fut.exception() is None:
                if fut not in seen:
                    yield from fut.result()
            else:
                left.append(unit)
        pool.shutdown(wait=True, cancel_futures=True)
        return left
    except BaseException:  # Ctrl-C (or a failure here): stop the workers now, not after runs
        workers = list(getattr(pool, "_processes", {}).values())
        for proc in workers:
            proc.kill()
        for proc in workers:
            proc.join(10)
        pool.shutdown(wait=True, cancel_futures=True)  # the pool's queues closed, not left to exit
        raise


def _ray_token_auth(address: str | None) -> None:
    """Connect the way Ray documents a cluster: `ray start --head` (Ray 2.60 turns token
    authentication on for clusters started that way and writes the token to ~/.ray/auth_token)
    accepts a driver only with RAY_AUTH_MODE=token. So, for an existing cluster, when a token is
    at hand and the user chose no mode, ask for token authentication."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        return  # a local Ray started by this driver
    if "RAY_AUTH_MODE" in os.environ:
        return  # the user's choice
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
            or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def cpus_for(cfg: RunConfig) -> int:
    """The CPUs a Ray task of this run reserves: as many as the threads it computes with (a
    portable run pins ``numerics.PORTABLE_THREADS``; a native one takes the task's 1), so a
    node never runs more threads than it has cores."""
    from ..machine import numerics

    return numerics.PORTABLE_THREADS if cfg.numerics == "portable" else 1


def _ray_task(cfgs: list[RunConfig], out: str, data_dir: str | None,
              threads: int) -> list[str]:
    """A Ray task: ``run_unit`` (one run or a stack), with the node that ran it recorded in
    its runs' env.json."""
    import ray

    os.environ["VAE_BENCH_EXECUTOR"] = f"ray node {ray.get_runtime_context().get_node_id()}"
    return run_unit(cfgs, out, data_dir, threads)


def _ray(units: list[list], out: Path, data_dir: str | None, address: str | None):
    """One Ray task per unit (a run, or a stack of runs: ``bench.grid.stack.pack``; ``cpus_for``
    CPUs, 1 GPU for cuda runs), retried when a worker dies. Every task writes its runs' records
    under ``out``, which must be on storage the workers share; the driver only counts statuses.
    ``address``: None starts a local Ray unless RAY_ADDRESS is set."""
    configs = [run.config for unit in units for run in unit]  # each task resolves its runs
    check_ray_address(address)
    _ray_token_auth(address)  # before ray is imported: it reads the mode as it loads
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray' needs the ray extra: pip install 'vae-bench[ray]'; "
                          "allowed without it: local") from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, configure_logging=False)
    except ConnectionError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"the Ray cluster refused or did not answer the driver ({first}); a "
                          "cluster started with `ray start --head` uses token authentication "
                          "(Ray >= 2.60): set RAY_AUTH_MODE=token and make its token available "
                          "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); allowed "
                          "without a cluster: --backend local") from None
    from ..machine import numerics

    need = max(cpus_for(cfg) for cfg in configs) if configs else 0
    most = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if need > most:  # Ray would wait for such a node forever
        raise ConfigError(f"a portable run reserves {need} CPUs (its pinned threads) and no node "
                          f"of this Ray cluster has more than {most:g}; allowed: nodes started "
                          f"with --num-cpus >= {need}, or numerics=native (1 CPU per run)")
    task = ray.remote(_ray_task)
    refs = []
    for unit in units:
        cfg = unit[0].config  # a stack's runs share all but the seed
        refs.append(task.options(num_cpus=cpus_for(cfg),
                                 num_gpus=1 if cfg.device == "cuda" else 0,
                                 max_retries=3, retry_exceptions=False,
                                 # a worker loads torch in the run's numerics mode (one that
                                 # loaded it otherwise runs the task in a fresh process of it)
                                 runtime_env={"env_vars": numerics.environment_for(cfg.numerics,
                                                                                   {})})
                    .remote([run.config for run in unit], str(out.resolve()), data_dir, 1))
    unit_of = dict(zip(refs, units, strict=True))
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        try:
            statuses = ray.get(done[0])
        except ray.exceptions.RayError as e:  # its worker died on every try (run_unit catches
            first = (str(e).strip().splitlines() or [""])[0][:200]  # what the runs raise)
            statuses = []
            for run in unit_of[done[0]]:
                record_failure(run.config, out / run.name, f"its Ray worker died on each of 4 "
                               f"tries ({type(e).__name__}: {first})")
                statuses.append("failed")
        yield from statuses
