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
from .convergence import Convergence


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
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) in its fused form: one kernel per parameter instead of a dozen
    elementwise ops, on every device this torch build has it for (CPU and CUDA since torch 2.4).
    The same update rule; on the 2-core CI kind its step over the default 2x200 model's 425k
    parameters took 0.31 ms against 0.97 ms for the default implementation, a seventh of a
    training step. Falls back to the default implementation where fused is not available."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)


#: ``train.clip``'s default (defined once, in ``bench.config``)
DEFAULT_CLIP = TrainConfig().clip

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


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """The fast mode: ``model`` compiled for training (it shares the parameters).

    In the tiny-MLP regime a step is a few dozen small kernels, and on a GPU their launch cost
    dominates; ``torch.compile`` fuses the elementwise work around the matmuls, and on CUDA
    ``mode="reduce-overhead"`` replays forward and backward as CUDA graphs. Only the model's
    forward (and through AOTAutograd its backward) is compiled: the variant's hooks, which may
    depend on the step (annealing weights, temperatures), run eagerly and pass their values in,
    as arguments; a float option (the Gumbel-Softmax temperature) or a batch size that changes
    compiles once more and is then symbolic. Evaluation never uses it (it needs no gradients and
    has its own fast path, ``VAE.inference_decoder``).
    """
    cuda = next(model.parameters()).is_cuda
    return torch.compile(model, mode="reduce-overhead" if cuda else None)


class Trainer:
    """What a variant's training procedure may use (``Variant.train_step`` and ``epoch_end``):
    the step counters, the model (``net`` is the one to call: compiled in the fast mode), Adam
    optimizers by part, fresh minibatches, and the weights the run started from.

    ``epoch`` counts from 1, ``epochs`` is the run's number of them (0 outside ``fit``).

    Parts: ``model`` (every parameter, the default), ``encoder`` (q(z|x)'s) and ``decoder``
    (p(x|z)'s). Every optimizer step of every part clips the gradient norm of the parameters it
    updates at ``clip`` (``train.clip``; 0: none): one training protocol for every procedure.
    Adam updates each parameter from its own gradient and moments, so stepping the
    encoder's and the decoder's optimizers together is the same update as the model's one.
    """

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
                   {"betas": (train.adam_beta1, train.adam_beta2), "eps": train.adam_eps},
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
        params = [p for part in parts for p in self.parameters(part)]
        opts = [self.optimizer(part) for part in parts]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        if parts == ("model",) or set(parts) == {"encoder", "decoder"}:
            loss.backward()
        else:  # the other part's gradients are not even computed
            torch.autograd.backward(loss, inputs=[p for p in params if p.requires_grad])
        if self.clip:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        for opt in opts:
            opt.step()
        return True

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
    """Adam on the variant's loss, as the run's train config (``train``) says: epochs, batch
    size, learning rate and its schedule, Adam's settings, the clip, the fast mode and the
    convergence protocol. Data order and binarization come from their own streams.

    Each epoch: one permutation from ``streams.data``; for binary data a fresh Bernoulli draw of
    the whole training split from ``streams.binarize`` (dynamic binarization). ``epoch_end(epoch)``
    (the validation diagnostics) returns columns for the epoch's history row; its time is kept
    apart from the training time. The learning rate of each epoch follows
    ``train.lr_schedule`` (``epoch_lr``) and is recorded in the row. With ``checkpoints``,
    training resumes from the latest readable checkpoint and writes one every
    ``checkpoints.every`` epochs. Every optimizer step clips the gradient norm at
    ``train.clip``; ``minibatch_mi(batch)`` is the validation MI a procedure may read
    (``Trainer.minibatch_mi``). With an active convergence protocol (``train.stop_patience`` or
    ``train.lr_decay_patience``; ``bench.training.convergence``), each epoch's row decides whether to go
    on, decay the learning rate or stop, and the model ends with the best-on-validation weights.
    """
    conv = Convergence.from_config(train)
    net = compile_model(model) if train.compile else model
    epochs, batch_size, lr = train.epochs, train.batch_size, train.lr
    n = len(train_x)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    trainer = Trainer.from_config(model, net, train, streams, train_x, dynamic_binarization,
                                  total, minibatch_mi)
    trainer.epochs = epochs
    trainer.optimizer()  # the model's optimizer exists from the start, as before
    trainer.remember_initial()
    result, step, first, before = FitResult(), 0, 1, 0.0
    variant.steps_per_epoch = per_epoch
    state = checkpoints.latest(lambda st: mismatch(st, trainer)) \
        if checkpoints is not None else None
    if state is not None:
        first, step, before = restore(state, trainer, variant, streams, result, conv)
    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", leave=False)
    start = time.perf_counter() - before
    model.train()
    for epoch in range(first, epochs + 1):
        trainer.epoch = epoch
        trainer.set_lr(base=epoch_lr(train.lr_schedule, lr, epoch) * conv.factor)
        order = torch.randperm(n, generator=streams.data).to(train_x.device)
        x_all = binarize(train_x.cpu(), streams.binarize).to(train_x.device) \
            if dynamic_binarization else train_x
        sums = torch.zeros(3, dtype=torch.float64, device=train_x.device)
        for i in range(per_epoch):
            x = x_all[order[i * batch_size:(i + 1) * batch_size]]
            trainer.step = step
            trainer.set_lr_factor(variant.lr_factor(step, total))
            out = variant.train_step(trainer, x)
            if out is None:
                result.status, result.diverged_step = "diverged", step
                break
            loss, terms = out
            with torch.no_grad():
                last = torch.stack([loss * len(x), -terms.elbo().sum(), terms.kl.sum()]).double()
                sums += last
            step += 1
            bar.update()
        if result.status != "ok":
            if step > 0:
                values = (last / len(x)).tolist()
                result.last_finite = {"step": step - 1, **dict(zip(("loss", "neg_elbo", "kl"),
                                                                   values, strict=True))}
            break
        loss_m, nelbo_m, kl_m = (sums / n).tolist()
        elapsed = time.perf_counter() - start - result.diagnostics_seconds
        row = {"epoch": epoch, "step": step, "loss": loss_m, "neg_elbo": nelbo_m, "kl": kl_m,
               "lr": trainer.lr, "seconds": elapsed}
        if epoch_end is not None:
            tic = time.perf_counter()
            row.update(epoch_end(epoch))
            row["diagnostics_seconds"] = time.perf_counter() - tic
            result.diagnostics_seconds += row["diagnostics_seconds"]
        trainer.step = step
        row.update(variant.epoch_end(trainer, row))
        action = conv.after_epoch(epoch, row, trainer.weights, variant.warming_up(step, total)) \
            if conv.active else ""
        result.history.append(row)
        result.stopped_epoch = epoch
        bar.set_postfix(neg_elbo=f"{nelbo_m:.2f}")
        if action == "stop":
            break
        if action == "decay":  # He et al.: the best weights back, fresh optimizers
            trainer.load_weights(conv.best_weights)
            trainer._optimizers.clear()
        if checkpoints is not None and checkpoints.every and epoch % checkpoints.every == 0 \
                and epoch < epochs:
            checkpoints.save(epoch, snapshot(epoch, step, trainer, variant, streams, result,
                                             time.perf_counter() - start, conv))
    bar.close()
    if conv.active:
        if conv.best_weights is not None:  # the best-on-validation weights are evaluated
            trainer.load_weights(conv.best_weights)
        result.convergence = conv.summary(result.stopped_epoch, result.status)
    result.train_seconds = time.perf_counter() - start - result.diagnostics_seconds
    result.steps = step
    return result
