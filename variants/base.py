"""The Variant protocol: hooks with neutral defaults; the loss is assembled once, here.

A variant changes one thing by overriding one hook (docs/design.md, section 2, items 1 and 3):

- ``latent(dim)``: the latent family (default: diagonal Gaussian, N(0, I) prior);
- ``train_samples()``: samples of z per data point in a training step (default 1);
- ``sample_options(step, total_steps)``: options of the step's posterior and samples (e.g. a
  temperature);
- ``kl_weight(step, total_steps)``: the weight of the KL term over training (default 1);
- ``regularizer(kl)``: the KL term from the per-unit KL (default: its sum, batch-averaged);
- ``objective(terms, step, total_steps)``: the training loss from the terms;
- ``posterior_head(latent)``: a module between the encoder's outputs and the posterior's
  parameters (BatchNorm on the means, a committed rate; default none);
- ``decoder_options()``: options of the decoder family (z into every layer; default none);
- ``lr_factor(step, total_steps)``: the learning rate's factor over training (default 1);
- ``train_step(trainer, x)`` and ``epoch_end(trainer, diagnostics)``: the training procedure,
  one step on a minibatch and what happens at an epoch end (default: one step of the loss on
  every parameter; nothing). ``trainer`` (``bench.training.trainer.Trainer``) offers the step counters, the
  optimizers by part (model, encoder, decoder; every step clipped at ``train.clip``), fresh
  minibatches, the validation MI by minibatch, the weights (a snapshot, the initial ones, a
  fresh draw); a procedure never builds its own loop;
- ``check_protocol(train)``: refuse a training protocol the variant cannot work under;
- ``stacking()``: None where the seeds of one configuration may train together as one stacked
  model (``bench.training.stacked``), else why not (default: a variant with its own
  ``train_step`` does not stack).

Whatever a variant optimizes, the reported metrics use the unmodified ELBO (``bench.evaluation.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from .errors import ConfigError  # user code may import it from here too
from .latents import GaussianLatent


@dataclass(frozen=True)
class Param:
    """A declared hyperparameter: default (which also fixes the type), a doc line, and bounds."""

    default: bool | int | float | str
    doc: str
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    choices: tuple[str, ...] | None = None
    #: added after runs were recorded: part of a run's id only when set away from the default
    late: bool = False

    def allowed(self) -> str:
        kind = type(self.default).__name__
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return "true or false" if kind == "bool" else kind

    def parse(self, owner: str, name: str, value: object) -> bool | int | float | str:
        kind = type(self.default)
        bad = ConfigError(f"{owner}: {name}={value!r} is invalid; allowed: {self.allowed()}")
        try:
            if kind is bool:
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                    value = value.lower() in ("true", "1")
                if not isinstance(value, bool):
                    raise bad
            elif kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise bad
                value = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise bad
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise bad from None
        if self.choices and value not in self.choices:
            raise bad
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        if kind is float and value != value:  # NaN
            raise bad
        if kind is float and value in (float("inf"), float("-inf")):
            raise bad
        return value


class Variant:
    """The plain Gaussian VAE; subclasses override one hook each."""

    name: ClassVar[str] = "vae"
    paper: ClassVar[str] = "Kingma & Welling 2014, Auto-Encoding Variational Bayes"
    params: ClassVar[dict[str, Param]] = {}
    #: hyperparameters that reduce this variant exactly to `vae` ("X is Y with a knob turned");
    #: None where no setting does (a different latent family).
    neutral: ClassVar[dict | None] = {}
    #: None where the variant works with two stochastic layers (``variants.hierarchy``), else why
    #: not (a Gaussian latent without a posterior head is checked there; this is for the rest)
    two_layers: ClassVar[str | None] = None
    #: optimizer steps per epoch of the run being trained, set by the harness before training
    #: (``bench.training.trainer.fit``): for schedules counted in epochs
    steps_per_epoch: int = 0

    def __init__(self, **hparams: object):
        unknown = sorted(set(hparams) - set(self.params))
        if unknown:
            allowed = ", ".join(self.params) or "none"
            raise ConfigError(f"variant {self.name!r} has no hyperparameter {unknown[0]!r}; "
                              f"allowed: {allowed}")
        self.hp = {k: p.parse(self.name, k, hparams.get(k, p.default))
                   for k, p in self.params.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hp.items())
        return f"{type(self).__name__}({args})"

    # ---- hooks -------------------------------------------------------------------------------
    def latent(self, dim: int):
        return GaussianLatent(dim)

    def train_samples(self) -> int:
        return 1

    def sample_options(self, step: int, total_steps: int) -> dict:
        return {}

    def kl_weight(self, step: int, total_steps: int) -> float:
        return 1.0

    #: whether ``kl_weight`` ramps up to 1 (a KL warm-up, an autoencoder phase): see warming_up
    anneals: bool = False

    def warming_up(self, step: int, total_steps: int) -> bool:
        """Whether the objective at ``step`` is still a warm-up toward the run's final one (an
        annealing variant whose KL weight is below 1). The convergence protocol
        (``bench.training.convergence``) neither counts such epochs nor keeps their weights as the best:
        a warm-up's validation -ELBO may rise while the weight does, without any plateau."""
        return self.anneals and self.kl_weight(step, total_steps) < 1.0

    def regularizer(self, kl: Tensor) -> Tensor:
        """The KL term from the per-unit KL of shape (B, U): batch mean, then sum over units."""
        return kl.mean(0).sum()

    def objective(self, terms, step: int, total_steps: int) -> Tensor:
        """Negative ELBO with the analytic KL: -E_q log p(x|z) + w(step) * regularizer(KL)."""
        weight = self.kl_weight(step, total_steps)
        reg = self.regularizer(terms.kl)
        return (reg if weight == 1.0 else weight * reg) - terms.log_px_z.mean()

    def posterior_head(self, latent) -> nn.Module | None:
        """A module mapping the encoder's outputs to the posterior's parameters (same shape),
        called as ``head(params, **sample_options)``; None: the outputs are the parameters."""
        return None

    def decoder_options(self) -> dict:
        """Keyword options for the decoder family (``variants.decoders.make_decoder``)."""
        return {}

    def lr_factor(self, step: int, total_steps: int) -> float:
        return 1.0

    def train_step(self, trainer, x: Tensor):
        """One training step on minibatch x: (loss, terms), or None if the loss was not finite
        (then nothing was updated)."""
        loss, terms = self.loss(trainer.net, x, trainer.step, trainer.total, trainer.noise)
        return (loss, terms) if trainer.update(loss) else None

    def epoch_end(self, trainer, diagnostics: dict) -> dict:
        """Called after each epoch with its history row (the validation diagnostics included);
        returns extra history columns."""
        return {}

    def check_protocol(self, train) -> None:
        """Refuse, with a ConfigError, a training protocol (``bench.config.TrainConfig``, resolved)
        under which this variant cannot work (checked before anything is trained)."""

    def stacking(self) -> str | None:
        """None where this variant's seeds can train stacked, bit for bit as alone
        (``bench.training.stacked``: one batched forward pass of the default step); else the
        reason, in a few words. A procedure of its own (``train_step``) does not stack: its
        control flow is each run's own (an inner loop that stops on the run's own data)."""
        if type(self).train_step is not Variant.train_step:
            return "it has a training procedure of its own (train_step)"
        return None

    def state(self) -> dict:
        """What the variant has learned about its run so far (aggressive mode and its rule,
        a phase boundary), for mid-run checkpoints: its attributes other than the
        hyperparameters, an attribute object as the dict of its own attributes."""
        return {k: dict(vars(v)) if hasattr(v, "__dict__") else v
                for k, v in vars(self).items() if k != "hp"}

    def load_state(self, state: dict) -> None:
        for k, v in state.items():
            own = getattr(self, k, None)
            if hasattr(own, "__dict__") and isinstance(v, dict):
                vars(own).update(v)
            else:
                setattr(self, k, v)

    # ---- assembled once -----------------------------------------------------------------------
    def loss(self, model, x: Tensor, step: int, total_steps: int, generator=None):
        """The training loss of one minibatch and the terms it came from."""
        noise = model.latent.draw_noise(self.train_samples(), len(x), generator, x)
        return self.loss_from_noise(model, x, noise, step, total_steps)

    def loss_from_noise(self, model, x: Tensor, noise: Tensor, step: int, total_steps: int):
        """``loss`` given the raw noise of the samples, drawn outside: the model is then called
        on tensors only, so it can run compiled (the fast mode, ``bench.training.trainer.compile_model``;
        random number generators do not trace)."""
        terms = model(x, noise=noise, **self.sample_options(step, total_steps))
        return self.objective(terms, step, total_steps), terms
