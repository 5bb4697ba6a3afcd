"""The fast mode (``train.compile``: torch.compile of the model) against eager training.

Same initial weights, same noise, same steps: losses and weights agree up to float rounding. The
tolerance is for float64: inductor may reorder a reduction (1e-16 relative), and six Adam steps
amplify that by a few orders of magnitude at most, so 1e-9 is loose for rounding and tight for
any real difference (a wrong temperature or a stale graph moves the loss at the 1e-3 level).
"""

import copy
import hashlib
import json
import shutil

import pytest
import torch

from bench.config import SUITE_VERSION, RunConfig, apply_overrides, to_dict
from bench.identity import HASHED_ONLY_WHEN_SET, NOT_HASHED, run_id
from bench.training.trainer import compile_model, make_optimizer, train_step
from variants import create
from variants.factory import build_vae

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler; none on PATH")


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("name, hparams, latent2", [
    ("vae", {}, 0),
    # the temperature changes every 2 steps: a float option the compiled graph must take as input
    ("gumbel", {"n_vars": 4, "n_classes": 3, "rate": 0.1, "every": 2}, 0),
    # two stochastic layers: the KL estimate and log q / log p come out of the compiled graph
    ("iwae", {"k": 3}, 4),
])
def test_compiled_training_equals_eager(name, hparams, latent2):
    variant = create(name, **hparams)
    torch.manual_seed(0)
    model = build_vae(variant, 64, 8, latent2_dim=latent2, latent2_hidden=(16,),
                            hidden=(32,)).double()
    twin = copy.deepcopy(model)
    initial = next(model.parameters()).detach().clone()
    fast = compile_model(twin)
    opt, opt_fast = make_optimizer(model.parameters(), 1e-2), make_optimizer(twin.parameters(), 1e-2)
    x = (torch.rand(20, 64, dtype=torch.float64) < 0.3).double()
    noise, noise_fast = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    taus = set()
    for step in range(6):
        taus.add(json.dumps(variant.sample_options(step, 6)))
        loss, terms = train_step(model, variant, opt, x, step, 6, noise)
        loss_fast, terms_fast = train_step(fast, variant, opt_fast, x, step, 6, noise_fast)
        torch.testing.assert_close(loss_fast, loss, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(terms_fast.kl, terms.kl, rtol=1e-9, atol=1e-9)
    for p, p_fast in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p_fast, p, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(next(twin.parameters()), initial, atol=1e-3)  # it did train
    if name == "gumbel":
        assert len(taus) == 3


def test_fast_mode_is_part_of_a_run_identity_only_when_set():
    cfg = RunConfig()
    fast = apply_overrides(cfg, {"train.compile": "true"})
    assert fast.train.compile is True and run_id(fast) != run_id(cfg)
    # runs recorded before the field existed keep their ids
    d = to_dict(cfg)
    for section, key in (*HASHED_ONLY_WHEN_SET, *NOT_HASHED):  # added later, at their default
        del d[section][key]
    assert ("train", "compile") in HASHED_ONLY_WHEN_SET
    blob = json.dumps({"suite_version": SUITE_VERSION, **d}, sort_keys=True)
    assert run_id(cfg) == hashlib.sha256(blob.encode()).hexdigest()[:12]
