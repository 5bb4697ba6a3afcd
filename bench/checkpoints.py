"""Mid-run checkpoints: a run's complete training state, written atomically beside it, so a
killed run resumes to the same numbers as one never stopped (``bench.train.fit``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch


def snapshot(epoch: int, step: int, trainer, variant, streams, result, seconds: float,
             convergence=None) -> dict:
    """Everything training needs to go on exactly as if never stopped: weights, every optimizer,
    every random stream (the run's named ones and torch's global one), the history so far, the
    variant's state and the weights the run started from. Tensors, numbers, strings, lists
    and dicts only, so it loads with ``weights_only=True``."""
    rng = {name: getattr(streams, name).get_state() for name in vars(streams)}
    rng["global"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"epoch": epoch, "step": step, "model": trainer.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in trainer._optimizers.items()},
            "lr": trainer.lr, "factor": trainer._factor, "initial": trainer._initial,
            "rng": rng, "history": result.history, "variant": variant.state(),
            "seconds": seconds, "diagnostics_seconds": result.diagnostics_seconds,
            "convergence": convergence.state() if convergence is not None else None}


def restore(state: dict, trainer, variant, streams, result, convergence=None):
    """Load a ``snapshot``; returns (first epoch to train, step, seconds trained before)."""
    trainer.model.load_state_dict(state["model"])
    trainer._initial = state["initial"]
    trainer._optimizers.clear()
    trainer.lr, trainer._factor = state["lr"], state["factor"]
    for part, sd in state["optimizers"].items():
        trainer.optimizer(part).load_state_dict(sd)
    for name, st in state["rng"].items():
        if name == "global":
            torch.set_rng_state(st)
        elif name == "cuda":
            torch.cuda.set_rng_state_all(st)
        else:
            getattr(streams, name).set_state(st)
    variant.load_state(state["variant"])
    result.history = list(state["history"])
    result.diagnostics_seconds = state["diagnostics_seconds"]
    if convergence is not None and state.get("convergence") is not None:
        convergence.load_state(state["convergence"])
    return state["epoch"] + 1, state["step"], state["seconds"]


class Checkpoints:
    """Checkpoints of one run in their own folder beside it, ``epoch-NNNNNN.pt``, each written
    to a temporary file and renamed into place (atomic); the latest two are kept. ``latest()``
    returns the newest one that loads (``weights_only=True``); one that does not is reported on
    stderr, in one line, and the one before it is tried, then a start from zero: never a
    silent resume from garbage."""

    def __init__(self, folder, every: int, keep: int = 2):
        self.folder, self.every, self.keep = Path(folder), every, keep

    def files(self) -> list:
        return sorted(self.folder.glob("epoch-*.pt")) if self.folder.is_dir() else []

    def latest(self) -> dict | None:
        for path in reversed(self.files()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated, corrupt, or not a checkpoint
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                print(f"vae-bench: checkpoint {path} is unreadable ({first[:120]}); "
                      "using the one before it, or starting from zero", file=sys.stderr)
        return None

    def save(self, epoch: int, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"epoch-{epoch:06d}.pt"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in self.files()[:-self.keep]:
            old.unlink()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
