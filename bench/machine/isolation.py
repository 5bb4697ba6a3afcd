"""The global state that decides a run's bits, put back before every run: user code cannot
change the numbers of the runs after it (docs/failures.md).

torch keeps process-wide settings that a variant may change, at import, construction or in any
step: the default dtype, the intra-op thread count, flushing denormals to zero, the float32
matmul precision, grad mode, anomaly detection, and the global random generators (torch's,
NumPy's, Python's). In an in-process suite each run would start from whatever the runs before it
left. ``reset`` puts each back as a fresh process has it (what a run alone sees) at the start of
every run: the settings as this process found them, torch's generator at its fixed starting
state, NumPy's and Python's freshly seeded from entropy, as every process starts them (so code
that draws from them unseeded stays irreproducible, which the variant contract detects). The
numerics mode's own settings (``numerics.apply``: threads and oneDNN in portable mode) and the
determinism flags (``seeding.set_deterministic``) are made after it, per run, as before.
``state`` is what env.json records (``torch_state``).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def _snapshot() -> dict:
    return {"default_dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "torch_rng": torch.get_rng_state()}


#: as this process found it, before any run or user code changed it
_FRESH = _snapshot()
#: the thread count of this process's runs where the backend chose one (a pool worker's share)
_threads: int | None = None


def pin_threads(n: int) -> None:
    """This process's runs compute with ``n`` intra-op threads (``reset`` keeps it)."""
    global _threads
    _threads = n
    torch.set_num_threads(n)


def reset(threads: int | None = None) -> None:
    """Every setting above as this process found it (denormals: not flushed, as torch starts);
    the thread count ``threads`` where the run's numerics mode fixes one."""
    torch.set_default_dtype(_FRESH["default_dtype"])
    want = threads or _threads or _FRESH["threads"]
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    torch.set_float32_matmul_precision(_FRESH["float32_matmul_precision"])
    torch.set_grad_enabled(True)
    torch.autograd.set_detect_anomaly(False)
    torch.set_flush_denormal(False)
    torch.set_rng_state(_FRESH["torch_rng"])  # torch starts every process from one fixed seed
    np.random.seed()  # NumPy and Python start each process from fresh entropy: so does a run
    random.seed()  # (code drawing from them unseeded stays visibly irreproducible: the contract)


def state() -> dict:
    """The global settings in force now (torch has no getter for denormal flushing: ``reset``
    turned it off)."""
    return {"default_dtype": str(torch.get_default_dtype()), "threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "grad_enabled": torch.is_grad_enabled(), "anomaly_detection": torch.is_anomaly_enabled(),
            "flush_denormal": False,
            "global_rngs": "torch's as a process starts; numpy's and random's freshly seeded"}
