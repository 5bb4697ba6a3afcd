"""Pretrained encoder + free bits (Li et al. 2019, EMNLP-IJCNLP, "A surprisingly effective fix for
deep latent variable modeling of text", section 3), as their code (bohanli/vae-pretraining-encoder
``text_beta.py``) runs it:

1. an autoencoder phase: the same model trained with KL weight 0 (z still sampled) until its
   validation loss (the reconstruction term, ``val_recon``) stops improving: after ``ae_patience``
   epochs without a new best the learning rate is halved, and the phase ends at the
   ``ae_halvings``-th halving or after ``ae_epochs`` epochs (a cap), whichever comes first; the
   weights of its best epoch are then loaded back;
2. the decoder is re-drawn from a fresh initialization (``decoder_init = "fresh"``: the run's own
   ``redraw`` stream, as their ``vae.decoder.reset_parameters``) - or, for the lagging comparison,
   set back to the weights the run started from (``decoder_init = "start"``: in the lagging
   set-up, the pretrained decoder) - with fresh optimizers at the base learning rate;
3. VAE training with the KL weight annealed linearly from 0 to 1 over the first ``warmup`` of the
   remaining steps (or over ``warmup_epochs`` epochs, their script's count), and free bits per
   example and unit (their ``fb=2``, target 8 over nz = 32: 0.25 nats per unit;
   ``variants.free_bits``).

Their script: patience 5 epochs (from epoch 15), 5 halvings, up to 100 epochs, then 10 epochs of
annealing. The defaults here (patience 1, 2 halvings, a cap of half the run, half of the VAE
phase annealed) scale that to the short profiles; the autoencoder phase counts within
``train.epochs``, so every method gets the same number of steps, and settings that leave no VAE
phase are refused. Other differences from their scripts (text, LSTM decoders, SGD at lr 1 with
its own decay) are the shared protocol's choices (Adam, clip 5, ``train.*``).
``ae_epochs = 0, warmup = 0, lambda = 0`` is exactly `vae`.

With KL weight 0 nothing holds the posterior means at the prior: they can drift together as a
shared bias and saturate a tanh decoder, which then reads nothing of z for a while (the default
profile's MLP: about 450 steps, longer than its 400-step phase; `benchmarks/ae_phase.py`).
"""

import math

from . import register
from .annealing import WARMUP_EPOCHS, linear, ramp_steps
from .base import Param, Variant
from .errors import ConfigError
from .free_bits import free_bits


@register("pretrained-encoder")
class PretrainedEncoder(Variant):
    paper = "Li et al. 2019, EMNLP-IJCNLP, section 3 (autoencoder phase to convergence, decoder " \
            "re-drawn, annealing, fb=2)"
    params = {
        "ae_epochs": Param(-1, "most epochs of the autoencoder phase (a cap), within "
                           "train.epochs; -1: half of them, rounded down", low=-1),
        "ae_patience": Param(1, "autoencoder epochs without a new best validation loss before the "
                             "learning rate is halved (Li et al.: 5)", low=1),
        "ae_halvings": Param(2, "the autoencoder phase ends at this halving (Li et al.: 5)", low=1),
        "decoder_init": Param("fresh", "the decoder after the autoencoder phase: fresh (a new "
                              "random draw, Li et al.) or start (the run's starting weights)",
                              choices=("fresh", "start")),
        "warmup": Param(0.5, "fraction of the steps after it over which the KL weight ramps "
                        "from 0 to 1", low=0.0, high=1.0),
        "lambda": Param(0.25, "free nats per example and unit (Li et al. fb=2)", low=0.0),
        "warmup_epochs": WARMUP_EPOCHS,
    }
    neutral = {"ae_epochs": 0, "warmup": 0.0, "lambda": 0.0}

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.ae_steps = None if self.hp["ae_epochs"] else 0  # known once the phase has ended
        self.best, self.best_weights, self.bad, self.halvings = math.inf, None, 0, 0

    def cap(self, epochs: int) -> int:
        """The autoencoder phase's most epochs in a run of ``epochs``."""
        return epochs // 2 if self.hp["ae_epochs"] < 0 else self.hp["ae_epochs"]

    def check_protocol(self, train) -> None:
        cap = self.cap(train.epochs)
        if self.hp["ae_epochs"] and not 0 < cap < train.epochs:
            raise ConfigError(f"pretrained-encoder: ae_epochs={self.hp['ae_epochs']} leaves no "
                              f"{'autoencoder' if cap == 0 else 'VAE'} phase in train.epochs="
                              f"{train.epochs}; allowed: 0 < ae_epochs < train.epochs (-1: half "
                              "of them, for train.epochs >= 2)")
        if self.hp["ae_epochs"] and train.validation_size == 0:
            raise ConfigError("pretrained-encoder: its autoencoder phase stops on the validation "
                              "loss; allowed: train.validation_size > 0")

    def epoch_end(self, trainer, diagnostics):
        if self.ae_steps is not None:
            return {"phase": "vae"}
        loss = diagnostics["val_recon"]
        if loss < self.best:
            self.best, self.best_weights, self.bad = loss, trainer.weights(), 0
        else:
            self.bad += 1
            if self.bad >= self.hp["ae_patience"]:
                self.halvings, self.bad = self.halvings + 1, 0
        if self.halvings >= self.hp["ae_halvings"] or trainer.epoch >= self.cap(trainer.epochs):
            trainer.load_weights(self.best_weights)
            if self.hp["decoder_init"] == "fresh":
                trainer.redraw("decoder")
            else:
                trainer.reset("decoder")
            self.ae_steps, self.best_weights, self.halvings = trainer.step, None, 0
        return {"phase": "autoencoder"}

    def lr_factor(self, step, total_steps):
        return 0.5 ** self.halvings

    anneals = True

    def kl_weight(self, step, total_steps):
        if self.ae_steps is None:
            return 0.0
        ramp = ramp_steps(self, self.hp["warmup"], total_steps - self.ae_steps)
        return linear(step - self.ae_steps, ramp) if ramp else 1.0

    def regularizer(self, kl):
        if not self.hp["lambda"]:
            return super().regularizer(kl)
        return free_bits(kl, self.hp["lambda"], "dimension")
