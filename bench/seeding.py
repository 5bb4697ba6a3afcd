"""One seed -> named, independent random streams (docs/design.md, section 2, item 5).

A variant that draws more or fewer random numbers (IWAE's k samples, Gumbel noise) can therefore
never change the data order, the binarization or the initialization of another variant's run.
The evaluation stream hangs off the evaluation seed alone, so evaluation noise is the same for
every training seed, variant and batch size.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch


def derive(seed: int, *names: str | int) -> int:
    """A 63-bit seed derived from ``seed`` and a path of names (stable across platforms)."""
    keys = [seed] + [zlib.crc32(n.encode()) if isinstance(n, str) else n for n in names]
    return int(np.random.SeedSequence(keys).generate_state(2, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *names: str | int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive(seed, *names))


@dataclass
class Streams:
    """The training streams of one run: data order, binarization, z-noise. (Parameter init draws
    from the global generator seeded with ``derive(seed, "init")`` inside ``fork_rng``, because
    nn.Linear initializes from it; see ``bench.training.model.build_model``.)"""

    data: torch.Generator
    binarize: torch.Generator
    noise: torch.Generator
    procedure: torch.Generator  # what a variant's training procedure draws (fresh minibatches)
    redraw: torch.Generator  # fresh initializations a procedure asks for (Trainer.redraw)

    @classmethod
    def from_seed(cls, seed: int, device: str | torch.device = "cpu") -> Streams:
        # data order and binarization happen on the CPU; z-noise is drawn on the device.
        return cls(generator(seed, "data"), generator(seed, "binarize"),
                   generator(seed, "noise", device=device), generator(seed, "procedure"),
                   generator(seed, "redraw"))


def set_deterministic(enabled: bool) -> dict:
    """Set torch's deterministic flags and return what was set (recorded in env.json)."""
    if enabled:  # deterministic cuBLAS needs a fixed workspace (PyTorch reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False
    return {"use_deterministic_algorithms": enabled, "cudnn.deterministic": enabled,
            "cudnn.benchmark": False,
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
