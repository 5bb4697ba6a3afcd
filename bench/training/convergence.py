"""The convergence protocol: when a run stops, and which weights are evaluated (and, at the
end, the learning rate's schedules by epoch: ``epoch_lr``).

Off by default (a run trains ``train.epochs`` epochs and its last weights are evaluated). With
``train.stop_patience`` or ``train.lr_decay_patience`` set, the run watches ``train.monitor`` (the
validation -ELBO, lower is better) at every epoch end and:

- keeps the best-on-validation weights (through mid-run checkpoints: a killed run resumes to
  the same numbers), which are the weights evaluated at the end;
- **early stopping** (``patience`` > 0): stops once the monitor has gone ``patience`` epochs
  without a new best (Davidson et al. 2018: patience 50 on the validation ELBO);
- **learning-rate decay on plateau** (``lr_decay_patience`` > 0), as He et al. 2019's image
  script (jxhe/vae-lagging-encoder ``image.py``) does it: a count of epochs whose loss is worse
  than the best (reset by any epoch that is not worse); when it reaches ``lr_decay_patience``,
  the learning rate is multiplied by ``lr_decay``, the best weights are reloaded and the
  optimizers start afresh; training stops at the ``max_decays``-th decay (theirs: 0.5, 5);
- ``train.epochs`` is the cap; ``train.protocol_from`` is the first epoch watched (before it
  nothing is counted and no best is kept: a KL warm-up, whose objective is not yet the ELBO;
  Li et al.'s script starts its decay rule at epoch 15 likewise). Whatever it says, an epoch
  that ends while the variant is still warming up (``Variant.warming_up``: an annealed KL
  weight below 1, an autoencoder phase) is not watched either, so one protocol fits every
  configuration of a grid whatever its warm-up.

Every run records where and why it stopped: ``stop_reason`` is ``patience`` or ``decays`` (the
rule fired: converged), ``cap`` (the epoch cap came first) or ``diverged``; ``best_epoch`` and
``stopped_epoch``. History rows gain ``best`` (the monitor's best so far) and ``bad_epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: history columns a run can be watched on (lower is better)
MONITORS = ("val_neg_elbo",)
CONVERGED = ("patience", "decays")


@dataclass
class Convergence:
    patience: int = 0
    lr_decay_patience: int = 0
    lr_decay: float = 0.5
    max_decays: int = 0
    monitor: str = "val_neg_elbo"
    start: int = 1  # the first epoch watched (``train.protocol_from``)
    best: float = math.inf
    best_epoch: int = 0
    bad: int = 0  # epochs since the best (early stopping)
    worse: int = 0  # He et al.'s count toward a decay
    decays: int = 0
    factor: float = 1.0  # the learning rate's factor from decays so far
    reason: str = ""
    best_weights: dict | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, train) -> Convergence:
        return cls(train.stop_patience, train.lr_decay_patience, train.lr_decay, train.max_decays,
                   train.monitor, train.protocol_from)

    @property
    def active(self) -> bool:
        return bool(self.patience or self.lr_decay_patience)

    def after_epoch(self, epoch: int, row: dict, weights, warming: bool = False) -> str:
        """Update on an epoch's history row; ``weights()`` gives a copy of the model's weights;
        ``warming``: the variant's objective is still a warm-up (``Variant.warming_up``).
        Returns what to do: "" (go on), "decay" (reload the best weights, fresh optimizers, the
        learning rate times ``factor``) or "stop"."""
        if epoch < self.start or warming:  # a KL warm-up: the objective is not yet the ELBO
            row.update({"best": None, "bad_epochs": None})
            return ""
        value = row.get(self.monitor)
        if value is None or not math.isfinite(value):
            raise ValueError(f"train.monitor {self.monitor!r} is not a finite history value "
                             f"at epoch {epoch}: {value!r}")
        action = ""
        if value < self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_weights = weights()
        else:
            self.bad += 1
        # He et al.: a loss worse than the best counts, one that is not resets the count
        self.worse = self.worse + 1 if value > self.best else 0
        if self.lr_decay_patience and self.worse >= self.lr_decay_patience:
            self.worse = 0
            self.decays += 1
            self.factor *= self.lr_decay
            action = "decay"
            if self.max_decays and self.decays >= self.max_decays:
                self.reason, action = "decays", "stop"
        if self.patience and self.bad >= self.patience and action != "stop":
            self.reason, action = "patience", "stop"
        row.update({"best": self.best, "bad_epochs": self.bad})
        return action

    def state(self) -> dict:
        """For mid-run checkpoints: every field (the best weights included)."""
        return dict(vars(self))

    def load_state(self, state: dict) -> None:
        vars(self).update(state)

    def summary(self, stopped_epoch: int, status: str) -> dict:
        """The metrics of where and why the run stopped."""
        reason = self.reason or ("diverged" if status != "ok" else "cap")
        return {"stop_reason": reason, "converged": reason in CONVERGED,
                "best_epoch": self.best_epoch, "stopped_epoch": stopped_epoch,
                "lr_decays": self.decays}


#: Burda et al. 2016, section 5: stage i = 0..7 trains 3^i epochs at lr 1e-3 * 10^(-i/7)
BURDA_STAGES = 8


def burda_stage(epoch: int) -> int:
    """The stage of 1-based ``epoch`` (epochs past the 3280 of the schedule stay in the last)."""
    end = 0
    for i in range(BURDA_STAGES):
        end += 3**i
        if epoch <= end:
            return i
    return BURDA_STAGES - 1


def epoch_lr(schedule: str, base: float, epoch: int) -> float:
    """The learning rate of ``epoch`` under ``schedule`` (``train.lr_schedule``)."""
    if schedule == "burda":
        return base * 10.0 ** (-burda_stage(epoch) / 7)
    return base
