"""fit(): the training loop. It knows the Variant protocol and nothing about any variant."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .data import binarize


@dataclass
class FitResult:
    """Per-epoch history, and where training stopped if the loss stopped being finite."""

    history: list[dict] = field(default_factory=list)
    status: str = "ok"
    diverged_step: int | None = None
    train_seconds: float = 0.0
    steps: int = 0


def fit(model, variant, train_x: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
        streams, dynamic_binarization: bool, progress: bool = False) -> FitResult:
    """Adam on the variant's loss. Data order and binarization come from their own streams.

    Each epoch: one permutation from ``streams.data``; for binary data a fresh Bernoulli draw of
    the whole training split from ``streams.binarize`` (dynamic binarization).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(train_x)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    result, step = FitResult(), 0
    bar = tqdm(total=total, disable=not progress, unit="step", leave=False)
    start = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=streams.data).to(train_x.device)
        x_all = binarize(train_x.cpu(), streams.binarize).to(train_x.device) \
            if dynamic_binarization else train_x
        sums = torch.zeros(3, dtype=torch.float64, device=train_x.device)
        for i in range(per_epoch):
            x = x_all[order[i * batch_size:(i + 1) * batch_size]]
            loss, terms = variant.loss(model, x, step, total, streams.noise)
            if not torch.isfinite(loss):
                result.status, result.diverged_step = "diverged", step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                elbo = terms.elbo()
                sums += torch.stack([loss * len(x), -elbo.sum(), terms.kl.sum()]).double()
            step += 1
            bar.update()
        if result.status != "ok":
            break
        loss_m, nelbo_m, kl_m = (sums / n).tolist()
        elapsed = time.perf_counter() - start
        result.history.append({"epoch": epoch, "step": step, "loss": loss_m,
                               "neg_elbo": nelbo_m, "kl": kl_m, "seconds": elapsed})
        bar.set_postfix(neg_elbo=f"{nelbo_m:.2f}")
    bar.close()
    result.train_seconds, result.steps = time.perf_counter() - start, step
    return result
