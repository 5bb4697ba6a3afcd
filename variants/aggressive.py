"""Aggressive inference-network training (He et al. 2019, ICLR, "Lagging inference networks and
posterior collapse in variational autoencoders", Algorithm 1), with the rules of their image code
(jxhe/vae-lagging-encoder ``image.py``):

- separate Adam optimizers for the encoder and the decoder; every step clipped like every other
  variant's (the shared ``train.clip``, 5 as in their code);
- for each outer minibatch X, while aggressive: encoder-only steps, the first on X and each next
  one on a fresh random minibatch (re-binarized), at most ``max_inner`` (99); every ``window``
  (10) steps the mean loss of the last 10 is compared with that of the 10 before, and the loop
  stops as soon as it went up (so at least 20 steps unless ``max_inner`` is smaller); then one
  step on X that updates the decoder only;
- at each epoch end the mutual information is estimated on the validation split as their
  ``calc_mi`` does it: per validation minibatch of ``mi_batch`` points (their training batch
  size, 50 on OMNIGLOT) with that minibatch's aggregate posterior, averaged over the minibatches
  (so it cannot exceed log mi_batch, and stops rising early); aggressive training ends after the
  ``patience``-th check (cumulative, never reset) on which it failed to beat its best (images: 5;
  their text code: 1, the first decrease). Then plain training. The report's MI is the pooled
  one, as for every run.

Deviation, deliberate: a clip covers the parameters that the step updates (their code also counts
the other part's gradients, which it computes and discards; here they are never computed).
Reference code vs the shared protocol: their image script (``config_omniglot.py``, ``image.py``)
trains at batch 50 for up to 1000 epochs, halves the learning rate after 20 epochs without a
better validation loss and stops at the 5th halving; here the shared ``train.*`` settings apply.
History columns: ``aggressive`` (1 for an epoch trained aggressively), ``inner_steps`` (mean
encoder-only steps per outer batch) and ``val_mutual_info_batch`` (the MI the rule read).
``max_inner = 0`` is exactly `vae`.
"""

import math

from . import register
from .base import Param, Variant
from .errors import ConfigError


class InnerStop:
    """The inner loop's rule: feed each step's loss; True once the mean of the latest ``window``
    losses is above the mean of the ``window`` before."""

    def __init__(self, window: int = 10):
        self.window, self.losses, self.previous = window, [], math.inf

    def update(self, loss: float) -> bool:
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return False
        mean, self.losses = sum(self.losses) / self.window, []
        went_up, self.previous = mean > self.previous, mean
        return went_up


class MIPatience:
    """The switch-off rule: feed each epoch-end mutual information; False (stop being aggressive)
    at the ``patience``-th value that does not beat the best so far."""

    def __init__(self, patience: int = 5):
        self.patience, self.best, self.failures = patience, -math.inf, 0

    def update(self, mi: float) -> bool:
        if mi > self.best:
            self.best = mi
        else:
            self.failures += 1
        return self.failures < self.patience


@register("aggressive")
class Aggressive(Variant):
    paper = "He et al. 2019, ICLR, Algorithm 1 (image code's rules)"
    params = {
        "max_inner": Param(99, "most encoder-only steps per outer batch (0: none)", low=0),
        "window": Param(10, "inner steps per loss mean of the stopping rule", low=1),
        "patience": Param(5, "epoch-end MI checks without a new best before aggressive training "
                          "ends (images 5, text 1)", low=1),
        "mi_batch": Param(50, "validation minibatch of the switch-off rule's MI (He et al.: "
                          "their batch size, 50)", low=2),
    }
    neutral = {"max_inner": 0}

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.aggressive = self.hp["max_inner"] > 0
        self.switch = MIPatience(self.hp["patience"])
        self.inner, self.outer = 0, 0

    def _inner_loop(self, trainer, x) -> bool:
        stop, batch = InnerStop(self.hp["window"]), x
        for _ in range(self.hp["max_inner"]):
            loss, _ = self.loss(trainer.net, batch, trainer.step, trainer.total, trainer.noise)
            if not trainer.update(loss, "encoder"):
                return False
            self.inner += 1
            if stop.update(loss.item()):
                break
            batch = trainer.fresh_batch()
        return True

    def train_step(self, trainer, x):
        if self.aggressive and not self._inner_loop(trainer, x):
            return None
        self.outer += 1
        loss, terms = self.loss(trainer.net, x, trainer.step, trainer.total, trainer.noise)
        parts = ("decoder",) if self.aggressive else ("encoder", "decoder")
        return (loss, terms) if trainer.update(loss, *parts) else None

    def check_protocol(self, train) -> None:
        if self.hp["max_inner"] and train.validation_size == 0:
            raise ConfigError("aggressive: its switch-off rule needs the validation mutual "
                              "information; allowed: train.validation_size > 0")

    def epoch_end(self, trainer, diagnostics):
        was, mi = self.aggressive, ""
        if was:
            mi = trainer.minibatch_mi(self.hp["mi_batch"])
            self.aggressive = self.switch.update(mi)
        row = {"aggressive": int(was), "inner_steps": self.inner / max(self.outer, 1),
               "val_mutual_info_batch": mi}
        self.inner, self.outer = 0, 0
        return row
