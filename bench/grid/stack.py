"""Stacked seeds in the grid: which runs train together (``pack``), and a stack's execution
(``execute_stack``): each run prepared, checkpointed, evaluated and recorded as alone
(``bench.grid.runner``), its training one of the stack's (``bench.training.stacked``).

Runs stack when their resolved configs are equal but for the seed, and none of the model, the
variant or the machine refuses (``refusal``). Every stacked run's record is bit for bit the
record it gets alone (``tests/test_stacked.py``), so its run id and directory are the same; its
env.json says it trained stacked, and with which runs."""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path

import torch

from variants.factory import stacking

from .. import data
from ..config import to_dict
from ..identity import ResolvedRun, resolve_run
from ..machine import budget, isolation, numerics
from ..results import damage, ensure_writable, finished, retry_reason, run_lock, set_aside
from ..seeding import Streams, derive
from ..training.stacked import fit_stacked
from ..training.trainer import FitLoop
from .runner import dependencies, evaluate_trained, execute, prepare, record

#: ``--stack``: ``auto`` stacks every run that can, ``off`` trains each alone
STACK_MODES = ("auto", "off")
#: the most runs of one configuration in one stack by default (``stack_size`` in a profile)
DEFAULT_STACK_SIZE = 5


def refusal(run: ResolvedRun) -> str | None:
    """None where ``run`` may train stacked with the other seeds of its configuration; else why
    not, in one phrase."""
    cfg = run.config
    if cfg.device != "cpu":
        return f"device {cfg.device}: stacking is checked bit for bit on the CPU only"
    if cfg.numerics != "portable":
        return "native numerics: bit-identity with a run alone holds in portable numerics only"
    if cfg.train.compile:
        return "the fast mode (train.compile) compiles one model"
    return stacking(run.variant, cfg.model.decoder, cfg.model.latent2_dim)


def stack_key(run: ResolvedRun) -> str:
    """What the runs of one stack share: the resolved config but the seed."""
    return json.dumps({k: v for k, v in to_dict(run.config).items() if k != "seed"},
                      sort_keys=True, default=str)


def pack(runs: list[ResolvedRun], mode: str = "auto",
         size: int = DEFAULT_STACK_SIZE) -> tuple[list[list[ResolvedRun]], dict[str, str]]:
    """``runs`` as units of work in their order: stacks of up to ``size`` runs of one
    configuration (as many as fit in memory together), each at the place of its first run,
    and the rest one run each. Also returns why runs train alone, by run name (a refusal; a
    configuration with one pending seed is not named)."""
    if mode not in STACK_MODES:
        from variants.errors import ConfigError

        raise ConfigError(f"stack mode {mode!r} is unknown; allowed: {', '.join(STACK_MODES)}")
    units: list[list[ResolvedRun]] = []
    open_stacks: dict[str, list[ResolvedRun]] = {}
    alone: dict[str, str] = {}
    for run in runs:
        why = "--stack off" if mode == "off" else refusal(run)
        if why:
            alone[run.name] = why
            units.append([run])
            continue
        key = stack_key(run)
        stack = open_stacks.get(key)
        if stack is None or len(stack) >= _room(run, size):
            stack = open_stacks[key] = []
            units.append(stack)
        stack.append(run)
    return units, alone


def _room(run: ResolvedRun, size: int) -> int:
    shape = data.point_shape(run.config.dataset)
    from ..data.npz import image_shape

    return budget.runs_that_fit(run.config, run.variant, math.prod(shape), image_shape(shape),
                                size)


def execute_stack(runs: list[ResolvedRun], out: Path, data_dir: str | None = None) -> list[Path]:
    """Train and evaluate the runs of one stack (``pack``), each recorded in its own directory
    as ``runner.execute`` records it alone; finished ones are reused. Fewer than two to train:
    they train alone."""
    runs = [resolve_run(r) for r in runs]
    out = Path(out)
    ensure_writable(out)
    todo = [r for r in runs if not finished(out / r.name)]
    if len(todo) < 2:
        return [execute(r, out, data_dir) for r in runs]
    keys = {stack_key(r) for r in todo}
    why = next((w for w in map(refusal, todo) if w), None)
    if len(keys) > 1 or why:
        raise ValueError(f"runs {', '.join(r.name for r in todo)} cannot stack: "
                         f"{why or 'their configs differ beyond the seed'}")
    cfg = todo[0].config
    if cfg.numerics != numerics.active():  # the libraries read it as torch loads
        return numerics.run_in_mode(cfg.numerics, execute_stack, [r.config for r in runs], out,
                                    data_dir)
    isolation.reset(numerics.PORTABLE_THREADS)
    pres = [dependencies(r, out, data_dir) for r in todo]  # trained alone where missing
    with ExitStack() as held:
        for r in todo:
            held.enter_context(run_lock(out / r.name))
        keep = [i for i, r in enumerate(todo) if not finished(out / r.name)]
        todo, pres = [todo[i] for i in keep], [pres[i] for i in keep]
        prepared, global_states = [], []
        for run, pre in zip(todo, pres, strict=True):
            isolation.reset(numerics.PORTABLE_THREADS)  # each run prepared as alone
            target = out / run.name
            if target.exists():
                set_aside(target, damage(target) or retry_reason(target))
            prepared.append(prepare(run, data_dir, pre, target))
            global_states.append(torch.get_rng_state())
        results = fit_stacked([_loop_maker(r, p) for r, p in zip(todo, prepared,
                                                                          strict=True)],
                                     [derive(r.config.seed, "global") for r in todo])
        names = [r.name for r in todo]
        for run, p, result, state in zip(todo, prepared, results, global_states, strict=True):
            torch.set_rng_state(state)  # evaluation starts where a run alone would
            p.env["stacked"] = {"runs": names, "size": len(names)}
            record(run, p, result, evaluate_trained(run, p, result), out / run.name)
    return [out / r.name for r in runs]


def _loop_maker(run: ResolvedRun, p):
    cfg = run.config
    dtype, device = getattr(torch, cfg.dtype), torch.device(cfg.device)

    def make() -> FitLoop:
        return FitLoop(p.model, p.variant, p.dataset.train.to(dtype=dtype, device=device),
                       cfg.train, Streams.from_seed(cfg.seed, device),
                       dynamic_binarization=p.dataset.likelihood == "bernoulli",
                       epoch_end=p.epoch_end, checkpoints=p.checkpoints,
                       minibatch_mi=p.minibatch_mi)

    return make
