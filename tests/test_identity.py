"""A run is resolved once: its config validated and its variant built one time, whatever path
it takes (``vae-bench run``, a suite, a lagging run and the pretrained decoder it starts from),
and the runner never builds a variant from its name again."""

from __future__ import annotations

import pytest

from bench import config
from bench.cli import main
from bench.grid.suite import load_profile, run_suite
from bench.identity import resolve_run, run_id, run_name
from bench.training import model

TINY = ["--dataset", "digits", "--epochs", "1", "--set", "dtype=float64",
        "--set", "model.hidden=8", "--set", "model.latent_dim=2", "--set", "eval.is_samples=5",
        "--set", "eval.test_points=20", "--set", "train.validation_size=20"]

PROFILE = """
[profile]
description = "two configurations, one of them lagging"
seeds = [0]

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [8]
"model.latent_dim" = 2
"model.decoder" = "made"
"model.decoder_hidden" = [16]
"train.epochs" = 1
"train.validation_size" = 20
"eval.is_samples" = 5
"eval.test_points" = 20

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "lagging beta"
variant = "beta"
beta = 0.5
"train.decoder_pretrain_epochs" = 1
"""


@pytest.fixture
def counted(monkeypatch):
    """How often a config is validated (``config.validate``) and a variant built by the model
    factory from its name (``bench.training.model.create_variant``) while a test runs."""
    calls = {"validate": 0, "model builds a variant": 0}
    validate, create = config.validate, model.create_variant

    def counting_validate(cfg):
        calls["validate"] += 1
        return validate(cfg)

    def counting_create(*args, **kwargs):
        calls["model builds a variant"] += 1
        return create(*args, **kwargs)

    monkeypatch.setattr(config, "validate", counting_validate)
    monkeypatch.setattr(model, "create_variant", counting_create)
    return calls


def test_vae_bench_run_resolves_its_run_once(tmp_path, counted):
    assert main(["run", "--variant", "vae", *TINY, "--out", str(tmp_path)]) == 0
    assert counted == {"validate": 1, "model builds a variant": 0}


def test_a_lagging_run_resolves_itself_and_its_pretrained_decoder_once_each(tmp_path, counted):
    args = ["run", "--variant", "vae", *TINY, "--set", "model.decoder=made",
            "--set", "model.decoder_hidden=16", "--set", "train.decoder_pretrain_epochs=1",
            "--out", str(tmp_path)]
    assert main(args) == 0
    assert counted == {"validate": 2, "model builds a variant": 0}
    assert len(list(tmp_path.glob("decoder-only-*"))) == 1


def test_a_suite_resolves_each_run_once(tmp_path, counted):
    (tmp_path / "two.toml").write_text(PROFILE)
    counts = run_suite(load_profile(str(tmp_path / "two.toml")), tmp_path / "r", progress=False)
    assert counts["ok"] == 2 and counts["pretrained decoders ok"] == 1
    assert counted == {"validate": 3, "model builds a variant": 0}  # 2 runs, 1 pretrained


def test_vae_bench_suite_resolves_each_run_once_for_the_grid_and_its_ais_pass(tmp_path, counted):
    (tmp_path / "two.toml").write_text(PROFILE)
    assert main(["suite", "--profile", str(tmp_path / "two.toml"), "--results",
                 str(tmp_path / "r")]) == 0
    assert counted == {"validate": 3, "model builds a variant": 0}


def test_the_resolved_run_names_the_run_as_its_config_does():
    cfg = config.apply_overrides(config.RunConfig(), {
        "dataset": "digits", "model.decoder": "made", "model.decoder_hidden": "16",
        "train.decoder_pretrain_epochs": 1})
    run = resolve_run(cfg)
    assert run.config == config.resolve(cfg)
    assert (run.run_id, run.name) == (run_id(run.config), run_name(run.config))
    assert run.pretrained.config.variant == "decoder-only" and run.pretrained.pretrained is None
    assert run.fresh_variant() is not run.variant and resolve_run(run) is run
