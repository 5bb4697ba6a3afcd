"""Pretrained encoder + free bits (Li et al. 2019, CoNLL, "A surprisingly effective fix for deep
latent variable modeling of text", section 3): first the same model is trained as an autoencoder
(KL weight 0, z still sampled) for ``ae_epochs``; then the decoder is re-initialized - set back to
the weights the run started from, i.e. the fresh initialization of the run's seed (in the lagging
set-up, the pretrained decoder) - with fresh optimizer state, and training goes on with the KL
weight annealed linearly from 0 to 1 over the first ``warmup`` of the remaining steps (Li et al.:
10 epochs) and free bits per example and unit (their ``fb=2``, target 8 over nz = 32: 0.25 nats
per unit; ``variants.free_bits``).

The autoencoder phase counts within ``train.epochs``, so every method gets the same number of
steps. ``ae_epochs = 0, warmup = 0, lambda = 0`` is exactly `vae`.
"""

from . import register
from .annealing import linear
from .base import Param, Variant
from .free_bits import free_bits


@register("pretrained-encoder")
class PretrainedEncoder(Variant):
    paper = "Li et al. 2019, CoNLL, section 3 (autoencoder phase, decoder reset, annealing, fb=2)"
    params = {
        "ae_epochs": Param(1, "epochs of the autoencoder phase, within train.epochs", low=0),
        "warmup": Param(0.5, "fraction of the steps after it over which the KL weight ramps "
                        "from 0 to 1", low=0.0, high=1.0),
        "lambda": Param(0.25, "free nats per example and unit (Li et al. fb=2)", low=0.0),
    }
    neutral = {"ae_epochs": 0, "warmup": 0.0, "lambda": 0.0}

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.ae_steps = None if self.hp["ae_epochs"] else 0  # known once the phase has ended

    def epoch_end(self, trainer, diagnostics):
        if self.ae_steps is None and trainer.epoch == self.hp["ae_epochs"]:
            trainer.reset("decoder")
            self.ae_steps = trainer.step
        return {"phase": "autoencoder" if trainer.epoch <= self.hp["ae_epochs"] else "vae"}

    def kl_weight(self, step, total_steps):
        if self.ae_steps is None:
            return 0.0
        ramp = self.hp["warmup"] * (total_steps - self.ae_steps)
        return linear(step - self.ae_steps, ramp) if ramp else 1.0

    def regularizer(self, kl):
        if not self.hp["lambda"]:
            return super().regularizer(kl)
        return free_bits(kl, self.hp["lambda"], "dimension")
