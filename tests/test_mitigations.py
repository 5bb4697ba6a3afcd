"""Each collapse mitigation against its own truth: bounds it guarantees, rules on scripted
sequences, hand computations, and what its procedure must leave unchanged."""

import csv
import json
import math

import pytest
import torch

import variants
from bench.config import RunConfig, TrainConfig, apply_overrides, from_dict, resolve
from bench.grid.runner import execute, load_dataset
from bench.identity import run_id
from bench.seeding import Streams
from bench.training.model import build_model
from bench.training.trainer import Trainer, fit
from variants.aggressive import InnerStop, MIPatience
from variants.core import VAE
from variants.delta_vae import variance_interval
from variants.du_vae import FLOOR
from variants.factory import build_vae
from variants.free_bits import free_bits
from variants.mmd import gaussian_kernel, mmd_unbiased

TINY = {"dataset": "digits", "dtype": "float64", "train.epochs": 2, "model.hidden": "32",
        "model.latent_dim": 8, "eval.is_samples": 20}


def model_of(name, latent=32, **hp):
    v = variants.create(name, **hp)
    return v, build_vae(v, 64, latent, hidden=(32,))


# ---- BN-VAE ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma, seed", [(0.7, 0), (0.3, 1), (1.5, 2)])
def test_bn_vae_batch_mean_kl_is_at_least_units_gamma_squared_over_two(gamma, seed):
    torch.manual_seed(seed)
    v, model = model_of("bn-vae", gamma=gamma)
    model.train()
    w0 = model.encoder[-1].weight.detach().clone()
    for scale in (0.1, 1.0, 30.0):  # encoders whose raw means are small, typical, large
        with torch.no_grad():
            model.encoder[-1].weight.copy_(scale * w0)
        x = (torch.rand(100, 64) < 0.3).float()
        kl = model.encode(x).kl().sum(-1).mean().item()
        # the bound, exactly, with BN's epsilon: each unit's normalized means have batch
        # variance var / (var + eps); a raw variance far above eps gives units * gamma^2 / 2
        var = model.encoder(x)[:, :32].double().var(0, unbiased=False)
        exact = (gamma**2 * var / (var + model.head.bn.eps)).sum().item() / 2
        assert kl >= exact * (1 - 1e-5), (scale, kl, exact)
        if scale >= 1.0:
            assert kl >= 32 * gamma**2 / 2 * (1 - 1e-3), (scale, kl)


def test_bn_vae_scale_is_fixed_and_evaluation_uses_running_statistics():
    torch.manual_seed(0)
    v, model = model_of("bn-vae")
    bn = model.head.bn
    assert not bn.weight.requires_grad and torch.all(bn.weight == 0.7)
    model.train()
    for _ in range(5):
        model.encode((torch.rand(50, 64) < 0.3).float())
    model.eval()
    x = (torch.rand(7, 64) < 0.3).float()
    raw = model.encoder(x)[:, :32]
    expect = (raw - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * 0.7 + bn.bias
    torch.testing.assert_close(model.encode(x).mu, expect)
    # in eval mode a point's posterior does not depend on the rest of the batch
    torch.testing.assert_close(model.encode(x[:1]).mu, model.encode(x).mu[:1])


# ---- delta-VAE ------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.15, 0.01, 1.0])
def test_delta_vae_interval_roots(delta):
    low, high = variance_interval(delta)
    assert 0 < low < 1 < high
    for v in (low, high):
        assert math.log(v) - v + 1 + 2 * delta == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("delta", [0.15, 0.5])
def test_delta_vae_kl_per_unit_is_at_least_delta_for_any_encoder_output(dtype, tol, delta):
    torch.manual_seed(0)
    v, model = model_of("delta-vae", latent=8, delta=delta)
    scales = torch.tensor([0.0, 1.0, 10.0, 1e3, 1e6], dtype=dtype).repeat_interleave(400)
    raw = torch.randn(len(scales), 16, dtype=dtype) * scales[:, None]
    raw[:4] = torch.tensor([-1e30, 1e30, -80.0, 80.0], dtype=dtype)[:, None]
    raw.requires_grad_(True)
    q = model.latent.posterior(model.head.to(dtype)(raw))
    kl = q.kl()
    assert kl.min().item() >= delta - tol
    kl.sum().backward()
    assert torch.isfinite(raw.grad).all()


def test_delta_vae_mean_is_free_and_takes_both_signs():
    # Razavi et al.: the variance carries the committed rate, the mean is the encoder's output
    # (the re-implementation this replaces derived a mean >= 0 from the variance)
    torch.manual_seed(0)
    v, model = model_of("delta-vae", latent=8)
    raw = torch.randn(500, 16, dtype=torch.float64) * 3
    q = model.latent.posterior(model.head.double()(raw))
    assert (q.mu < -1).any() and (q.mu > 1).any()
    torch.testing.assert_close(q.mu, raw[:, :8])
    low, _ = variance_interval(0.15)
    assert (q.logvar.exp() <= low * (1 + 1e-12)).all()


# ---- aggressive -----------------------------------------------------------------------------
def test_aggressive_inner_loop_stops_when_the_ten_step_mean_rises():
    def steps(losses, window=10, most=99):
        rule = InnerStop(window)
        for i, loss in enumerate(losses[:most], 1):
            if rule.update(loss):
                return i
        return min(len(losses), most)

    falling = [10.0 - 0.01 * i for i in range(200)]
    assert steps(falling) == 99  # never rises: runs to max_inner
    # means 5, 4, 4.5: compared at steps 10 (with nothing), 20 (down), 30 (up: stop)
    assert steps([5.0] * 10 + [4.0] * 10 + [4.5] * 10 + [1.0] * 50) == 30
    # equal means do not stop it; a rise at the 5th window does
    assert steps([3.0] * 40 + [3.1] * 10 + [0.0] * 50) == 50
    # a single spike inside a window counts only through its window's mean
    assert steps([5.0] * 10 + [4.0] * 9 + [4.9] + [3.0] * 80) == 99
    assert steps([5.0] * 10 + [6.0] * 10, most=15) == 15


def test_aggressive_switch_off_rule_on_a_scripted_mutual_information_sequence():
    rule = MIPatience(patience=5)
    mis = [1.0, 2.0, 1.5, 3.0, 2.9, 2.9, 3.0, 2.0, 4.0]
    still = [rule.update(m) for m in mis]
    # failures: 1.5, 2.9, 2.9, 3.0 (ties do not beat the best), 2.0 -> off after the 8th check
    assert still == [True] * 7 + [False, False]
    text = MIPatience(patience=1)
    assert [text.update(m) for m in (1.0, 2.0, 1.9)] == [True, True, False]


def trainer_for(model, x, seed=0):
    streams = Streams.from_seed(seed)
    return Trainer(model, model, 1e-2, streams, x, 20, True, 100)


def test_aggressive_outer_step_leaves_the_encoder_unchanged_while_aggressive():
    torch.manual_seed(0)
    v, model = model_of("aggressive", latent=8)
    x = (torch.rand(200, 64) < 0.3).double()
    model.double()
    trainer = trainer_for(model, x)
    enc0 = [p.detach().clone() for p in model.encoder_parameters()]
    dec0 = [p.detach().clone() for p in model.decoder_parameters()]
    v._inner_loop = lambda trainer, batch: True  # the outer step alone
    assert v.train_step(trainer, x[:20]) is not None
    assert all(torch.equal(a, p) for a, p in zip(enc0, model.encoder_parameters(), strict=True))
    assert not all(torch.equal(a, p) for a, p in zip(dec0, model.decoder_parameters(),
                                                     strict=True))
    v.aggressive = False  # after it: both parts step
    v.train_step(trainer, x[:20])
    assert not all(torch.equal(a, p) for a, p in zip(enc0, model.encoder_parameters(),
                                                     strict=True))


def test_aggressive_inner_loop_updates_only_the_encoder_on_fresh_batches():
    torch.manual_seed(0)
    v, model = model_of("aggressive", latent=8, max_inner=25)
    model.double()
    x = (torch.rand(200, 64) < 0.3).double()
    trainer = trainer_for(model, x)
    dec0 = [p.detach().clone() for p in model.decoder_parameters()]
    seen = []
    fresh = trainer.fresh_batch
    trainer.fresh_batch = lambda: seen.append(fresh()) or seen[-1]
    assert v._inner_loop(trainer, x[:20])
    assert all(torch.equal(a, p) for a, p in zip(dec0, model.decoder_parameters(), strict=True))
    assert all(p.grad is None for p in model.decoder_parameters())  # never even computed
    assert 20 <= v.inner <= 25 and len(seen) == v.inner - (v.inner < 25)
    assert not torch.equal(seen[0], seen[1])


def test_aggressive_run_records_when_it_switched_off(tmp_path):
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 4, "variant": "aggressive",
                                        "patience": 1, "max_inner": 30})
    path = execute(cfg, tmp_path)
    rows = list(csv.DictReader(open(path / "history.csv")))
    flags = [int(r["aggressive"]) for r in rows]
    assert flags[0] == 1 and flags == sorted(flags, reverse=True)
    for r in rows:
        inner = float(r["inner_steps"])
        assert (20 <= inner <= 30) if r["aggressive"] == "1" else inner == 0
    # with patience 1 it ends at the first epoch-end MI that is not a new best; the MI it reads
    # is the per-minibatch one (He et al.'s calc_mi), bounded by log mi_batch
    mis = [float(r["val_mutual_info_batch"]) for r in rows if r["aggressive"] == "1"]
    assert all(mi <= math.log(50) + 1e-9 for mi in mis)
    off = flags.index(0) if 0 in flags else len(flags)
    assert all(mis[i] > max(mis[:i], default=-math.inf) for i in range(off - 1))
    if 0 in flags:
        assert mis[off - 1] <= max(mis[:off - 1])
        assert all(r["val_mutual_info_batch"] == "" for r in rows[off:])


# ---- pretrained encoder ---------------------------------------------------------------------
def _pretrained_encoder_fit(**hp):
    cfg = resolve(apply_overrides(RunConfig(), {**TINY, "train.epochs": 2,
                                                "variant": "pretrained-encoder", "ae_epochs": 1,
                                                **hp}))
    dataset = load_dataset(cfg, None)
    model, v = build_model(cfg, dataset)
    start, _ = build_model(cfg, dataset)
    seen = {}

    def after_ae(trainer_epoch_end):  # the weights right after the phase ended
        def wrapped(trainer, diagnostics):
            row = trainer_epoch_end(trainer, diagnostics)
            if trainer.epoch == 1:
                seen.update(trainer.weights())
            return row
        return wrapped

    v.epoch_end = after_ae(v.epoch_end)
    result = fit(model, v, dataset.train.double(), TrainConfig(epochs=1, batch_size=100, lr=1e-3),
                 Streams.from_seed(0), dynamic_binarization=True,
                 epoch_end=lambda epoch: {"val_recon": 1.0})
    return v, model, start, result, seen


def test_pretrained_encoder_redraws_a_fresh_decoder_after_the_ae_phase():
    v, model, start, result, after = _pretrained_encoder_fit()
    row = result.history[0]
    assert row["phase"] == "autoencoder"
    assert row["loss"] == pytest.approx(row["neg_elbo"] - row["kl"], rel=1e-12)  # KL weight 0
    for name, b in start.decoder.state_dict().items():  # not the weights the run started from
        assert not torch.equal(after["decoder." + name], b), name
    assert not torch.equal(model.encoder[0].weight, start.encoder[0].weight)  # kept, trained
    assert v.ae_steps == result.steps and v.kl_weight(result.steps, 3 * result.steps) == 0.0
    assert v.kl_weight(2 * result.steps, 3 * result.steps) == 1.0  # ramp over half of the rest
    # the fresh draw comes from the run's own stream: the same run draws the same decoder
    _, _, _, _, again = _pretrained_encoder_fit()
    assert all(torch.equal(after[k], again[k]) for k in after if k.startswith("decoder."))


def test_pretrained_encoder_start_option_resets_the_decoder_to_the_run_start():
    _, model, start, _, after = _pretrained_encoder_fit(decoder_init="start")
    for name, b in start.decoder.state_dict().items():
        assert torch.equal(after["decoder." + name], b), name


class _Trainer:
    """What the autoencoder phase's rule reads and calls, scripted."""

    def __init__(self):
        self.epoch, self.epochs, self.step, self.calls, self.saved = 0, 20, 0, [], 0

    def weights(self):
        self.saved += 1
        return {"epoch": self.epoch}

    def load_weights(self, state):
        self.calls.append(("load", state["epoch"]))

    def redraw(self, module):
        self.calls.append(("redraw", module))


def test_pretrained_encoder_phase_ends_on_a_validation_plateau_with_its_best_weights():
    v = variants.create("pretrained-encoder", ae_epochs=10, ae_patience=2, ae_halvings=2)
    t = _Trainer()
    factors = []
    for t.epoch, loss in enumerate([5.0, 4.0, 4.5, 4.2, 3.9, 4.0, 4.1, 4.0, 4.0], start=1):
        row = v.epoch_end(t, {"val_recon": loss})
        factors.append(v.lr_factor(0, 1))
        if v.ae_steps is not None:
            break
    # new bests at epochs 1, 2, 5; halvings after epochs 4 and 7 (2 epochs without a new best)
    assert t.epoch == 7 and row["phase"] == "autoencoder"
    assert factors == [1, 1, 1, 0.5, 0.5, 0.5, 1]  # back to the base rate for the VAE phase
    assert t.calls == [("load", 5), ("redraw", "decoder")]


@pytest.mark.parametrize("ae, epochs", [(3, 3), (5, 3), (-1, 1)])
def test_pretrained_encoder_settings_without_a_vae_phase_are_refused(ae, epochs):
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": epochs,
                                        "variant": "pretrained-encoder", "ae_epochs": ae})
    with pytest.raises(variants.ConfigError, match="allowed: 0 < ae_epochs < train.epochs"):
        resolve(cfg)


# ---- MMD ------------------------------------------------------------------------------------
def test_mmd_matches_a_direct_pairwise_computation():
    torch.manual_seed(0)
    a, b = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64) + 0.5

    def k(u, w):  # the authors' kernel: exp(-mean_d (u_d - w_d)^2 / Z), Z = 3
        return math.exp(-float(((u - w) ** 2).mean()) / 3)

    n, total = len(a), 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += k(a[i], a[j]) + k(b[i], b[j]) - k(a[i], b[j]) - k(a[j], b[i])
    assert mmd_unbiased(a, b).item() == pytest.approx(total / (n * (n - 1)), rel=1e-12)
    assert gaussian_kernel(a, a).diagonal().sub(1).abs().max() < 1e-12
    # the suite's first version, exp(-|u - w|^2 / Z), is the kernel_power = 1 option
    first = math.exp(-float(((a[0] - b[1]) ** 2).sum()) / 3)
    assert gaussian_kernel(a, b, power=1)[0, 1].item() == pytest.approx(first, rel=1e-12)
    assert gaussian_kernel(a, b)[0, 1].item() == pytest.approx(k(a[0], b[1]), rel=1e-12)


def test_mmd_defaults_are_the_authors():
    v = variants.create("mmd")
    assert v.hp["lambda"] == 50.0 and v.hp["kernel_power"] == 2 and v.hp["alpha"] == 1.0


def test_mmd_is_unbiased_for_equal_distributions_and_positive_for_different_ones():
    def biased(a, b):  # the V-statistic: kernel means with their diagonals kept
        return (gaussian_kernel(a, a).mean() + gaussian_kernel(b, b).mean()
                - 2 * gaussian_kernel(a, b).mean())

    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(20, 4, generator=gen, dtype=torch.float64),
              torch.randn(20, 4, generator=gen, dtype=torch.float64)) for _ in range(4000)]
    draws = torch.stack([mmd_unbiased(a, b) for a, b in pairs])
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item()) < 3 * se
    # the same batches through the biased estimator: its mean is far outside that interval
    v_stat = torch.stack([biased(a, b) for a, b in pairs])
    assert v_stat.mean().item() > 20 * se
    shifted = mmd_unbiased(torch.randn(500, 4, generator=gen), torch.randn(500, 4, generator=gen)
                           + 1.0)
    assert shifted > 20 * se


def test_mmd_with_the_reparameterization_noise_as_prior_samples_is_unbiased():
    # pairs (z_i, e_i) with z_i = m + s e_i: dependent within a pair, independent across pairs;
    # with q = p (m = 0, s = 1, but a fresh e' for z) the estimate must average to 0
    gen = torch.Generator().manual_seed(1)
    draws = []
    for _ in range(3000):
        e = torch.randn(20, 4, generator=gen, dtype=torch.float64)
        z = torch.randn(20, 4, generator=gen, dtype=torch.float64)  # q = p, paired with e
        draws.append(mmd_unbiased(z, e))
    draws = torch.stack(draws)
    assert abs(draws.mean().item()) < 3 * draws.std().item() / math.sqrt(len(draws))


# ---- free bits ------------------------------------------------------------------------------
def test_free_bits_modes_against_hand_computation():
    kl = torch.tensor([[0.1, 0.5, 0.0],
                       [0.3, 0.05, 0.2]])
    # batch (Kingma): sum_u max(0.25, mean_b KL) = max(.25,.2)+max(.25,.275)+max(.25,.1)
    assert free_bits(kl, 0.25, "batch").item() == pytest.approx(0.25 + 0.275 + 0.25)
    # example (Li fb=1): totals 0.6 and 0.55 against 0.25 * 3 = 0.75: both masked out
    assert free_bits(kl, 0.25, "example").item() == 0.0
    assert free_bits(kl, 0.19, "example").item() == pytest.approx(0.6 / 2)  # target 0.57
    assert free_bits(kl, 0.18, "example").item() == pytest.approx((0.6 + 0.55) / 2)
    # dimension (Li fb=2): only entries > 0.25 count: 0.5 and 0.3
    assert free_bits(kl, 0.25, "dimension").item() == pytest.approx((0.5 + 0.3) / 2)
    # groups of 3 in batch mode: one group of total mean 0.575
    assert free_bits(kl, 0.25, "batch", groups=1).item() == pytest.approx(0.575)
    # gradients of the masked modes are a clamp's: 1 / B above the target, 0 below
    t = kl.clone().requires_grad_(True)
    free_bits(t, 0.25, "dimension").backward()
    assert t.grad.tolist() == [[0.0, 0.5, 0.0], [0.5, 0.0, 0.0]]


# ---- cyclical learning-rate restarts --------------------------------------------------------
def test_cyclical_cosine_restarts_reach_the_optimizer():
    v = variants.create("kl-anneal", schedule="cyclical", cycles=2, lr_restarts=True)
    assert [v.lr_factor(s, 100) for s in (0, 25, 50, 75)] == pytest.approx([1, 0.5, 1, 0.5])
    assert variants.create("kl-anneal", schedule="cyclical").lr_factor(25, 100) == 1.0
    torch.manual_seed(0)
    model = VAE(64, v.latent(4), hidden=(8,))
    trainer = trainer_for(model, torch.zeros(40, 64))
    opt = trainer.optimizer()
    trainer.set_lr_factor(v.lr_factor(25, 100))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-2)


# ---- DU-VAE ---------------------------------------------------------------------------------
def test_du_vae_rescales_the_bn_scale_floors_the_variance_and_drops_it_out_in_training():
    torch.manual_seed(0)
    v, model = model_of("du-vae", latent=16, warmup=0.0)  # floor and dropout from the start
    head = model.head
    with torch.no_grad():
        head.weight.uniform_(0.1, 3.0)
    model.eval()
    x = (torch.rand(300, 64) < 0.3).float()
    q = model.encode(x)
    scale = head.gamma * head.weight / head.weight.pow(2).mean().sqrt()
    assert scale.pow(2).mean().sqrt().item() == pytest.approx(0.5)
    assert (q.logvar.exp() >= FLOOR * (1 - 1e-6)).all()
    torch.testing.assert_close(model.encode(x).logvar, q.logvar)  # no dropout in evaluation
    model.train()
    var = model.encode(x).logvar.exp()
    dropped = (var - FLOOR).abs() < 1e-6 * FLOOR
    assert 0.05 < dropped.float().mean().item() < 0.15  # p = 0.1
    # with annealing: no floor and no dropout until it ends; evaluation then keeps the floor
    v2, m2 = model_of("du-vae", latent=16, warmup=0.5)
    assert v2.sample_options(10, 100) == {"annealed": False}
    m2.train()
    raw_logvar = m2.encoder(x)[:, 16:]
    torch.testing.assert_close(m2.encode(x, **v2.sample_options(10, 100)).logvar, raw_logvar)
    m2.eval()
    torch.testing.assert_close(m2.encode(x).logvar, raw_logvar)  # not annealed yet
    m2.train()
    m2.encode(x, **v2.sample_options(60, 100))
    m2.eval()
    torch.testing.assert_close(m2.encode(x).logvar, torch.log(FLOOR + raw_logvar.exp()))


# ---- Skip-VAE -------------------------------------------------------------------------------
SKIP_DECODERS = {"mlp": {"decoder_hidden": (32, 16)},
                 "made": {"decoder": "made", "decoder_hidden": (32, 16), "z_output": False},
                 "pixelcnn": {"decoder": "pixelcnn", "image_shape": (8, 8), "layers": 3,
                              "channels": 4, "z_output": False}}


@pytest.mark.parametrize("decoder", list(SKIP_DECODERS))
def test_skip_vae_differs_from_vae_on_every_decoder(decoder):
    """The base model conditions the first layer only (Dieng et al.'s base decoders); with skip,
    z reaches the logits even when every path through the first layer is cut."""
    torch.manual_seed(0)
    x = (torch.rand(3, 64) < 0.5).float()
    z = torch.randn(1, 3, 4)
    def first_z_weights(dec):
        if decoder == "mlp":
            return [getattr(dec, "0").weight]
        if decoder == "made":
            return [dec.z_maps[0].weight]
        return [dec.z_h[0].weight, dec.z_v[0].weight]

    def logits(dec, zz):
        return dec(zz) if decoder == "mlp" else dec.logits_given(dec.x_terms(x), x, zz)

    for name in ("vae", "skip-vae"):
        v = variants.create(name)
        dec = VAE(64, v.latent(4), hidden=(32,), **SKIP_DECODERS[decoder],
                  **v.decoder_options()).decoder
        with torch.no_grad():  # cut z's entry into the first layer
            for w in first_z_weights(dec):
                w.zero_()
        moved = (logits(dec, z) - logits(dec, z + 1.0)).abs().max().item()
        assert (moved > 1e-6) == (name == "skip-vae"), (name, moved)


def test_skip_vae_maps_per_decoder():
    v = variants.create("skip-vae")
    mlp = VAE(64, v.latent(4), hidden=(32,), decoder_hidden=(32, 16), **v.decoder_options())
    assert [m.out_features for m in mlp.decoder.skip] == [16]  # the later hidden layer only
    made = VAE(64, v.latent(4), hidden=(32,), decoder="made", decoder_hidden=(32, 16),
               z_output=False, **v.decoder_options()).decoder
    assert len(made.z_maps) == 2 and made.z_out is not None
    base = VAE(64, v.latent(4), hidden=(32,), decoder="made", decoder_hidden=(32, 16)).decoder
    assert len(base.z_maps) == 1
    with pytest.raises(variants.ConfigError, match="at least two hidden layers"):
        VAE(64, v.latent(4), hidden=(32,), decoder_hidden=(32,), **v.decoder_options())
    plain = VAE(64, v.latent(4), hidden=(32,), decoder_hidden=(32, 16))
    mlp.decoder.load_pretrained({k: t[:, :0] if k == "0.weight" else t
                                 for k, t in plain.decoder.state_dict().items()})
    assert all((m.weight == 0).all() for m in mlp.decoder.skip)


# ---- run identity ---------------------------------------------------------------------------
def test_parameters_added_later_keep_the_ids_of_recorded_runs():
    from pathlib import Path

    from bench.config import SUITE_VERSION

    runs = sorted(Path(__file__).parents[1].glob("results/*/runs/*/config.json"))
    checked = 0
    for path in runs:
        cfg = json.loads(path.read_text())
        metrics = json.loads((path.parent / "metrics.json").read_text())
        if cfg["variant"] not in ("free-bits", "kl-anneal") \
                or metrics.get("suite_version") != SUITE_VERSION:
            continue
        assert run_id(resolve(from_dict(cfg))) == metrics["run_id"], path.parent.name
        checked += 1
    assert checked >= 6
    fb = apply_overrides(RunConfig(), {"variant": "free-bits"})
    assert run_id(resolve(fb)) != run_id(resolve(apply_overrides(fb, {"mode": "dimension"})))
