"""Mid-run checkpoints: a run's complete training state, written atomically beside it, so a
killed run resumes to the same numbers as one never stopped (``bench.training.trainer.fit``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from ..results import save_torch, too_big


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
    model = {k: v.clone() for k, v in trainer.model.state_dict().items()}  # not a view of a
    return {"epoch": epoch, "step": step, "model": model,                  # stack's weights
            "optimizers": {k: o.state_dict() for k, o in trainer._optimizers.items()},
            "lr": trainer.lr, "factor": trainer._factor, "initial": trainer._initial,
            "rng": rng, "history": result.history, "variant": variant.state(),
            "seconds": seconds, "diagnostics_seconds": result.diagnostics_seconds,
            "convergence": convergence.state() if convergence is not None else None}


#: what ``restore`` reads of a snapshot (``convergence`` is optional: older snapshots lack it)
SNAPSHOT_KEYS = frozenset({"epoch", "step", "model", "optimizers", "lr", "factor", "initial",
                           "rng", "history", "variant", "seconds", "diagnostics_seconds"})


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
    returns the newest one that loads (``weights_only=True``) and is a snapshot of this run (its
    ``identity``, and whatever ``check`` finds: the model's tensor names and shapes); one that is
    not is reported on stderr, in one line, and the one before it is tried, then a start from
    zero: never a silent resume from garbage, nor a crash on another run's file."""

    def __init__(self, folder, every: int, keep: int = 2, identity: str | None = None):
        self.folder, self.every, self.keep, self.identity = Path(folder), every, keep, identity

    def files(self) -> list:
        return sorted(self.folder.glob("epoch-*.pt")) if self.folder.is_dir() else []

    def latest(self, check=None) -> dict | None:
        for path in reversed(self.files()):
            try:
                problem = too_big(path)
                if problem is None:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    problem = self._foreign(state) or (check(state) if check else None)
            except Exception as e:  # truncated, corrupt, or not a checkpoint
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                problem = f"is unreadable ({first[:120]})"
            if problem is None:
                return state
            print(f"vae-bench: checkpoint {path} {problem}; using the one before it, or "
                  "starting from zero", file=sys.stderr)
        return None

    def _foreign(self, state) -> str | None:
        if not isinstance(state, dict) or not {"epoch", "step", "model", "rng"} <= set(state):
            return "is not a mid-run checkpoint"
        missing = sorted(SNAPSHOT_KEYS - set(state))
        if missing:  # what restore reads: a resume would fail on it every time
            return f"lacks {', '.join(missing)} of a mid-run checkpoint"
        run = state.get("run")
        if self.identity is not None and run is not None and run != self.identity:
            return f"is a snapshot of another run ({run})"
        return None

    def save(self, epoch: int, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"epoch-{epoch:06d}.pt"
        tmp = path.with_suffix(".tmp")
        save_torch({**state, "run": self.identity}, tmp)  # a full disk: one line, no tmp left
        os.replace(tmp, path)
        for old in self.files()[:-self.keep]:
            old.unlink()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def mismatch(state: dict, trainer) -> str | None:
    """Why ``state`` cannot be this trainer's model (another architecture or code version):
    the tensor names and shapes of its weights against the model's."""
    own = {k: tuple(v.shape) for k, v in trainer.model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
    if own != theirs:
        diff = sorted(set(own) ^ set(theirs)) or sorted(k for k in own if own[k] != theirs[k])
        return f"does not match this run's model (first difference: {diff[0]})"
    return None
