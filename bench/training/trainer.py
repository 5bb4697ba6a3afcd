"""fit(): the training loop. It knows the Variant protocol and nothing about any variant."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.builtin import binarize
from ..seeding import Streams
from .checkpoints import Checkpoints, mismatch, restore, snapshot
from .convergence import BURDA_STAGES, Convergence, burda_stage, epoch_lr  # noqa: F401


@dataclass
class FitResult:
    """Per-epoch history, and where training stopped if the loss stopped being finite."""

    history: list[dict] = field(default_factory=list)
    status: str = "ok"
    diverged_step: int | None = None
    last_finite: dict | None = None  # loss, -ELBO and KL of the last finite step (batch means)
    train_seconds: float = 0.0  # training alone, without the per-epoch diagnostics
    diagnostics_seconds: float = 0.0
    steps: int = 0
    stopped_epoch: int = 0
    convergence: dict | None = None  # where and why the protocol stopped (``bench.training.convergence``)


def make_optimizer(params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8, kind: str = "adam") -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015), fused (one kernel per parameter, CPU and CUDA since torch 2.4;
    the same rule; on the 2-core CI kind 0.31 ms a step of the default 425k-parameter model
    against 0.97 ms unfused, a seventh of a training step), else unfused where fused is not
    available; ``kind="sgd"`` (``train.optimizer``): plain SGD (He et al. 2019's scripts)."""
    params = list(params)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)


#: ``train.clip``'s default (defined once, in ``bench.config``)
DEFAULT_CLIP = TrainConfig().clip

def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """The fast mode: ``model`` compiled for training (it shares the parameters).

    In the tiny-MLP regime a step is a few dozen small kernels, and on a GPU their launch cost
    dominates; ``torch.compile`` fuses the elementwise work around the matmuls, and on CUDA
    ``mode="reduce-overhead"`` replays forward and backward as CUDA graphs. Only the model's
    forward (and through AOTAutograd its backward) is compiled: the variant's hooks, which may
    depend on the step (annealing weights, temperatures), run eagerly and pass their values in,
    as arguments; a float option (the Gumbel-Softmax temperature) or a batch size that changes
    compiles once more and is then symbolic. Evaluation never uses it (it needs no gradients and
    has its own fast path, ``VAE.inference_decoder``)."""
    cuda = next(model.parameters()).is_cuda
    return torch.compile(model, mode="reduce-overhead" if cuda else None)


class Trainer:
    """What a variant's training procedure may use (``Variant.train_step`` and ``epoch_end``):
    the step counters, the model (``net`` is the one to call: compiled in the fast mode), Adam
    (or SGD) optimizers by part, fresh minibatches, and the weights the run started from.
    ``epoch`` counts from 1, ``epochs`` is the run's number of them (0 outside ``fit``).

    Parts: ``model`` (every parameter, the default), ``encoder`` (q(z|x)'s) and ``decoder``
    (p(x|z)'s). Every optimizer step of every part clips the gradient norm of the parameters it
    updates at ``clip`` (``train.clip``; 0: none): one training protocol for every procedure.
    Adam (and SGD) update each parameter from its own gradient (and moments), so stepping the
    encoder's and the decoder's optimizers together is the same update as the model's one."""

    def __init__(self, model, net, lr: float, streams, train_x: torch.Tensor, batch_size: int,
                 dynamic_binarization: bool, total: int, adam: dict | None = None,
                 clip: float = DEFAULT_CLIP, minibatch_mi=None):
        self.model, self.net, self.lr, self.adam = model, net, lr, adam or {}
        self.clip, self._minibatch_mi = clip, minibatch_mi
        self.streams, self.noise = streams, streams.noise
        self.train_x, self.batch_size = train_x, batch_size
        self.dynamic_binarization = dynamic_binarization
        self.step, self.total, self.epoch, self.epochs = 0, total, 0, 0
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._initial = None
        self._factor = 1.0

    @classmethod
    def from_config(cls, model, net, train: TrainConfig, streams, train_x: torch.Tensor,
                    dynamic_binarization: bool, total: int, minibatch_mi=None) -> Trainer:
        """The trainer of ``fit``: learning rate, batch size, Adam's settings and the clip from
        the run's train config."""
        return cls(model, net, train.lr, streams, train_x, train.batch_size,
                   dynamic_binarization, total,
                   {"betas": (train.adam_beta1, train.adam_beta2), "eps": train.adam_eps,
                    "kind": train.optimizer},
                   train.clip, minibatch_mi)

    @classmethod
    def for_step(cls, net, opt: torch.optim.Optimizer, noise: torch.Generator, step: int,
                 total: int, x: torch.Tensor, clip: float = DEFAULT_CLIP) -> Trainer:
        """A trainer around one given optimizer of the whole model, for single steps on the
        minibatch x (its fresh batches are drawn from x itself, seed 0)."""
        model = getattr(net, "_orig_mod", net)
        streams = Streams(noise, noise, noise, torch.Generator().manual_seed(0),
                          torch.Generator().manual_seed(1))
        self = cls(model, net, opt.param_groups[0]["lr"], streams, x, len(x), False, total,
                   clip=clip)
        self.step, self._optimizers["model"] = step, opt
        return self

    def parameters(self, part: str) -> list:
        if part == "model":
            return list(self.model.parameters())
        if part == "encoder":
            return self.model.encoder_parameters()
        if part == "decoder":
            return self.model.decoder_parameters()
        raise ValueError(f"unknown part {part!r}; allowed: model, encoder, decoder")

    def optimizer(self, part: str = "model") -> torch.optim.Optimizer:
        if part not in self._optimizers:
            self._optimizers[part] = make_optimizer(self.parameters(part), self.lr * self._factor,
                                                    **self.adam)
        return self._optimizers[part]

    def set_lr(self, base: float | None = None, factor: float | None = None) -> None:
        """The learning rate is base (the schedule's, per epoch) x factor (the variant's)."""
        base = self.lr if base is None else base
        factor = self._factor if factor is None else factor
        if (base, factor) != (self.lr, self._factor):
            self.lr, self._factor = base, factor
            for opt in self._optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = base * factor

    def set_lr_factor(self, factor: float) -> None:
        self.set_lr(factor=factor)

    def update(self, loss: torch.Tensor, *parts: str) -> bool:
        """One optimizer step of ``parts`` (default: the model) on ``loss``; only their gradients
        are computed, and their joint norm is clipped at ``self.clip`` (if > 0). False, with
        nothing updated, if the loss is not finite."""
        if not math.isfinite(loss.item()):
            return False
        parts = parts or ("model",)
        params, opts = self.zero_grad(parts)
        if parts == ("model",) or set(parts) == {"encoder", "decoder"}:
            loss.backward()
        else:  # the other part's gradients are not even computed
            torch.autograd.backward(loss, inputs=[p for p in params if p.requires_grad])
        self.apply_gradients(params, opts)
        return True

    def zero_grad(self, parts: tuple[str, ...] = ("model",)):
        """The first half of ``update``: the parameters and optimizers of ``parts``, gradients
        cleared (the backward pass comes next)."""
        params = [p for part in parts for p in self.parameters(part)]
        opts = [self.optimizer(part) for part in parts]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        return params, opts

    def apply_gradients(self, params: list, opts: list) -> None:
        """The second half of ``update``: the joint gradient norm clipped, then each step."""
        if self.clip:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        for opt in opts:
            opt.step()

    def minibatch_mi(self, batch: int) -> float:
        """I_q(x; z) on the validation split as He et al.'s code estimates it (``calc_mi`` of
        jxhe/vae-lagging-encoder ``image.py``): per minibatch of ``batch`` points with that
        minibatch's aggregate posterior (so bounded by log batch), averaged over the minibatches
        weighted by their sizes. ValueError if the run has no validation split."""
        if self._minibatch_mi is None:
            raise ValueError("no validation split")
        return self._minibatch_mi(batch)

    def fresh_batch(self) -> torch.Tensor:
        """A random minibatch of the training split, freshly binarized for binary data, from the
        run's own ``procedure`` stream (the data order and binarization streams are untouched)."""
        gen = self.streams.procedure
        idx = torch.randint(len(self.train_x), (self.batch_size,), generator=gen)
        x = self.train_x[idx.to(self.train_x.device)]
        return binarize(x.cpu(), gen).to(x.device) if self.dynamic_binarization else x

    def weights(self) -> dict:
        """A copy of the model's weights (``load_weights`` puts them back)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_weights(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def redraw(self, module: str) -> None:
        """Re-initialize ``model.<module>`` (``decoder``: the whole generative model) with a fresh
        draw of its layers' initializations, from the run's own ``redraw`` stream, and every
        optimizer to a fresh state."""
        names = self.model.generative_modules if module == "decoder" else (module,)
        seed = int(torch.randint(2**62, (1,), generator=self.streams.redraw))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for name in names:
                for layer in getattr(self.model, name).modules():
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
                    if hasattr(layer, "zero_masked"):
                        layer.zero_masked()
        self._optimizers.clear()

    def remember_initial(self) -> None:
        self._initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def reset(self, module: str) -> None:
        """Set ``model.<module>`` back to the weights the run started from and every optimizer
        to a fresh state (as a new training run would start). ``decoder`` names the whole
        generative model (``VAE.generative_modules``: with two stochastic layers p(h1|h2) too)."""
        names = self.model.generative_modules if module == "decoder" else (module,)
        for name in names:
            prefix = name + "."
            getattr(self.model, name).load_state_dict(
                {k[len(prefix):]: v for k, v in self._initial.items() if k.startswith(prefix)})
        self._optimizers.clear()


def train_step(net, variant, opt, x: torch.Tensor, step: int, total: int, noise,
               clip: float = DEFAULT_CLIP):
    """One step of the variant's procedure with the given optimizer of the whole model:
    (loss, terms), or None if the loss was not finite. The benchmarks time this; ``fit`` runs
    the same ``Variant.train_step``."""
    return variant.train_step(Trainer.for_step(net, opt, noise, step, total, x, clip), x)


def fit(model, variant, train_x: torch.Tensor, train: TrainConfig, streams: Streams, *,
        dynamic_binarization: bool, progress: bool = False, epoch_end=None,
        checkpoints: Checkpoints | None = None, minibatch_mi=None) -> FitResult:
    """Adam (or SGD) on the variant's loss, as the run's train config (``train``) says: epochs,
    batch size, learning rate and its schedule, the optimizer, the clip, the fast mode and the
    convergence protocol. Data order and binarization come from their own streams.

    Each epoch: one permutation from ``streams.data``; for binary data a fresh Bernoulli draw of
    the whole training split from ``streams.binarize``. ``epoch_end(epoch)`` (the validation
    diagnostics; its ``step_end(epoch, step)``, if any, after every step) returns columns for
    the epoch's history row, their time kept apart from training's. Each epoch's learning rate
    follows ``train.lr_schedule`` (``epoch_lr``), recorded in the row. With ``checkpoints``,
    training resumes from the latest readable checkpoint and writes one every
    ``checkpoints.every`` epochs. Every optimizer step clips the gradient norm at ``train.clip``;
    ``minibatch_mi(batch)`` is the validation MI a procedure may read. With an active
    convergence protocol (``bench.training.convergence``) each epoch's row decides whether to go
    on, decay the learning rate or stop, and the model ends with the best-on-validation weights.
    ``FitLoop`` holds the loop's state; ``bench.training.stacked.fit_stacked`` runs several such
    loops in step, one batched forward pass for all."""
    loop = FitLoop(model, variant, train_x, train, streams,
                   dynamic_binarization=dynamic_binarization, progress=progress,
                   epoch_end=epoch_end, checkpoints=checkpoints, minibatch_mi=minibatch_mi)
    while loop.begin_epoch():
        for i in range(loop.per_epoch):
            x = loop.batch(i)
            if not loop.record(variant.train_step(loop.trainer, x), x):
                break
        if not loop.end_epoch():
            break
    return loop.finish()


class FitLoop:
    """The state of one run's ``fit``, in the pieces its loop is made of: ``begin_epoch`` (the
    epoch's learning rate, data order and binarization), ``batch(i)`` (the i-th minibatch, the
    step counters set), ``record`` (a step's outcome), ``end_epoch`` (history row, validation,
    convergence, checkpoint) and ``finish``."""

    def __init__(self, model, variant, train_x: torch.Tensor, train: TrainConfig,
                 streams: Streams, *, dynamic_binarization: bool, progress: bool = False,
                 epoch_end=None, checkpoints: Checkpoints | None = None, minibatch_mi=None):
        self.model, self.variant, self.train_x, self.train = model, variant, train_x, train
        self.streams, self.dynamic_binarization = streams, dynamic_binarization
        self.epoch_end_hook, self.checkpoints = epoch_end, checkpoints
        self.conv = conv = Convergence.from_config(train)
        net = compile_model(model) if train.compile else model
        self.epochs, self.batch_size = train.epochs, train.batch_size
        self.n = len(train_x)
        self.per_epoch = math.ceil(self.n / self.batch_size)
        self.total = self.epochs * self.per_epoch
        self.trainer = trainer = Trainer.from_config(model, net, train, streams, train_x,
                                                     dynamic_binarization, self.total,
                                                     minibatch_mi)
        trainer.epochs = self.epochs
        trainer.optimizer()  # the model's optimizer exists from the start, as before
        trainer.remember_initial()
        self.result, self.step, first, before = FitResult(), 0, 1, 0.0
        variant.steps_per_epoch = self.per_epoch
        state = checkpoints.latest(lambda st: mismatch(st, trainer)) \
            if checkpoints is not None else None
        if state is not None:
            first, self.step, before = restore(state, trainer, variant, streams, self.result,
                                               conv)
        self.epoch = first - 1
        self.bar = tqdm(total=self.total, initial=self.step, disable=not progress, unit="step",
                        leave=False)
        self.start = time.perf_counter() - before
        model.train()

    @property
    def ok(self) -> bool:
        return self.result.status == "ok"

    def begin_epoch(self) -> bool:
        """Set up the next epoch; False when every epoch has been trained."""
        if self.epoch >= self.epochs:
            return False
        self.epoch = epoch = self.epoch + 1
        trainer, train_x = self.trainer, self.train_x
        trainer.epoch = epoch
        trainer.set_lr(base=epoch_lr(self.train.lr_schedule, self.train.lr, epoch)
                       * self.conv.factor)
        self.order = torch.randperm(self.n, generator=self.streams.data).to(train_x.device)
        self.x_all = binarize(train_x.cpu(), self.streams.binarize).to(train_x.device) \
            if self.dynamic_binarization else train_x
        self.sums = torch.zeros(3, dtype=torch.float64, device=train_x.device)
        return True

    def batch(self, i: int) -> torch.Tensor:
        """The epoch's i-th minibatch, with the trainer's step and learning-rate factor set."""
        x = self.x_all[self.order[i * self.batch_size:(i + 1) * self.batch_size]]
        self.trainer.step = self.step
        self.trainer.set_lr_factor(self.variant.lr_factor(self.step, self.total))
        return x

    def record(self, out, x: torch.Tensor) -> bool:
        """A step's (loss, terms) on minibatch x, or None (not finite): False if it diverged."""
        if out is None:
            self.result.status, self.result.diverged_step = "diverged", self.step
            return False
        loss, terms = out
        with torch.no_grad():
            self.last = torch.stack([loss * len(x), -terms.elbo().sum(),
                                     terms.kl.sum()]).double()
            self.sums += self.last
        self.last_n = len(x)
        self.step += 1
        self.bar.update()
        if (hook := getattr(self.epoch_end_hook, "step_end", None)) is not None:
            tic = time.perf_counter()  # a diagnostic inside the epoch: not training time
            hook(self.epoch, self.step)
            self.result.diagnostics_seconds += time.perf_counter() - tic
        return True

    def end_epoch(self) -> bool:
        """The epoch's history row, its validation diagnostics, the convergence protocol's
        decision and the checkpoint; False when training ends here."""
        result, trainer, conv, epoch, step = self.result, self.trainer, self.conv, self.epoch, \
            self.step
        if result.status != "ok":
            if step > 0:
                values = (self.last / self.last_n).tolist()
                result.last_finite = {"step": step - 1, **dict(zip(("loss", "neg_elbo", "kl"),
                                                                   values, strict=True))}
            return False
        loss_m, nelbo_m, kl_m = (self.sums / self.n).tolist()
        elapsed = time.perf_counter() - self.start - result.diagnostics_seconds
        row = {"epoch": epoch, "step": step, "loss": loss_m, "neg_elbo": nelbo_m, "kl": kl_m,
               "lr": trainer.lr, "seconds": elapsed}
        if self.epoch_end_hook is not None:
            tic = time.perf_counter()
            row.update(self.epoch_end_hook(epoch))
            row["diagnostics_seconds"] = time.perf_counter() - tic
            result.diagnostics_seconds += row["diagnostics_seconds"]
        trainer.step = step
        row.update(self.variant.epoch_end(trainer, row))
        action = conv.after_epoch(epoch, row, trainer.weights,
                                  self.variant.warming_up(step, self.total)) \
            if conv.active else ""
        result.history.append(row)
        result.stopped_epoch = epoch
        self.bar.set_postfix(neg_elbo=f"{nelbo_m:.2f}")
        if action == "stop":
            return False
        if action == "decay":  # He et al.: the best weights back, fresh optimizers
            trainer.load_weights(conv.best_weights)
            trainer._optimizers.clear()
        ck = self.checkpoints
        if ck is not None and ck.every and epoch % ck.every == 0 and epoch < self.epochs:
            ck.save(epoch, snapshot(epoch, step, trainer, self.variant, self.streams, result,
                                    time.perf_counter() - self.start, conv))
        return True

    def finish(self) -> FitResult:
        self.bar.close()
        result, conv = self.result, self.conv
        if conv.active:
            if conv.best_weights is not None:  # the best-on-validation weights are evaluated
                self.trainer.load_weights(conv.best_weights)
            result.convergence = conv.summary(result.stopped_epoch, result.status)
        result.train_seconds = time.perf_counter() - self.start - result.diagnostics_seconds
        result.steps = self.step
        return result
