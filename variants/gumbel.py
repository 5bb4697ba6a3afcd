"""Categorical latent with the Gumbel-Softmax relaxation (Jang, Gu & Poole 2017, ICLR).

N categorical variables with C classes each (default 20 x 10, their MNIST set-up), uniform prior.
Training samples are relaxed one-hot vectors at temperature
    tau(t) = max(tau_min, tau0 * exp(-r * t)),  t rounded down to a multiple of n
(their section 4: r in {1e-5, 1e-4}, updated every n in {500, 1000} steps, tau_min = 0.5).
``hard = true`` is the straight-through Gumbel-Softmax (one-hot forward, relaxed gradient).

The KL term is the *analytic* KL between the categorical posterior and the uniform prior, not a
Monte-Carlo estimate on the relaxed sample (Jang et al. section 3.1 also use the categorical KL).
Evaluation uses discrete one-hot samples, so the reported ELBO and IS log-likelihood are those of
the discrete model (docs/design.md, section 3).

Reference code vs the shared protocol: the temperature schedule above is theirs; their optimizer
settings are not adopted, the shared protocol (Adam, clip 5, ``train.*``) applies.
"""

import math

from . import register
from .base import Param, Variant
from .latents import CategoricalLatent


def temperature(step: int, tau0: float, tau_min: float, rate: float, every: int) -> float:
    return max(tau_min, tau0 * math.exp(-rate * (step // every) * every))


@register("gumbel")
class GumbelSoftmax(Variant):
    paper = "Jang, Gu & Poole 2017, ICLR, Categorical reparameterization with Gumbel-Softmax"
    params = {
        "n_vars": Param(20, "number of categorical variables N", low=1),
        "n_classes": Param(10, "classes per variable C", low=2),
        "tau0": Param(1.0, "initial temperature", low=0.0, low_open=True),
        "tau_min": Param(0.5, "temperature floor", low=0.0, low_open=True),
        "rate": Param(1e-4, "annealing rate r per step", low=0.0),
        "every": Param(1000, "steps between temperature updates n", low=1),
        "hard": Param(False, "straight-through estimator (one-hot forward pass)"),
    }

    neutral = None  # a categorical latent: no setting reduces it to the Gaussian `vae`

    def latent(self, dim):
        return CategoricalLatent(self.hp["n_vars"], self.hp["n_classes"])

    def sample_options(self, step, total_steps):
        hp = self.hp
        tau = temperature(step, hp["tau0"], hp["tau_min"], hp["rate"], hp["every"])
        return {"tau": tau, "hard": hp["hard"]}
