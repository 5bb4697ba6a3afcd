"""Peak tensor memory of the importance sampler, counted per storage (not process RSS)."""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from variants.core import VAE
from variants.latents import GaussianLatent

from ..evaluation.metrics import encode, nll_is_points


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage created inside the block, on any device.

    Process RSS is not a measure of an algorithm's memory (the C allocator's fragmentation and
    caching dominate it), and CPU tensors have no allocator statistics; so every storage an
    operator returns is counted until it is freed (tracked with storage weak references).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def eval_peak_memory(k: int, points: int = 200, device: torch.device | None = None) -> float:
    """Peak MiB of tensors alive during nll_is at K (model and data excluded)."""
    device = device or torch.device("cpu")
    model = VAE(784, GaussianLatent(50)).to(device).eval()
    x = (torch.rand(points, 784, device=device) < 0.3).float()
    with torch.no_grad():
        q = encode(model, x)
        with PeakTensorMemory() as mem:
            nll_is_points(model, q, x, k, seed=0)
    return mem.peak / 2**20
