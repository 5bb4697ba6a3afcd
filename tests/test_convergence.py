"""The convergence protocol: early stopping, He et al.'s decay on plateau, the best weights
evaluated, and an early-stopped run resumed from its checkpoint to identical numbers."""

import json

import pandas as pd
import pytest
import torch
from conftest import StoppedAfterCheckpoint

from bench.config import RunConfig, apply_overrides, resolve
from bench.grid.runner import execute
from bench.identity import checkpoint_dir, run_name
from bench.training.checkpoints import Checkpoints
from bench.training.convergence import Convergence
from variants.errors import ConfigError

TINY = {"dataset": "digits", "dtype": "float64", "model.hidden": "16", "model.latent_dim": 4,
        "eval.is_samples": 10}
VOLATILE = {"train_seconds", "train_samples_per_s", "eval_seconds", "run_id",
            "diagnostics_seconds"}


def drive(conv: Convergence, values: list[float]) -> list[str]:
    """The protocol's actions on a scripted sequence of validation values; weights are the
    epoch number, so the kept best weights say which epoch they came from."""
    actions = []
    for epoch, v in enumerate(values, 1):
        actions.append(conv.after_epoch(epoch, {"val_neg_elbo": v}, lambda e=epoch: {"w": e}))
        if actions[-1] == "stop":
            break
    return actions


def test_early_stopping_counts_epochs_without_a_new_best():
    conv = Convergence(patience=3)
    # epoch 4 ties the best (no new best: it counts), epoch 5 is a new best
    assert drive(conv, [5, 4, 4.5, 4.0, 3.9, 4.1, 4.0, 3.95, 1.0]) == \
        ["", "", "", "", "", "", "", "stop"]
    assert (conv.best, conv.best_epoch, conv.best_weights) == (3.9, 5, {"w": 5})
    assert conv.summary(8, "ok") == {"stop_reason": "patience", "converged": True,
                                     "best_epoch": 5, "stopped_epoch": 8, "lr_decays": 0}
    tie = Convergence(patience=3)
    assert drive(tie, [5, 4, 4.5, 4.0, 4.2]) == ["", "", "", "", "stop"]


def test_decay_on_plateau_follows_he_et_al():
    """image.py: an epoch worse than the best counts, one that is not (a tie included) resets
    the count; at lr_decay_patience the lr is halved (best weights back, fresh optimizers); the
    run stops at the max_decays-th decay."""
    conv = Convergence(lr_decay_patience=2, max_decays=2)
    acts = drive(conv, [5, 4, 4.5, 4.0, 4.6, 4.7, 3.0, 3.5, 3.6, 9])
    assert acts == ["", "", "", "", "", "decay", "", "", "stop"]
    assert conv.factor == 0.25 and conv.decays == 2 and conv.best_epoch == 7
    assert conv.summary(9, "ok")["stop_reason"] == "decays"


def test_a_run_that_never_stops_is_capped():
    conv = Convergence(patience=5)
    drive(conv, [5, 4, 3, 2])
    assert conv.summary(4, "ok") == {"stop_reason": "cap", "converged": False, "best_epoch": 4,
                                     "stopped_epoch": 4, "lr_decays": 0}


def test_the_protocol_needs_a_validation_split_and_a_decay_for_max_decays():
    with pytest.raises(ConfigError, match="watch the validation split"):
        resolve(apply_overrides(RunConfig(), {**TINY, "train.stop_patience": 2,
                                              "train.validation_size": 0}))
    with pytest.raises(ConfigError, match="train.max_decays is set but no decay happens"):
        resolve(apply_overrides(RunConfig(), {**TINY, "train.max_decays": 2}))


def test_protocol_keys_stay_out_of_the_run_id_at_their_defaults():
    from bench.identity import run_id

    plain = resolve(apply_overrides(RunConfig(), TINY))
    same = resolve(apply_overrides(RunConfig(), {**TINY, "train.stop_patience": 0,
                                                 "train.lr_decay": 0.5}))
    assert run_id(plain) == run_id(same)
    assert run_id(resolve(apply_overrides(RunConfig(), {**TINY, "train.stop_patience": 3}))) \
        != run_id(plain)


def metrics(path):
    return {k: v for k, v in json.loads((path / "metrics.json").read_text()).items()
            if k not in VOLATILE}


def test_an_early_stopped_run_evaluates_its_best_epoch_weights(tmp_path):
    """The protocol's run equals, metric for metric, a plain run of as many epochs as its best
    epoch: same trajectory up to there, then the evaluation of those weights."""
    over = {**TINY, "train.epochs": 40, "train.stop_patience": 2, "train.lr": 0.03}
    path = execute(apply_overrides(RunConfig(), over), tmp_path / "a")
    m = metrics(path)
    assert m["stop_reason"] == "patience" and m["converged"] is True
    assert m["stopped_epoch"] == m["best_epoch"] + 2 < 40
    rows = (path / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + m["stopped_epoch"] and "best" in rows[0].split(",")
    plain_path = execute(apply_overrides(RunConfig(), {**TINY, "train.lr": 0.03,
                                                       "train.epochs": m["best_epoch"]}),
                         tmp_path / "b")
    plain = metrics(plain_path)
    for key in ("neg_elbo", "nll_is", "kl", "mutual_info", "active_units"):
        assert m[key] == plain[key], key
    saved = torch.load(path / "model.pt", weights_only=True)
    best = torch.load(plain_path / "model.pt", weights_only=True)
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)


def test_an_early_stopped_run_killed_after_a_checkpoint_resumes_to_identical_numbers(
        tmp_path, stop_after_checkpoint):
    """Stopped by an exception right after its checkpoint (the files a SIGKILL leaves), with a
    decay on plateau already behind it, then resumed: the best weights, the counts and the
    learning-rate factor come back from the checkpoint, and the record is the uninterrupted
    run's."""
    over = {**TINY, "train.epochs": 40, "train.lr": 0.03, "train.lr_decay_patience": 1,
            "train.max_decays": 3}
    whole = metrics(execute(apply_overrides(RunConfig(), over), tmp_path / "whole"))
    assert whole["stop_reason"] == "decays" and whole["stopped_epoch"] > 4
    cut = whole["stopped_epoch"] - 2
    cfg = resolve(apply_overrides(RunConfig(), {**over, "train.checkpoint_every": 1}))
    stop_after_checkpoint(cut)
    with pytest.raises(StoppedAfterCheckpoint):
        execute(cfg, tmp_path / "part")
    stop_after_checkpoint(0)
    state = Checkpoints(checkpoint_dir(tmp_path / "part" / run_name(cfg)), 1).latest()
    assert state["epoch"] == cut and state["convergence"]["decays"] >= 1
    resumed = metrics(execute(cfg, tmp_path / "part"))
    assert resumed == whole


def test_the_report_marks_runs_converged_or_capped(tmp_path):
    from bench.grid.suite import load_profile, run_suite
    from bench.report import write_report

    (tmp_path / "conv.toml").write_text("""
[profile]
description = "protocol"
seeds = [0]

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [16]
"model.latent_dim" = 4
"eval.is_samples" = 10
"train.lr" = 0.03
"train.epochs" = 40
"train.stop_patience" = 2

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "capped"
variant = "vae"
"train.epochs" = 2
""")
    profile = load_profile(str(tmp_path / "conv.toml"))
    assert run_suite(profile, tmp_path / "results", progress=False)["ok"] == 2
    write_report(profile, tmp_path / "results", tmp_path / "reports")
    report = (tmp_path / "reports" / "conv.md").read_text()
    assert "| converged 1/1, epoch " in report and "| converged 0/1, epoch 2; capped 1 |" in report
    assert "early stopping after 2 epochs without a new best val_neg_elbo" in report


def test_the_protocol_watches_from_its_first_epoch():
    conv = Convergence(patience=2, start=4)
    # epochs 1-3 (a warm-up) are not watched: their better values are no best
    assert drive(conv, [1, 1, 1, 5, 4, 4.5, 4.6]) == ["", "", "", "", "", "", "stop"]
    assert conv.best_epoch == 5 and conv.best == 4


def test_epochs_of_a_warm_up_are_not_watched():
    """An epoch that ends while the variant still warms up (Variant.warming_up) counts as
    nothing, whatever train.protocol_from says."""
    conv = Convergence(patience=2)
    warm = [True, True, False, False, False, False]
    acts = [conv.after_epoch(e, {"val_neg_elbo": v}, lambda e=e: {"w": e}, w)
            for e, (v, w) in enumerate(zip([1, 2, 5, 4, 4.5, 4.6], warm, strict=True), 1)]
    assert acts == ["", "", "", "", "", "stop"] and conv.best_epoch == 4


@pytest.mark.parametrize("variant, hp, warm_steps", [
    ("kl-anneal", {"schedule": "linear", "warmup": 0.5}, 50),
    ("bn-vae", {"warmup": 0.3}, 30),
    ("du-vae", {"warmup": 0.3}, 30),
    ("vae", {}, 0),
    ("beta", {"beta": 0.5}, 0),
])
def test_which_variants_warm_up_and_for_how_long(variant, hp, warm_steps):
    from variants import resolve as variant_class
    v = variant_class(variant)(**hp)
    v.steps_per_epoch = 10
    assert [s for s in range(100) if v.warming_up(s, 100)] == list(range(warm_steps))


def test_a_run_with_a_kl_warm_up_keeps_no_best_before_its_weight_reaches_1(tmp_path):
    path = execute(apply_overrides(RunConfig(), {
        **TINY, "variant": "kl-anneal", "schedule": "linear", "warmup": 0.5, "train.epochs": 6,
        "train.stop_patience": 10}), tmp_path)
    hist = pd.read_csv(path / "history.csv")
    # the weight reaches 1 at step 3 * steps-per-epoch: epochs 1-2 are not watched
    assert hist["best"].isna().tolist() == [True, True, False, False, False, False]
    assert metrics(path)["best_epoch"] >= 3


def test_val_loss_is_the_variants_own_objective_on_the_validation_split():
    """Closed form: with the same noise, beta-VAE's objective is recon + beta * KL with the
    analytic KL, so the validation losses at beta = 1 and beta = 0.5 differ by exactly half the
    validation KL of the diagnostics (which needs no noise)."""
    from bench.evaluation.metrics import validation_diagnostics, validation_loss
    from bench.grid.runner import load_dataset
    from bench.training.model import build_model

    cfg = resolve(apply_overrides(RunConfig(), {**TINY, "variant": "beta", "beta": 1.0}))
    dataset = load_dataset(cfg, None)
    model, one = build_model(cfg, dataset)
    half = resolve(apply_overrides(RunConfig(), {**TINY, "variant": "beta", "beta": 0.5}))
    _, variant_half = build_model(half, dataset)
    valid = dataset.valid.to(torch.float64)
    a = validation_loss(model, one, valid, 100, 0, 1, 0, 10)
    b = validation_loss(model, variant_half, valid, 100, 0, 1, 0, 10)
    kl = validation_diagnostics(model, valid, 0, 1)["val_kl"]
    assert a - b == pytest.approx(0.5 * kl, rel=1e-9, abs=1e-9)
    assert validation_loss(model, one, valid, 100, 0, 1, 0, 10) == a  # its own seeded noise


def test_a_run_watching_its_own_objective_keeps_the_best_of_it(tmp_path):
    """mmd at alpha = 1 has no per-example KL, so its validation -ELBO is not what it trains;
    with train.monitor = val_loss the protocol's best is the running minimum of val_loss."""
    over = {**TINY, "variant": "mmd", "train.epochs": 8, "train.lr_decay_patience": 2,
            "train.monitor": "val_loss"}
    path = execute(apply_overrides(RunConfig(), over), tmp_path)
    hist = pd.read_csv(path / "history.csv")
    assert (hist["best"] == hist["val_loss"].cummin()).all()
    m = metrics(path)
    assert m["best_epoch"] == int(hist.loc[hist["val_loss"].idxmin(), "epoch"])
    plain = execute(apply_overrides(RunConfig(), {**over, "train.monitor": "val_neg_elbo"}),
                    tmp_path)
    assert plain != path and "val_loss" not in pd.read_csv(plain / "history.csv")
