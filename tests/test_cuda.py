"""The CUDA path: the same run and evaluation on a GPU (skipped, with the reason, without one)."""

import json

import pytest
import torch

from bench.config import RunConfig, apply_overrides
from bench.evaluation.metrics import evaluate
from bench.grid.runner import execute, load_run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs a CUDA device; none here")]
TINY = {"dataset": "digits", "dtype": "float64", "train.epochs": 3, "model.hidden": "32",
        "model.latent_dim": 8, "eval.is_samples": 200}


def test_cuda_run_gives_finite_metrics(tmp_path):
    cfg = apply_overrides(RunConfig(), {**TINY, "device": "cuda"})
    m = json.loads((execute(cfg, tmp_path) / "metrics.json").read_text())
    assert m["status"] == "ok" and m["nll_is"] <= m["neg_elbo"]
    assert json.loads(next(tmp_path.glob("*/env.json")).read_text())["cuda_device"]


def test_cpu_trained_model_evaluates_the_same_on_cuda(tmp_path):
    cfg = apply_overrides(RunConfig(), TINY)
    _, model, dataset = load_run(execute(cfg, tmp_path))
    x = dataset.test.double()
    cpu = evaluate(model, x, 200)
    gpu = evaluate(model.cuda(), x.cuda(), 200)
    # deterministic quantities agree to float64 rounding; sampled ones within their noise
    assert gpu["kl"] == pytest.approx(cpu["kl"], rel=1e-10)
    assert gpu["active_units"] == cpu["active_units"]
    assert abs(gpu["nll_is"] - cpu["nll_is"]) < 3 * cpu["nll_is_se"]
    assert abs(gpu["neg_elbo"] - cpu["neg_elbo"]) < 3 * cpu["neg_elbo_se"]
