"""Stacked seeds (``bench.training.stacked``, ``bench.grid.stack``): the seeds of one
configuration trained as one stacked model give, for every variant and decoder that stacks,
records bit-identical to each run trained alone (metrics, every history column but the
timings, weights), under the same run ids; a killed stack resumes to the same bits; what does
not stack says why and trains alone."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import variants
from bench.config import RunConfig, apply_overrides
from bench.grid.runner import TIMINGS, execute
from bench.grid.stack import execute_stack, pack, refusal
from bench.identity import resolve_run
from bench.seeding import Streams
from bench.training.checkpoints import Checkpoints
from bench.training.stacked import stacked_terms
from variants.factory import build_vae

SEEDS = (0, 1, 2)
#: tiny runs of the digits set: 2 epochs of 3 minibatches, validation every epoch
TINY = {"dataset": "digits", "model.hidden": [16], "model.latent_dim": 4,
        "train.epochs": 2, "train.batch_size": 40, "train.train_points": 120,
        "train.validation_size": 60, "eval.is_samples": 8, "eval.test_points": 40}
#: per variant what a 2-epoch run needs (the phases of a run counted in epochs)
NEEDS = {"pretrained-encoder": {"hparams.ae_epochs": 1}, "skip-vae": {"model.hidden": [16, 16]}}
STACKING = sorted(n for n in variants.REGISTRY if variants.create(n).stacking() is None)


def runs(name: str, decoder: str, seeds=SEEDS, **extra):
    over = {**TINY, "variant": name, "model.decoder": decoder, **NEEDS.get(name, {}), **extra}
    return [resolve_run(apply_overrides(RunConfig(), {**over, "seed": s})) for s in seeds]


def record(path: Path) -> tuple[dict, list[dict], dict]:
    metrics = {k: v for k, v in json.loads((path / "metrics.json").read_text()).items()
               if k not in TIMINGS}
    with open(path / "history.csv", newline="") as f:
        history = [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]
    weights = torch.load(path / "model.pt", weights_only=True)
    return metrics, history, weights


def assert_same(a: Path, b: Path) -> None:
    ma, ha, wa = record(a)
    mb, hb, wb = record(b)
    assert ma == mb
    assert ha == hb
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("decoder", ["mlp", "made"])
@pytest.mark.parametrize("name", STACKING)
def test_stacked_runs_are_bit_identical_to_alone(tmp_path, name, decoder):
    todo = runs(name, decoder, seeds=(0, 1))
    assert all(refusal(r) is None for r in todo)
    alone = [execute(r, tmp_path / "alone") for r in todo]
    stacked = execute_stack(todo, tmp_path / "stacked")
    for a, b in zip(alone, stacked, strict=True):
        assert a.name == b.name  # the same run id
        assert_same(a, b)
        env = json.loads((b / "env.json").read_text())
        assert env["stacked"]["runs"] == [r.name for r in todo]


def test_stacked_sgd_runs_are_bit_identical_to_alone(tmp_path):
    """train.optimizer=sgd (He et al.'s protocol): each run's own SGD, bit for bit as alone."""
    todo = runs("vae", "mlp", seeds=(0, 1), **{"train.optimizer": "sgd", "train.lr": 0.5,
                                                 "model.init": "uniform"})
    alone = [execute(r, tmp_path / "alone") for r in todo]
    for a, b in zip(alone, execute_stack(todo, tmp_path / "stacked"), strict=True):
        assert_same(a, b)


@pytest.mark.parametrize("saved", [1, 3])
def test_a_killed_stack_resumes_to_the_same_bits(tmp_path, monkeypatch, saved):
    """Killed once ``saved`` of the 3 runs have written their epoch-1 checkpoint: on resume the
    runs start from different epochs (1 of them, or all 3, from their checkpoints), and every
    record is still the one alone gives."""
    todo = runs("vae", "mlp", **{"train.epochs": 3, "train.checkpoint_every": 1})
    alone = [execute(r, tmp_path / "alone") for r in todo]
    real, count = Checkpoints.save, []

    def save_then_kill(self, epoch, state):
        real(self, epoch, state)
        count.append(epoch)
        if len(count) == saved:
            raise Killed

    monkeypatch.setattr(Checkpoints, "save", save_then_kill)
    with pytest.raises(Killed):
        execute_stack(todo, tmp_path / "stacked")
    monkeypatch.setattr(Checkpoints, "save", real)
    assert not any((tmp_path / "stacked" / r.name / "metrics.json").exists() for r in todo)
    for a, b in zip(alone, execute_stack(todo, tmp_path / "stacked"), strict=True):
        assert_same(a, b)


class Killed(BaseException):
    """A kill at that moment: nothing after it runs."""


def test_a_stack_whose_runs_stop_at_other_epochs(tmp_path):
    """Early stopping is each run's own: a run that stops leaves the stack, the rest go on."""
    extra = {"train.epochs": 8, "train.stop_patience": 1, "train.lr": 0.1}  # stop at 2, 4, 6
    todo = runs("vae", "mlp", **extra)
    alone = [execute(r, tmp_path / "alone") for r in todo]
    stops = {len(record(a)[1]) for a in alone}
    assert len(stops) > 1, "the runs stop at one epoch: the case is not exercised"
    for a, b in zip(alone, execute_stack(todo, tmp_path / "stacked"), strict=True):
        assert_same(a, b)


def test_what_does_not_stack_says_why_and_packs_alone():
    made = runs("vae", "made", seeds=(0, 1))
    pix = runs("vae", "pixelcnn", seeds=(0, 1), **{"model.pixelcnn_layers": 1})
    native = runs("vae", "mlp", seeds=(0, 1), numerics="native")
    units, alone = pack([*made, *pix, *native])
    assert [len(u) for u in units] == [2, 1, 1, 1, 1]
    assert "convolutions" in alone[pix[0].name]
    assert "portable" in alone[native[0].name]
    assert "train_step" in refusal(runs("aggressive", "mlp", seeds=(0,))[0])
    assert "global generator" in refusal(runs("du-vae", "mlp", seeds=(0,))[0])
    units, alone = pack(made, mode="off")
    assert [len(u) for u in units] == [1, 1] and set(alone.values()) == {"--stack off"}
    units, _ = pack(runs("vae", "mlp", seeds=(0, 1, 2)), size=2)
    assert [len(u) for u in units] == [2, 1]


def test_a_forward_that_draws_from_the_global_generator_comes_apart(tmp_path):
    """du-vae's dropout (after its warm-up) draws from torch's global generator: vmap refuses
    it, and stacked_terms raises rather than give each run another draw than alone."""
    v = variants.create("du-vae", warmup=0.0)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_vae(v, 64, 4, hidden=(16,), activation="tanh"))
    x = torch.rand(2, 10, 64).round()
    noise = torch.randn(2, 1, 10, 4, generator=Streams.from_seed(0).noise)
    with pytest.raises(RuntimeError, match="randomness"):
        stacked_terms(models, list(x), list(noise), {"annealed": True})
    assert math.isfinite(float(models[0].head.running_mean.sum()))


GRID = """
[profile]
description = "two configurations, two seeds"
seeds = [0, 1]

[defaults]
dataset = "digits"
"model.hidden" = [16]
"model.latent_dim" = 4
"train.epochs" = 2
"train.batch_size" = 40
"train.train_points" = 120
"train.validation_size" = 60
"eval.is_samples" = 8
"eval.test_points" = 40

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "aggressive"
variant = "aggressive"
"""


def test_the_suite_stacks_by_default_and_its_records_are_those_of_runs_alone(tmp_path, capsys):
    from bench.grid.suite import dry_run, load_profile, run_suite, runs_dir

    (tmp_path / "grid.toml").write_text(GRID)
    profile = load_profile(str(tmp_path / "grid.toml"))
    _, line = dry_run(profile, tmp_path / "stacked")
    assert "stacking: 1 stacks (1 of 2), 2 runs alone (2: variant aggressive" in line
    run_suite(profile, tmp_path / "stacked")
    assert "stacking: 1 stacks (1 of 2), 2 runs alone" in capsys.readouterr().err
    run_suite(profile, tmp_path / "alone", stack="off")
    stacked, alone = runs_dir(tmp_path / "stacked", profile), runs_dir(tmp_path / "alone", profile)
    names = sorted(p.name for p in alone.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in stacked.iterdir() if not p.name.startswith("."))
    assert len(names) == 4
    for name in names:
        assert_same(alone / name, stacked / name)
        env = json.loads((stacked / name / "env.json").read_text())
        assert ("stacked" in env) == name.startswith("vae-")


def test_a_batched_kernel_is_used_only_where_it_gives_alone_s_bits():
    """``_decided`` keeps one kernel per run for a layout where the batched one rounds
    otherwise (here a batched form that adds one ulp), whatever its speed."""
    from bench.training import batching

    a = torch.randn(3, 5, 7)

    def looped(t):
        return torch.stack([t[r] * 2 for r in range(len(t))])

    def off_by_an_ulp(t):
        return torch.nextafter(t * 2, torch.full_like(t, math.inf))

    assert torch.equal(batching._decided("test-ulp", off_by_an_ulp, looped, a), a * 2)
    assert batching._SAME[next(k for k in batching._SAME if k[0] == "test-ulp")] is False


class GlobalDraw(variants.Variant):
    """A user's objective that draws from torch's global generator (a noisy loss term: it moves
    the recorded loss, not the gradients)."""

    def objective(self, terms, step, total_steps):
        return super().objective(terms, step, total_steps) + 1e-3 * torch.randn(())


def test_an_objective_drawing_from_the_global_generator_draws_its_own_run_s(tmp_path):
    todo = runs("test_stacked:GlobalDraw", "mlp", seeds=(0, 1))
    alone = [execute(r, tmp_path / "alone") for r in todo]
    for a, b in zip(alone, execute_stack(todo, tmp_path / "stacked"), strict=True):
        assert_same(a, b)


class DropoutHead(torch.nn.Module):
    def forward(self, params, **_):
        return torch.nn.functional.dropout(params, 0.1, self.training)


class Dropping(variants.Variant):
    """A user's variant whose forward draws from torch's global generator (dropout on the
    encoder's outputs), saying nothing about stacking."""

    def posterior_head(self, latent):
        return DropoutHead()


def test_a_stack_whose_forward_draws_from_the_global_generator_trains_alone(tmp_path, capsys):
    from bench.grid.backends import run_unit
    from bench.training.stacked import NotStackable

    todo = runs("test_stacked:Dropping", "mlp", seeds=(0, 1))
    alone = [execute(r, tmp_path / "alone") for r in todo]
    with pytest.raises(NotStackable, match="global generator"):
        execute_stack(todo, tmp_path / "given-up")
    assert run_unit(todo, tmp_path / "stacked", None, 0) == ["ok", "ok"]
    assert "they train alone" in capsys.readouterr().err
    for a in alone:
        assert_same(a, tmp_path / "stacked" / a.name)
        assert "stacked" not in json.loads((tmp_path / "stacked" / a.name / "env.json").read_text())
