"""Decoder families against truth: causality, normalization, the evaluation fast path, the
decoder-only reference and the lagging set-up (pretrained decoders, resume, Ray)."""

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.distributions import Bernoulli

import variants
from bench.config import RunConfig, apply_overrides, resolve
from bench.data.builtin import hold_out, load
from bench.grid.runner import execute, load_dataset
from bench.grid.suite import grid, load_profile, run_suite
from bench.identity import pretrain_config, run_name
from bench.report import regression_frame, summarize
from bench.training.model import build_model
from variants.core import VAE
from variants.decoders import MADEDecoder, PixelCNNDecoder, made_masks
from variants.latents import GaussianLatent

MADE_CONFIGS = [  # (hidden, window, direct)
    ((20,), -1, True), ((30, 25), -1, False), ((20,), 0, True), ((24,), 1, True),
    ((30, 25), 3, True), ((16, 16, 16), 5, False), ((20,), 40, True),
]
PIXELCNN_CONFIGS = [(1, 3), (2, 3), (3, 5), (2, 1)]  # (layers, kernel)


def input_jacobian(decoder, d, z_dim, seed=0):
    """d logit_i / d x_j of one image at a random z, shape (D, D), float64."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(d, generator=g) < 0.5).double()
    z = torch.randn(1, 1, z_dim, generator=g, dtype=torch.float64)
    return torch.autograd.functional.jacobian(lambda v: decoder.logits(v[None], z)[0, 0], x)


def assert_causal(jac, window=-1):
    """Zero on and above the diagonal (and before the window); nonzero somewhere below it."""
    d = len(jac)
    i, j = torch.meshgrid(torch.arange(d), torch.arange(d), indexing="ij")
    allowed = j < i
    if window >= 0:
        allowed &= j >= i - window
    assert (jac[~allowed] == 0).all(), "a logit depends on a pixel it must not see"
    if window != 0:
        assert (jac[allowed] != 0).any(), "no logit depends on any previous pixel"


@pytest.mark.parametrize("hidden, window, direct", MADE_CONFIGS)
def test_made_logit_d_never_sees_pixels_from_d_on(hidden, window, direct):
    torch.manual_seed(0)
    decoder = MADEDecoder(3, 12, hidden, "tanh", window=window, direct=direct).double()
    assert_causal(input_jacobian(decoder, 12, 3), window)


@pytest.mark.parametrize("layers, kernel", PIXELCNN_CONFIGS)
def test_pixelcnn_logit_d_never_sees_pixels_from_d_on(layers, kernel):
    torch.manual_seed(0)
    decoder = PixelCNNDecoder(3, (5, 4), layers, 6, kernel).double()
    jac = input_jacobian(decoder, 20, 3)
    assert_causal(jac)
    if (layers, kernel) == (3, 5):  # no blind spot: every earlier pixel reaches the last logit
        assert (jac[-1, :-1] != 0).all()


def test_made_window_gives_each_logit_exactly_its_window_with_direct_connections():
    masks, direct = made_masks(10, (8,), window=3)
    i, j = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    assert torch.equal(direct.bool(), (j < i) & (j >= i - 3))


def all_images(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)


@pytest.mark.parametrize("make", [
    lambda: MADEDecoder(4, 9, (16,), "tanh"),
    lambda: MADEDecoder(4, 9, (12, 10), "relu", window=2, direct=False),
    lambda: MADEDecoder(4, 10, (16,), "tanh", window=0, z_output=False),
    lambda: PixelCNNDecoder(4, (3, 3), 2, 8, 3),
    lambda: PixelCNNDecoder(4, (2, 5), 3, 4, 5, z_output=False),
], ids=["made", "made-window-2", "made-window-0", "pixelcnn", "pixelcnn-k5"])
def test_p_x_given_z_sums_to_one_over_all_binary_images(make):
    """sum_x p(x|z) = 1 over all 2^D images, for random z (float64, 1e-12)."""
    torch.manual_seed(1)
    decoder = make().double()
    xs = all_images(decoder.d)
    for _ in range(3):
        z = torch.randn(4, dtype=torch.float64).expand(1, len(xs), 4)
        with torch.no_grad():
            total = torch.logsumexp(decoder.log_prob(xs, z)[0], 0).exp().item()
        assert total == pytest.approx(1.0, abs=1e-12)


DECODER_KWARGS = {
    "mlp": {},
    "made": {"decoder": "made", "decoder_hidden": (24, 16), "window": 6},
    "made-direct": {"decoder": "made", "decoder_hidden": (24,), "z_output": False},
    "pixelcnn": {"decoder": "pixelcnn", "image_shape": (4, 4), "layers": 2, "channels": 6},
}


@pytest.mark.parametrize("name", DECODER_KWARGS)
def test_evaluation_fast_path_equals_the_straightforward_computation(name):
    """No-grad log p(x|z) (x-terms shared by samples, tiles, softplus_sum_) against per-sample
    logits and torch.distributions.Bernoulli, on the same z, float64 to 1e-10; enough samples
    for more than one tile."""
    torch.manual_seed(3)
    model = VAE(16, GaussianLatent(3), hidden=(8,), **DECODER_KWARGS[name]).double()
    x = (torch.rand(70, 16, dtype=torch.float64) < 0.4).double()
    z = torch.randn(40, 70, 3, dtype=torch.float64)  # 2800 rows > 1024 per tile
    with torch.no_grad():
        fast = model.log_likelihood(x, z)
        if name == "mlp":
            logits = torch.stack([model.decoder(z[s]) for s in range(len(z))])
        else:
            logits = torch.cat([model.decoder.logits(x, z[s:s + 1]) for s in range(len(z))])
        ref = Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("decoder", ["mlp", "made"])
def test_ancestral_previews_are_probabilities(decoder):
    torch.manual_seed(0)
    kwargs = DECODER_KWARGS["made" if decoder == "made" else "mlp"]
    model = VAE(16, GaussianLatent(3), hidden=(8,), **kwargs)
    probs = model.decoder.mean(torch.randn(5, 3), torch.Generator().manual_seed(0))
    assert probs.shape == (5, 16) and ((probs > 0) & (probs < 1)).all()


# ---- runs on digits -------------------------------------------------------------------------
TINY = {"dataset": "digits", "dtype": "float64", "train.epochs": 2, "model.hidden": "16",
        "model.latent_dim": 4, "eval.is_samples": 30, "model.decoder": "made",
        "model.decoder_hidden": "32"}


def config(**over):
    return resolve(apply_overrides(RunConfig(), {**TINY, **over}))


def metrics_of(path):
    return json.loads((path / "metrics.json").read_text())


def test_decoder_only_is_exact_and_carries_no_information(tmp_path):
    m = metrics_of(execute(config(variant="decoder-only"), tmp_path))
    assert m["nll_is"] == pytest.approx(m["nll_exact"], abs=1e-10)
    assert m["kl"] == 0 and m["mutual_info"] == 0 and m["active_units"] == 0
    assert m["neg_elbo"] == pytest.approx(m["nll_exact"], abs=1e-10)  # q = p: the bound is tight


def test_lagging_runs_share_the_pretrained_decoder_whatever_they_monitor():
    # a decoder-only model has no KL: its validation loss is its validation -ELBO, so the
    # monitor a lagging run watches must not give it a pretrained decoder of its own
    base = config(variant="vae", **{"train.decoder_pretrain_epochs": 3})
    other = config(variant="mmd", **{"train.decoder_pretrain_epochs": 3,
                                     "train.monitor": "val_loss"})
    assert pretrain_config(base) == pretrain_config(other)
    assert run_name(pretrain_config(base)) == run_name(pretrain_config(other))
    assert pretrain_config(other).train.monitor == "val_neg_elbo"


@pytest.mark.parametrize("decoder", ["made", "mlp", "pixelcnn"])
def test_lagging_run_starts_from_the_decoder_only_runs_weights(tmp_path, decoder):
    cfg = config(variant="vae", **{"train.decoder_pretrain_epochs": 3, "model.decoder": decoder,
                                   "model.pixelcnn_channels": 4})
    pre = pretrain_config(cfg)
    assert pre.variant == "decoder-only" and pre.train.epochs == 3 and pre.seed == cfg.seed
    assert pre.model.decoder == decoder and pre.model.decoder_hidden == (32,)
    path = execute(cfg, tmp_path)
    assert metrics_of(path)["pretrained_decoder"] == run_name(pre)
    assert (tmp_path / run_name(pre) / "model.pt").is_file()
    pretrained = torch.load(tmp_path / run_name(pre) / "model.pt", weights_only=True)
    state = {k.removeprefix("decoder."): v for k, v in pretrained.items()
             if k.startswith("decoder.")}
    dataset = load_dataset(cfg, None)
    model, _ = build_model(cfg, dataset, state)
    own = model.decoder.state_dict()
    assert set(state) <= set(own)
    for k, v in state.items():
        assert torch.equal(own[k], v) or v.numel() == 0, k
    for k in set(own) - set(state):  # what carries z starts at zero
        assert k.startswith("z_") and not own[k].any(), k
    if decoder == "mlp":  # the first layer's z-columns (none in the pretrained decoder)
        assert state["0.weight"].shape[1] == 0 and not own["0.weight"].any()
    # so the model starts as exactly the decoder-only model: log p(x|z) = log p(x) for any z
    pre_model, _ = build_model(pre, dataset)
    pre_model.load_state_dict(pretrained)
    x = dataset.test[:20].double()
    with torch.no_grad():
        z = torch.randn(3, 20, 4, dtype=torch.float64)
        torch.testing.assert_close(model.log_likelihood(x, z),
                                   pre_model.exact_log_marginal(x).expand(3, 20), rtol=0,
                                   atol=1e-12)
    # the pretrained run's identity is part of the dependent run's
    other = config(variant="vae", **{"train.decoder_pretrain_epochs": 4})
    assert run_name(other) != run_name(cfg)


LAG_PROFILE = """
[profile]
description = "lagging test grid"
seeds = [0, 1]

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [16]
"model.latent_dim" = 4
"model.decoder" = "made"
"model.decoder_hidden" = [32]
"train.epochs" = 3
"eval.is_samples" = 20

[[group]]
name = "made-lagging"
"train.decoder_pretrain_epochs" = 2

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "free-bits"
variant = "free-bits"
"""


@pytest.fixture(scope="module")
def lag_local(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lag")
    (tmp / "lag.toml").write_text(LAG_PROFILE)
    profile = load_profile(str(tmp / "lag.toml"))
    counts = run_suite(profile, tmp / "results", progress=False)
    assert counts["ok"] == 4 and counts["pretrained decoders ok"] == 2
    return tmp / "lag.toml", regression_frame(summarize(profile, tmp / "results"))


def test_report_has_a_table_per_group_and_the_collapse_trajectories(lag_local, tmp_path):
    from bench.report import write_report

    path, _ = lag_local
    profile = load_profile(str(path))
    written = write_report(profile, path.parent / "results", tmp_path)
    report = (tmp_path / "lag.md").read_text()
    assert "### made-lagging" in report and "AU strict" in report
    assert "no estimate pooled over N points exceeds log N = 5.70" in report  # 300 test digits
    assert tmp_path / "lag" / "collapse_trajectories.png" in written


@pytest.mark.slow
def test_lagging_grid_resumed_equals_uninterrupted(tmp_path, lag_local):
    import shutil

    path, reference = lag_local
    profile = load_profile(str(path))
    run_suite(profile, tmp_path, progress=False)
    runs = tmp_path / "lag" / "runs"
    # lose a pretrained decoder and a run that used it; the rest stays
    cfg = grid(profile)[0][1].config
    shutil.rmtree(runs / run_name(pretrain_config(cfg)))
    shutil.rmtree(runs / run_name(cfg))
    counts = run_suite(profile, tmp_path, jobs=2, progress=False)
    assert counts["ok"] == 1 and counts["skipped"] == 3
    assert regression_frame(summarize(profile, tmp_path)).equals(reference)


@pytest.mark.slow
def test_lagging_grid_on_ray_equals_local(tmp_path, lag_local):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    path, reference = lag_local
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-m", "bench.cli", "suite", "--profile", str(path),
                          "--results", str(tmp_path), "--backend", "ray"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["ok"] == 4
    profile = load_profile(str(path))
    assert regression_frame(summarize(profile, tmp_path)).equals(reference)


def test_validation_split_is_fixed_held_out_and_recorded(tmp_path):
    full = load("linear-gaussian")  # real-valued, every row distinct
    split = hold_out(full, 500)
    rows = lambda t: {tuple(r) for r in t.tolist()}  # noqa: E731
    assert len(split.valid) == 500 and len(split.train) == len(full.train) - 500
    assert rows(split.valid).isdisjoint(rows(split.train))
    assert rows(split.valid) | rows(split.train) == rows(full.train)
    assert torch.equal(hold_out(full, 500).valid, split.valid)  # fixed, whatever the run
    cfg = config(variant="vae")
    ds = load_dataset(cfg, None)
    assert len(ds.valid) == cfg.train.validation_size == 197
    assert set(ds.valid.unique().tolist()) <= {0.0, 1.0}  # binarized once, like the test split
    path = execute(cfg, tmp_path)
    env = json.loads((path / "env.json").read_text())
    assert env["dataset_digests"]["validation"] == ds.digests["validation"]
    hist = (path / "history.csv").read_text().splitlines()
    header = hist[0].split(",")
    for col in ("val_neg_elbo", "val_kl", "val_mutual_info", "val_active_units",
                "val_active_units_strict", "val_mutual_info_bound", "val_kl_per_unit"):
        assert col in header
    row = dict(zip(header, hist[-1].split(","), strict=True))
    assert float(row["val_mutual_info_bound"]) == pytest.approx(math.log(197))
    assert len(row["val_kl_per_unit"].split()) == 4


def test_every_decoder_family_builds_for_every_variant():
    for name in variants.REGISTRY:
        for kind in ("mlp", "made", "pixelcnn"):  # two hidden layers: skip-vae on mlp needs them
            cfg = config(variant=name, **{"model.decoder": kind, "model.decoder_hidden": "32,32"})
            model, _ = build_model(cfg, load_dataset(cfg, None))
            assert kind[:3] in model.decoder.__class__.__name__.lower()  # SkipMLPDecoder too
