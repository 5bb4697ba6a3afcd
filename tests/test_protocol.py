"""Faithful protocols (learning-rate stages, Adam constants, Glorot initialization) and mid-run
checkpoints that resume exactly."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import StoppedAfterCheckpoint

from bench.config import RunConfig, apply_overrides, resolve
from bench.grid.runner import execute, load_dataset
from bench.identity import checkpoint_dir, run_name
from bench.training.checkpoints import Checkpoints
from bench.training.model import build_model
from bench.training.trainer import burda_stage, epoch_lr

ROOT = Path(__file__).parents[1]
TINY = {"dataset": "digits", "dtype": "float64", "model.hidden": "32", "model.latent_dim": 8,
        "eval.is_samples": 20}
VOLATILE = {"train_seconds", "train_samples_per_s", "eval_seconds", "diagnostics_seconds"}


def test_burda_schedule_at_its_stage_boundaries():
    ends = [1, 4, 13, 40, 121, 364, 1093, 3280]  # cumulative 3^0 + ... + 3^i
    assert sum(3**i for i in range(8)) == 3280
    for i, end in enumerate(ends):
        assert burda_stage(end) == i
        assert burda_stage(end + 1) == min(i + 1, 7)
        assert epoch_lr("burda", 1e-3, end) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
    assert epoch_lr("burda", 1e-3, 3280) == pytest.approx(1e-4)  # 10^(-7/7)
    assert epoch_lr("constant", 1e-3, 500) == 1e-3


def test_the_schedule_reaches_the_optimizer_and_the_history(tmp_path):
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 5, "train.lr_schedule": "burda",
                                        "train.adam_eps": 1e-4, "train.adam_beta1": 0.99})
    path = execute(cfg, tmp_path)
    rows = [line.split(",") for line in (path / "history.csv").read_text().splitlines()]
    lrs = [float(r[rows[0].index("lr")]) for r in rows[1:]]
    stages = [0, 1, 1, 1, 2]
    assert lrs == pytest.approx([1e-3 * 10 ** (-i / 7) for i in stages], rel=1e-12)
    cfg_json = json.loads((path / "config.json").read_text())
    assert cfg_json["train"]["adam_eps"] == 1e-4 and cfg_json["train"]["adam_beta1"] == 0.99


def test_adam_constants_reach_the_optimizer():
    from bench.seeding import Streams
    from bench.training.trainer import Trainer
    from variants.core import VAE
    from variants.latents import GaussianLatent

    model = VAE(16, GaussianLatent(2), hidden=(4,))
    trainer = Trainer(model, model, 1e-3, Streams.from_seed(0), torch.zeros(8, 16), 4, True, 10,
                      adam={"betas": (0.99, 0.999), "eps": 1e-4})
    group = trainer.optimizer("encoder").param_groups[0]
    assert group["betas"] == (0.99, 0.999) and group["eps"] == 1e-4


def test_glorot_initialization_bounds_and_output_bias():
    cfg = resolve(apply_overrides(RunConfig(), {**TINY, "model.init": "glorot"}))
    dataset = load_dataset(cfg, None)
    model, _ = build_model(cfg, dataset)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert lin.weight.abs().max() <= bound
        assert lin.weight.abs().max() > 0.8 * bound  # uniform over the whole range
        assert lin.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.25)
    for lin in linears[:-1]:
        assert torch.all(lin.bias == 0)
    mean = dataset.train.double().mean(0).clamp(0.001, 0.999)
    torch.testing.assert_close(linears[-1].bias, torch.log(mean / (1 - mean)))
    assert dataset.train.mean(0).min() == 0  # digits has always-off pixels: the clip matters
    bad = resolve(apply_overrides(RunConfig(), {**TINY, "model.init": "glorot",
                                                "model.decoder": "made",
                                                "model.decoder_hidden": "16"}))
    with pytest.raises(Exception, match="model.init=glorot is defined"):
        build_model(bad, dataset)


# ---- checkpoints ----------------------------------------------------------------------------
#: aggressive, so the variant's own state (its mode and its switch-off rule) must resume too
KILLED = [*(f"{k}={v}" for k, v in TINY.items()), "train.epochs=24", "patience=2",
          "max_inner=30"]


def cli_run(out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "bench.cli", "run", "--variant", "aggressive", "--out", str(out)]
    for s in [*KILLED, *extra]:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def record(path: Path) -> tuple[dict, list]:
    metrics = {k: v for k, v in json.loads((path / "metrics.json").read_text()).items()
               if k not in VOLATILE}
    lines = (path / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h not in ("seconds", "diagnostics_seconds")]
    return metrics, [[row.split(",")[i] for i in keep] for row in lines]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_to_identical_metrics(tmp_path):
    whole = cli_run(tmp_path / "whole")
    assert whole.wait(300) == 0, whole.stderr.read()
    done = next((tmp_path / "whole").glob("aggressive-*"))

    killed = cli_run(tmp_path / "killed", "train.checkpoint_every=3")
    folder = checkpoint_dir(tmp_path / "killed" / done.name)
    deadline = time.time() + 300
    while not list(folder.glob("epoch-*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere after the first checkpoint, mid-run
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / done.name / "metrics.json").exists(), "finished too soon"
    saved = sorted(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.pt"))
    assert saved and saved[-1] < 24

    # the newest checkpoint truncated: reported, not used; the rerun still ends identical
    newest = sorted(folder.glob("epoch-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    rerun = cli_run(tmp_path / "killed", "train.checkpoint_every=3")
    assert rerun.wait(300) == 0
    err = rerun.stderr.read()
    assert "is unreadable" in err and newest.name in err
    resumed = tmp_path / "killed" / done.name
    assert record(resumed) == record(done)
    assert not folder.exists()  # a finished run keeps only its final weights
    assert json.loads((resumed / "config.json").read_text())["train"]["checkpoint_every"] == 3


@pytest.mark.parametrize("layers", [{}, {"model.latent2_dim": 4, "model.latent2_hidden": "16"}],
                         ids=["one-layer", "two-layers"])
def test_checkpoints_resume_exactly_in_process(tmp_path, layers, stop_after_checkpoint):
    """The same, without processes: a run stopped after its checkpoint at epoch 4 of 6 (its
    folder kept), resumed, equals the uninterrupted run; with one stochastic layer and with two
    (whose decoder reset after the autoencoder phase covers p(h1|h2))."""
    over = {**TINY, "train.epochs": 6, "variant": "pretrained-encoder", "ae_epochs": 2,
            "train.lr_schedule": "burda", **layers}
    whole = execute(apply_overrides(RunConfig(), over), tmp_path / "whole")
    cfg = resolve(apply_overrides(RunConfig(), {**over, "train.checkpoint_every": 2}))
    target = tmp_path / "part" / run_name(cfg)
    # the 6-epoch run, stopped by an exception right after its checkpoint at epoch 4
    stop_after_checkpoint(4)
    with pytest.raises(StoppedAfterCheckpoint):
        execute(cfg, tmp_path / "part")
    stop_after_checkpoint(0)  # disarmed: no checkpoint has epoch 0
    assert Checkpoints(checkpoint_dir(target), 2).latest()["epoch"] == 4
    from bench.training import trainer as train

    firsts, real_restore = [], train.restore
    def spy(*args):
        out = real_restore(*args)
        firsts.append(out[0])
        return out

    train.restore = spy
    try:
        resumed = execute(cfg, tmp_path / "part")
    finally:
        train.restore = real_restore
    assert firsts == [5]  # it went on from epoch 5: a restart from zero would also match
    assert record(resumed) == record(whole)


def test_paper_profile_lists_every_row_of_burda_table_1():
    # Burda et al. 2016, Table 1, MNIST: VAE and IWAE, k = 1, 5, 50, one and two stochastic
    # layers - 12 rows, each with its published NLL, all under the same protocol.
    from bench.grid.suite import grid, load_profile

    profile = load_profile("paper")
    cells = {}
    for label, run in grid(profile):
        cells.setdefault(label, []).append(run.config)
    rows = [f"{g} / {m} k={k}" for g in ("1 layer", "2 layers") for m in ("vae", "iwae")
            for k in (1, 5, 50)]
    assert sorted(cells) == sorted(rows)
    assert sorted(p["label"] for p in profile.published) == sorted(rows)
    for label, cfgs in cells.items():
        assert [c.seed for c in cfgs] == [0, 1, 2]
        cfg = cfgs[0]
        k = int(label.split("k=")[1])
        assert (cfg.hparams.get("samples") or cfg.hparams.get("k")) == k
        t, m = cfg.train, cfg.model
        assert (t.batch_size, t.lr_schedule, t.epochs, t.adam_eps, t.validation_size) == \
            (20, "burda", 3280, 1e-4, 400)
        assert (m.init, m.hidden, m.decoder_hidden, cfg.eval.is_samples) == \
            ("glorot", (200, 200), (200, 200), 5000)
        two = label.startswith("2 layers")
        assert (m.latent_dim, m.latent2_dim) == ((100, 50) if two else (50, 0))
        if two:
            assert m.latent2_hidden == (100, 100)


# ---- one training protocol: the clip reaches every optimizer step ---------------------------
@pytest.mark.slow
@pytest.mark.parametrize("clip", [1e-3, 0.0])
def test_the_clip_reaches_every_optimizer_step_of_every_variant(tmp_path, clip):
    """A global optimizer pre-step hook sees every step that any procedure takes (the model's,
    the encoder's and the decoder's optimizers, aggressive's inner loop, the pretrained decoder's
    run): with train.clip = 1e-3 no step's gradient norm exceeds it; with 0 (the control, so
    the check can fail) some do."""
    import variants
    from bench.config import RunConfig, apply_overrides
    from bench.grid.runner import execute

    norms = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0)

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(hook)
    try:
        for name in variants.REGISTRY:
            norms.clear()
            cfg = apply_overrides(RunConfig(), {
                "dataset": "digits", "dtype": "float64", "variant": name, "train.epochs": 2,
                "train.train_points": 200, "model.hidden": "16", "model.latent_dim": 4,
                "eval.is_samples": 5, "train.clip": clip, "model.decoder": "made",
                "model.decoder_hidden": "16,16", "train.decoder_pretrain_epochs": 1})
            execute(cfg, tmp_path / name)
            assert len(norms) >= 4, name  # at least the run's own 2 epochs x 2 batches
            if clip:
                assert max(norms) <= clip * (1 + 1e-9), (name, max(norms))
            else:
                assert max(norms) > 1e-3, name
    finally:
        handle.remove()
