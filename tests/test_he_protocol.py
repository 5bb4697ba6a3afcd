"""He et al. 2019's optimization protocol as config keys: ``train.optimizer=sgd`` (plain SGD,
their scripts' lr 1.0) and ``model.init=uniform`` (their text models' U(-0.01, 0.01) with
U(-0.1, 0.1) embeddings), checked against the closed-form update and the stated ranges."""

import pytest
import torch

from bench.config import RunConfig, TrainConfig, apply_overrides, resolve
from bench.identity import run_id
from bench.seeding import Streams
from bench.training.model import build_model
from bench.training.trainer import Trainer
from variants.errors import ConfigError


def _step(optimizer: str, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of a linear layer on loss = sum of squared parameters (gradient 2p)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    before = torch.cat([p.detach().flatten() for p in net.parameters()]).clone()
    trainer = Trainer.from_config(net, net, TrainConfig(optimizer=optimizer, lr=0.3, clip=clip),
                                  Streams.from_seed(0), torch.zeros(4, 3), False, 10)
    trainer.optimizer()
    assert trainer.update(sum((p ** 2).sum() for p in net.parameters()))
    return before, torch.cat([p.detach().flatten() for p in net.parameters()])


def test_sgd_takes_the_plain_gradient_step_and_clips_it():
    before, after = _step("sgd", clip=0.0)
    torch.testing.assert_close(after, before - 0.3 * 2 * before, rtol=0, atol=1e-15)
    before, after = _step("sgd", clip=0.1)  # the gradient clipped to norm 0.1 (torch's
    g = 2 * before                          # clip_grad_norm_ divides by norm + 1e-6)
    torch.testing.assert_close(after, before - 0.3 * g * (0.1 / (g.norm() + 1e-6)), rtol=0,
                               atol=1e-15)
    before, adam = _step("adam", clip=0.0)  # Adam's first step is lr x sign(g): not SGD's
    torch.testing.assert_close(adam, before - 0.3 * torch.sign(before), rtol=0, atol=1e-6)


def test_uniform_init_draws_he_et_al_s_ranges_from_the_seed():
    def model(seed: int):
        cfg = resolve(apply_overrides(RunConfig(), {
            "dataset": "synthetic-lstm", "model.decoder": "lstm", "model.latent_dim": 1,
            "model.embedding_dim": 8, "model.lstm_hidden": 8, "model.init": "uniform",
            "seed": seed}))
        return build_model(cfg, _Tokens())[0]

    a, b, c = model(0), model(0), model(1)
    emb = {n for n, m in a.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert emb, "the LSTM model has embedding tables"
    for name, p in a.named_parameters():
        bound = 0.1 if name.rsplit(".", 1)[0] in emb else 0.01
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound, name
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q) and not torch.equal(p, r), n


def test_uniform_init_keeps_a_variant_s_frozen_constant():
    """BN-VAE's fixed BN scale gamma is a constant of the method: U(-0.01, 0.01) for it (the
    synthetic profile's bn-vae runs before this fix) left gamma ~ 0.001 and no KL floor."""
    cfg = resolve(apply_overrides(RunConfig(), {
        "dataset": "synthetic-lstm", "model.decoder": "lstm", "model.latent_dim": 1,
        "model.embedding_dim": 8, "model.lstm_hidden": 8, "model.init": "uniform",
        "variant": "bn-vae", "hparams.gamma": 0.7}))
    model = build_model(cfg, _Tokens())[0]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert len(frozen) == 1 and torch.equal(frozen[0], torch.full_like(frozen[0], 0.7))
    assert all(p.abs().max() <= 0.1 for p in model.parameters() if p.requires_grad)


class _Tokens:
    """What build_model reads of the synthetic-lstm dataset, without generating it."""
    input_dim, likelihood, vocab_size = 10, "categorical", 1000


def test_the_new_keys_leave_existing_run_ids_and_refuse_unknown_values():
    base = resolve(RunConfig())
    assert run_id(base) == run_id(resolve(apply_overrides(RunConfig(), {
        "train.optimizer": "adam", "model.init": "default"})))
    assert run_id(base) != run_id(resolve(apply_overrides(RunConfig(), {"train.optimizer": "sgd"})))
    with pytest.raises(ConfigError, match="allowed.*adam.*sgd"):
        apply_overrides(RunConfig(), {"train.optimizer": "rmsprop"})
