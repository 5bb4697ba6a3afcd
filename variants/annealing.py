"""KL annealing: the KL weight w(step) in [0, 1] follows a schedule over the run.

- ``linear``: w = step / (warmup * T), then 1 (the warm-up of Sønderby et al. 2016).
- ``sigmoid``: a logistic ramp centred at half the warm-up (Bowman et al. 2016, section 3.1).
- ``cyclical``: M cycles over the run; in each, w ramps linearly from 0 to 1 over the first
  fraction R of the cycle and stays at 1 (Fu et al. 2019, NAACL, eq. 5; defaults M = 4, R = 0.5).
  Their PTB script also restarts a cosine learning rate every cycle, a confounder of the
  schedule: off by default, ``lr_restarts = true`` turns it on (lr x (1 + cos(pi tau)) / 2 at
  position tau of each cycle).

The schedules are pure functions of the step; ``warmup = 0`` gives w = 1 throughout, i.e. `vae`.
``warmup_epochs`` counts the ramp in epochs (``Variant.steps_per_epoch``) for runs whose length
the convergence protocol decides; bn-vae, du-vae and pretrained-encoder take the same key
(``ramp_steps``).

Reference code vs the shared protocol: Bowman et al. anneal an LSTM text model trained with SGD;
He et al.'s image script (and Li et al., BN-VAE) ramp linearly over their first 10 epochs, He et
al. from kl_start 0.1, the others from 0; here the ramp starts at 0 and spans ``warmup`` of the
run, under the shared protocol (Adam, clip 5, ``train.*``).
"""

import math

from . import register
from .base import Param, Variant

#: a warm-up counted in epochs, for variants whose ramp is otherwise a fraction of the run: under
#: the convergence protocol the cap is not the run's length, and the reference scripts count
#: their ramps in epochs (He et al., Li et al., BN-VAE, DU-VAE: `--warm_up 10`)
WARMUP_EPOCHS = Param(0, "ramp over this many epochs instead of `warmup` of the run (the "
                      "reference scripts: 10); 0: use warmup", low=0, late=True)


def ramp_steps(variant: Variant, fraction: float, steps: int) -> float:
    """The warm-up's length in steps: ``warmup_epochs`` epochs when set, else ``fraction`` of
    ``steps`` (the run's, or what is left of it)."""
    epochs = variant.hp.get("warmup_epochs", 0)
    return epochs * variant.steps_per_epoch if epochs else fraction * steps


def linear(step: int, ramp_steps: float) -> float:
    return 1.0 if step >= ramp_steps else step / ramp_steps


def sigmoid(step: int, ramp_steps: float, steepness: float = 10.0) -> float:
    """1 / (1 + exp(-s (step / ramp - 1/2))): 0.5 at half the ramp, ~0.007 at 0, ~0.993 at its end."""
    if ramp_steps <= 0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-steepness * (step / ramp_steps - 0.5)))


def cyclical(step: int, total_steps: int, cycles: int, ratio: float) -> float:
    period = total_steps / cycles
    tau = (step % period) / period
    return 1.0 if ratio == 0 or tau >= ratio else tau / ratio


@register("kl-anneal")
class KLAnnealing(Variant):
    paper = "Bowman et al. 2016 (linear, sigmoid); Fu et al. 2019, NAACL (cyclical)"
    params = {
        "schedule": Param("linear", "shape of w(step)", choices=("linear", "sigmoid", "cyclical")),
        "warmup": Param(0.5, "linear/sigmoid: fraction of the run spent ramping", low=0.0, high=1.0),
        "cycles": Param(4, "cyclical: number of cycles M over the run", low=1),
        "ratio": Param(0.5, "cyclical: fraction R of each cycle spent ramping", low=0.0, high=1.0),
        "lr_restarts": Param(False, "cyclical: also restart a cosine learning rate every cycle "
                             "(Fu et al.'s PTB script)", late=True),
        "warmup_epochs": Param(0, "linear/sigmoid: ramp over this many epochs instead of a "
                               "fraction of the run (Davidson et al. 2018: 100; a run that stops "
                               "early has no known length); 0: use warmup", low=0, late=True),
    }

    neutral = {"schedule": "linear", "warmup": 0.0}

    anneals = True

    def kl_weight(self, step, total_steps):
        kind, hp = self.hp["schedule"], self.hp
        if kind == "cyclical":
            return cyclical(step, total_steps, hp["cycles"], hp["ratio"])
        ramp = hp["warmup_epochs"] * self.steps_per_epoch if hp["warmup_epochs"] \
            else hp["warmup"] * total_steps
        return linear(step, ramp) if kind == "linear" else sigmoid(step, ramp)


    def lr_factor(self, step, total_steps):
        if not (self.hp["lr_restarts"] and self.hp["schedule"] == "cyclical"):
            return 1.0
        period = total_steps / self.hp["cycles"]
        return 0.5 * (1.0 + math.cos(math.pi * (step % period) / period))
