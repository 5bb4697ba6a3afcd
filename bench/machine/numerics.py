"""Numerics modes: which CPU kernels decide the bits of a run (the ``numerics`` config key).

A float32 result depends on the order of its sums, and on a CPU that order is chosen at run time:

- MKL (torch's BLAS on x86-64) dispatches its GEMM kernels by instruction set and cache sizes.
  Conditional numerical reproducibility (``MKL_CBWR``) pins a code branch; ``AVX2`` is Intel's
  documented branch for identical results on every Intel CPU with AVX2, and ``STRICT`` makes
  GEMM independent of the thread count as well. Measured on the 2-core AMD EPYC (Zen 4, AVX-512)
  of CI: MKL already takes its AVX2 path there (``MKL_ENABLE_INSTRUCTIONS=AVX2`` and
  ``MKL_CBWR=AVX2`` change no bit of a 100x784 @ 784x200 product), and ``COMPATIBLE`` (SSE2)
  changes them and costs 3x per product, so AVX2 it is. Whether Intel's AVX2 branch and this
  AMD part give the same bits is not documented as guaranteed and could not be checked here (no
  Intel machine): ``vae-bench compare`` says what still holds when they do not.
- oneDNN (``torch.backends.mkldnn``) runs the convolutions (the PixelCNN) with JIT kernels chosen
  by instruction set (``ONEDNN_MAX_CPU_ISA`` changes their bits here) and blocked by cache size.
  Portable mode turns it off: convolutions then go through ATen's im2col and MKL's GEMM, which
  the branch above pins. The ISA cap is set too, for any path that still reaches oneDNN.
- ATen dispatches its vectorized kernels (elementwise functions, reductions, fused Adam) by CPU
  capability; ``ATEN_CPU_CAPABILITY=avx2`` pins them. (Measured here: AVX2 and AVX-512 kernels
  gave identical bits for every operation tried; the scalar ``default`` kernels did not.)
- The thread count splits large reductions (a 4M-element sum changes its bits between 1 and 2
  threads here): portable mode pins ``PORTABLE_THREADS`` intra-op threads, whatever the cores.

What cannot be made portable: a CPU without AVX2 and FMA (ATen and MKL fall back to other
kernels; env.json then records ``portable_guaranteed: false``), other architectures (ARM: other
libraries), CUDA (its own kernels; ``deterministic=true`` is the tool there), and the fast mode
``train.compile`` (inductor generates and compiles C++ for the CPU it runs on; portable
processes keep their own inductor cache, ``_portable_cache``).

The libraries read these variables once, when torch loads, so the mode of a process is decided
before torch is imported: ``prepare()`` runs as the ``bench`` package is imported (the CLI, the
process-pool and Ray workers, the tests all import it before torch), from ``VAE_BENCH_NUMERICS``
(default ``portable``). A run whose ``numerics`` differs from its process's runs in a fresh
process started in its mode (``run_in_mode``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

MODES = ("portable", "native")
DEFAULT = "portable"
MODE_VAR = "VAE_BENCH_NUMERICS"
PORTABLE_ENV = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2",
                "ONEDNN_MAX_CPU_ISA": "AVX2"}
PORTABLE_THREADS = 2

_loaded_under: str | None = None  # the mode torch was loaded under in this process


SAVED_VAR = "VAE_BENCH_NATIVE_ENV"  # what portable mode replaced, to give native mode back
CACHE_VAR = "TORCHINDUCTOR_CACHE_DIR"


def environment_for(mode: str, base: dict | None = None) -> dict:
    """The environment of a process that runs in ``mode`` (a copy of ``base``, os.environ).
    Portable mode sets ``PORTABLE_ENV`` and keeps what it replaced; native mode puts that back
    (the user's own settings, or none)."""
    env = dict(os.environ if base is None else base)
    saved = json.loads(env.pop(SAVED_VAR, "null"))
    if saved is not None:  # undo an earlier portable mode first
        for key, value in saved.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
    if mode == "portable":
        env[SAVED_VAR] = json.dumps({k: env.get(k) for k in (*PORTABLE_ENV, CACHE_VAR)})
        env.update(PORTABLE_ENV)
        env[CACHE_VAR] = _portable_cache(env.get(CACHE_VAR))
    env[MODE_VAR] = mode
    return env


def _portable_cache(own: str | None) -> str:
    """Inductor's cache for portable processes, apart from the native one: its keys do not
    include ATEN_CPU_CAPABILITY, and a kernel compiled in one mode and loaded in the other gave
    wrong results here (tests/test_fast_mode.py failed until the caches were separated)."""
    import getpass
    import tempfile

    if own:
        return own.rstrip("/") + "-portable"
    try:
        user = getpass.getuser()
    except Exception:  # no user name (containers)
        user = "unknown"
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{user}_portable")


def _inferred(env) -> str | None:
    """The mode an environment amounts to: portable, native, or None (a mix of the two)."""
    if all(env.get(k) == v for k, v in PORTABLE_ENV.items()):
        return "portable"
    if not any(k in env for k in PORTABLE_ENV):
        return "native"
    return None


def prepare(mode: str | None = None) -> str | None:
    """Set the process's mode before torch loads (``VAE_BENCH_NUMERICS``, default portable).
    If torch was imported already, nothing can change: the mode is read off the environment it
    loaded under (None if that was neither mode)."""
    global _loaded_under
    mode = mode or os.environ.get(MODE_VAR) or DEFAULT
    if mode not in MODES:
        raise ValueError(f"{MODE_VAR}={mode!r} is invalid; allowed: {', '.join(MODES)}")
    if "torch" in sys.modules:
        if _loaded_under is None:
            _loaded_under = _inferred(os.environ)
        return _loaded_under
    env = environment_for(mode)
    os.environ.clear()
    os.environ.update(env)
    _loaded_under = mode
    return mode


def active() -> str | None:
    """The mode this process's torch runs in (None: neither)."""
    return _loaded_under if _loaded_under is not None else _inferred(os.environ)


def apply(mode: str) -> None:
    """The settings that are made after torch loads, at the start of every run in ``mode``."""
    import torch

    if mode == "portable":
        torch.set_num_threads(PORTABLE_THREADS)
        torch.backends.mkldnn.enabled = False
    else:
        torch.backends.mkldnn.enabled = True


def cpu_flags() -> list[str]:
    """The instruction-set flags that decide kernels (/proc/cpuinfo on Linux)."""
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def record(mode: str) -> dict:
    """What decides the bits of a run, for env.json."""
    import torch

    flags = cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    return {
        "numerics": mode,
        "numerics_process": active(),
        "portable_guaranteed": mode == "portable" and active() == "portable"
        and {"avx2", "fma"} <= set(flags) and capability == "AVX2",
        "env": {k: os.environ.get(k) for k in (*PORTABLE_ENV, "MKL_ENABLE_INSTRUCTIONS",
                                               "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "aten_cpu_capability": capability,
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        **_library_versions(torch.__config__.show()),
        "threads": torch.get_num_threads(),
        "cpu_flags": flags,
    }


def _library_versions(config: str) -> dict:
    """MKL's and oneDNN's versions as torch's build configuration names them."""
    import re

    mkl = re.search(r"Math Kernel Library Version (.+?) for ", config)
    onednn = re.search(r"MKL-DNN (v[0-9.]+)", config)
    return {"mkl_version": mkl.group(1) if mkl else None,
            "onednn_version": onednn.group(1) if onednn else None}


@contextlib.contextmanager
def _environment(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_in_mode(mode: str, fn, *args):
    """``fn(*args)`` in a fresh process (spawned: torch loads anew) started in ``mode``."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with _environment(environment_for(mode)), \
            ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        future = pool.submit(fn, *args)
    return future.result()
