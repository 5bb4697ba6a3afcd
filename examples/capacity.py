"""Controlled capacity increase (Burgess et al. 2018, "Understanding disentangling in β-VAE"):
minimize -E_q log p(x|z) + gamma |KL - C|, the target rate C rising linearly from 0 to c_max."""
from variants import Param, Variant


class CapacityVAE(Variant):
    paper = "Burgess et al. 2018, Understanding disentangling in beta-VAE"
    params = {"c_max": Param(25.0, "target KL at the end of training (nats)", low=0),
              "gamma": Param(1000.0, "weight of |KL - C|", low=0, low_open=True)}

    def objective(self, terms, step, total_steps):
        target = self.hp["c_max"] * min(1.0, step / max(1, total_steps))
        rate = self.regularizer(terms.kl)
        return self.hp["gamma"] * (rate - target).abs() - terms.log_px_z.mean()
