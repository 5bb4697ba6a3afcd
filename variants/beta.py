"""beta-VAE (Higgins et al. 2017, ICLR, eq. 4): loss = recon + beta * KL. beta = 1 is `vae`.

Reference code vs the shared protocol: Higgins et al. use beta > 1 for disentanglement with
their own optimizer settings; the collapse comparisons (He et al. 2019, Table 1) use beta < 1
under the shared image protocol (Adam, clip 5), as here. He et al.'s beta-VAE script
(jxhe/vae-lagging-encoder `image_beta.py`) trains with the KL weighted by beta but validates with
the full -ELBO (`test` calls `model.loss(batch_data, 1.0)`), and its best-weights and
learning-rate-decay rule reads that: so does the convergence protocol here (`train.monitor =
val_neg_elbo`). Where beta < 1 spends its extra KL at the cost of the ELBO from the first epoch
on (the lagging MADE setting of the `trained` profile), that rule keeps the first epoch's weights.
"""

from . import register
from .base import Param, Variant


@register("beta")
class BetaVAE(Variant):
    paper = "Higgins et al. 2017, beta-VAE, ICLR, eq. 4"
    params = {"beta": Param(1.0, "weight of the KL term", low=0.0)}
    neutral = {"beta": 1.0}

    def regularizer(self, kl):
        return self.hp["beta"] * super().regularizer(kl)
