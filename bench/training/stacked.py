"""Stacked seeds: one forward and backward pass for R runs of one configuration, each run's
numbers bit for bit those it gets alone (``fit_stacked``).

Each run keeps its own model (its parameters its own tensors, views of their slice of the
stack's while it trains: ``Shared``), so its Adam, its clip and its early stopping stay its own;
only the model's forward pass is batched: ``torch.func.vmap`` runs the one model's ``forward``
over the stacked parameters with the runs' own minibatches and noise (drawn outside, from each
run's streams, as alone). The objective is then assembled per run, on each run's slice of the
terms (a reduction over a whole slice, under ``vmap``, is a different kernel: it does not round
as alone). Where ``vmap``'s own batching rules do not give alone's bits (a linear layer, the
fused binary cross-entropy, batch norm), ``bench.training.batching`` replaces them for the pass.
The contract tests (``tests/test_stacked.py``) check every stackable variant with the MLP and
MADE decoders bit for bit against alone. vmap's ``randomness="error"``: a forward that draws
from torch's global generator (dropout) cannot stack, and says so.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from variants.core import Terms

from .batching import stack_mode

# ---- what a posterior object holds: tensors to pass out of vmap, and how to rebuild it -------

def _tensors(obj, prefix: str = "") -> dict[str, Tensor]:
    """The tensors of a posterior (a dataclass, possibly holding another), by dotted field."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            out[prefix + f.name] = value
        elif dataclasses.is_dataclass(value):
            out.update(_tensors(value, f"{prefix}{f.name}."))
    return out


def _rebuilt(obj, tensors: dict[str, Tensor], prefix: str = ""):
    """``obj`` with its tensors replaced by ``tensors`` (as ``_tensors`` names them)."""
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = tensors[prefix + f.name]
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _rebuilt(value, tensors, f"{prefix}{f.name}.")
    return dataclasses.replace(obj, **changes)


TERM_FIELDS = ("log_px_z", "kl", "z", "given_log_qz", "given_log_pz")


class Shared:
    """The parameters and buffers of R models of one architecture held in stacked tensors, each
    model's own tensors views of its slice: a stacked pass reads them with no copy, an optimizer
    step of one run (in place, on its own tensors) writes its slice. The stacked parameters are
    the leaves of the stacked pass; ``hand_out`` gives each run its slice of their gradients
    as its own parameters' gradients. ``release`` gives every model tensors of its own again
    (before its weights are saved: a view would save the whole stack)."""

    def __init__(self, models: list):
        self.models = list(models)
        named = [dict(m.named_parameters()) for m in models]
        bufs = [dict(m.named_buffers()) for m in models]
        with torch.no_grad():
            self.params = {k: torch.stack([p[k].detach() for p in named])
                           .requires_grad_(named[0][k].requires_grad) for k in named[0]}
            self.buffers = {k: torch.stack([b[k] for b in bufs]) for k in bufs[0]}
        for r in range(len(models)):
            for k, stacked in self.params.items():
                named[r][k].data = stacked.data[r]
            for k, stacked in self.buffers.items():
                bufs[r][k].data = stacked[r]
        self._named = named

    def zero_grad(self) -> None:
        for stacked in self.params.values():
            stacked.grad = None

    def hand_out(self, runs: list[int]) -> None:
        """Run r's gradients (r in ``runs``) are its slice of the stacked ones."""
        for k, stacked in self.params.items():
            if stacked.grad is not None:
                for r in runs:
                    self._named[r][k].grad = stacked.grad[r]

    def release(self) -> None:
        with torch.no_grad():
            for m in self.models:
                for t in [*m.parameters(), *m.buffers()]:
                    t.data = t.data.clone()
                for p in m.parameters():
                    p.grad = None


def stacked_terms(models: list, xs: list[Tensor], noises: list[Tensor], options: dict,
                  shared: Shared | None = None) -> list[Terms]:
    """Each run's ``Terms`` of ``models[r](xs[r], noise=noises[r], **options)``, computed in one
    vmapped pass over the stacked parameters: ``shared``'s (no copy; their gradients then go to
    its stacked leaves, ``Shared.hand_out``), else stacked here from each model's own (their
    gradients flow back to them), the buffers (BatchNorm's running statistics) written back.
    Every tensor of the result is a slice of the stacked output, so one backward pass of the
    runs' losses gives each run's parameters their own gradients."""
    base = models[0]
    if shared is not None:
        params, buffers, bufs = shared.params, shared.buffers, None
    else:
        named = [dict(m.named_parameters()) for m in models]
        bufs = [dict(m.named_buffers()) for m in models]
        params = {k: torch.stack([p[k] for p in named]) for k in named[0]}
        buffers = {k: torch.stack([b[k] for b in bufs]) for k in bufs[0]}
    shape: dict = {}

    def one(p, b, x, noise):
        terms = functional_call(base, (p, b), (x,), {"noise": noise, **options}, strict=True)
        fields = {k: getattr(terms, k) for k in TERM_FIELDS if getattr(terms, k) is not None}
        post = _tensors(terms.posterior)
        shape["posterior"], shape["fields"], shape["post"] = terms.posterior, list(fields), \
            list(post)
        return (*fields.values(), *post.values())

    with stack_mode():
        out = vmap(one, randomness="error")(params, buffers, torch.stack(xs), torch.stack(noises))
    nf = len(shape["fields"])
    fields = dict(zip(shape["fields"], out[:nf], strict=True))
    post = dict(zip(shape["post"], out[nf:], strict=True))
    if bufs is not None:  # updated in place in the stacked copies: back to each model's own
        with torch.no_grad():
            for name, stacked in buffers.items():
                for r, b in enumerate(bufs):
                    b[name].copy_(stacked[r])
    terms = []
    for r in range(len(models)):
        posterior = _rebuilt(shape["posterior"], {k: v[r] for k, v in post.items()})
        own = {k: v[r] for k, v in fields.items()}
        terms.append(Terms(own["log_px_z"], own["kl"], posterior, own["z"], noises[r],
                           own.get("given_log_qz"), own.get("given_log_pz")))
    return terms


# ---- the loop: R runs of one configuration in step ------------------------------------------

class _OwnGlobalRNG:
    """torch's global generator as run ``r`` alone would have it: each run's state is swapped
    in around its own code (its checkpoint records it, a procedure may draw from it)."""

    def __init__(self, seeds: list[int]):
        with torch.random.fork_rng(devices=[]):
            self.states = []
            for seed in seeds:
                torch.manual_seed(seed)
                self.states.append(torch.get_rng_state())
        self.outside = None

    def enter(self, r: int) -> None:
        self.outside = torch.get_rng_state()
        torch.set_rng_state(self.states[r])

    def leave(self, r: int) -> None:
        self.states[r] = torch.get_rng_state()
        torch.set_rng_state(self.outside)


def _own(rng: _OwnGlobalRNG, r: int, fn, *args):
    rng.enter(r)
    try:
        return fn(*args)
    finally:
        rng.leave(r)


def fit_stacked(make_loops: list, global_seeds: list[int]) -> list:
    """Train R runs of one configuration in step. ``make_loops[r]()`` builds run r's
    ``FitLoop`` (called with the run's own global generator in force, seeded from
    ``global_seeds[r]`` as alone). Every step draws each run's minibatch and noise from its own
    streams, computes the runs' terms in one vmapped pass (``stacked_terms``) and each run's
    loss from its own slice, takes one backward pass of the finite losses, then each run's own
    clip and Adam step (``Trainer.apply_gradients``). A run that diverges or stops leaves the
    stack, the others go on. Every variant must take the default step (``Variant.stacking``).
    Where the forward pass cannot be vmapped (it draws from the global generator: dropout),
    ``NotStackable``: the caller trains the runs alone (``bench.grid.backends.run_unit``), from
    their checkpoints, as if never stacked. Returns the runs' FitResults; a run's
    ``train_seconds`` is its share of the stack's steps (each step's time divided among the runs
    in it), not the stack's wall time."""
    rng = _OwnGlobalRNG(global_seeds)
    loops = [_own(rng, r, make) for r, make in enumerate(make_loops)]
    shared, members = None, None
    share = [0.0] * len(loops)  # each run's share of the stack's training seconds
    live = [r for r, loop in enumerate(loops) if _own(rng, r, loop.begin_epoch)]
    while live:
        for i in range(loops[live[0]].per_epoch):
            going = [r for r in live if loops[r].ok]
            if not going:
                break
            tic = time.perf_counter()
            xs = [_own(rng, r, loops[r].batch, i) for r in going]
            noises = [_noise(loops[r], x) for r, x in zip(going, xs, strict=True)]
            if going != members:  # a run left: the others' weights stacked anew
                if shared is not None:
                    shared.release()
                shared, members = Shared([loops[r].model for r in going]), going
            try:
                outs = _stacked_step([loops[r] for r in going], xs, noises, shared,
                                     lambda k, fn, *a, g=going: _own(rng, g[k], fn, *a))
            except RuntimeError as e:
                if "randomness" not in str(e):
                    raise
                shared.release()  # (a buffer may have moved in the pass: not resumed here)
                raise NotStackable("its forward pass draws from torch's global generator "
                                   "(dropout)") from None
            for r, x, out in zip(going, xs, outs, strict=True):
                loops[r].record(out, x)
            for r in going:
                share[r] += (time.perf_counter() - tic) / len(going)
        live = [r for r in live if _own(rng, r, loops[r].end_epoch)
                and _own(rng, r, loops[r].begin_epoch)]
    if shared is not None:
        shared.release()
    results = [loop.finish() for loop in loops]
    for result, seconds in zip(results, share, strict=True):
        result.train_seconds = seconds  # its share of the steps it took part in
    return results


class NotStackable(RuntimeError):
    """The runs cannot train stacked after all (found in the pass): they train alone."""


def _noise(loop, x: Tensor) -> Tensor:
    """The step's noise, drawn from the run's own noise stream as ``Variant.loss`` draws it."""
    return loop.model.latent.draw_noise(loop.variant.train_samples(), len(x), loop.trainer.noise,
                                        x)


def _call(k: int, fn, *args):
    return fn(*args)


def _stacked_step(loops: list, xs: list[Tensor], noises: list[Tensor],
                  shared: Shared | None = None, own=_call) -> list:
    """One default training step (``Variant.train_step``) of every run of ``loops``, the
    forward pass batched (over ``shared``'s stacked weights when all runs take the same sample
    options, else one stack per set of options): per run (loss, terms), or None where its loss
    is not finite (then nothing of that run was updated, as alone). ``own(k, fn, *args)``
    calls fn as the k-th run's own code (with its global generator in force)."""
    groups: dict[str, list[int]] = {}
    options = [loop.variant.sample_options(loop.step, loop.total) for loop in loops]
    for r, opts in enumerate(options):  # runs at other steps may have other options
        groups.setdefault(repr(sorted(opts.items())), []).append(r)
    whole = shared if len(groups) == 1 else None
    terms: list = [None] * len(loops)
    for members in groups.values():
        got = stacked_terms([loops[r].model for r in members], [xs[r] for r in members],
                            [noises[r] for r in members], options[members[0]], whole)
        for r, t in zip(members, got, strict=True):
            terms[r] = t
    losses = [own(k, loop.variant.objective, t, loop.step, loop.total)  # its global generator
              for k, (loop, t) in enumerate(zip(loops, terms, strict=True))]
    finite = [math.isfinite(loss.item()) for loss in losses]
    held = [loop.trainer.zero_grad() if ok else None
            for loop, ok in zip(loops, finite, strict=True)]
    if whole is not None:
        whole.zero_grad()
    if any(finite):
        torch.autograd.backward([loss for loss, ok in zip(losses, finite, strict=True) if ok])
    if whole is not None:
        whole.hand_out([r for r, ok in enumerate(finite) if ok])
    for loop, h in zip(loops, held, strict=True):
        if h is not None:
            loop.trainer.apply_gradients(*h)
    return [(loss, t) if ok else None for loss, t, ok in zip(losses, terms, finite, strict=True)]
