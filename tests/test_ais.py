"""AIS, BDMC and quadrature against truth: the linear-Gaussian model's closed-form log p(x),
exact enumeration on a grid, and IS as AIS's one-step special case."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from test_metrics import linear_gaussian_model

from bench.cli import main
from bench.evaluation import ais, metrics, quadrature
from variants.core import VAE
from variants.latents import CategoricalLatent, GaussianLatent


def poor_q_model(d_lat=3, sigma=0.15):
    """The linear-Gaussian model with an encoder that ignores x: q(z|x) = N(0, 0.5 I), far from
    the exact posterior (IS with K = 500 from it misses log p(x) by 1.5 nats)."""
    model, w, b, s, x = linear_gaussian_model(d_obs=6, d_lat=d_lat, sigma=sigma)
    with torch.no_grad():
        enc = model.encoder[0]
        enc.weight.zero_()
        enc.bias.zero_()
        enc.bias[d_lat:] = math.log(0.5)
    return model, x


def test_sigmoid_schedule_runs_from_zero_to_one_and_t1_is_importance_sampling():
    betas = ais.sigmoid_schedule(100)
    assert len(betas) == 101 and betas[0] == 0 and betas[-1] == 1
    assert bool((betas.diff() > 0).all())
    assert ais.sigmoid_schedule(1).tolist() == [0.0, 1.0]


def test_ais_recovers_the_closed_form_where_is_falls_short():
    model, x = poor_q_model()
    exact = model.exact_log_marginal(x)
    nll_is, _ = metrics.nll_is_points(model, metrics.encode(model, x), x, 500, seed=0)
    is_gap = (-nll_is - exact).double()
    assert is_gap.mean() < -0.5 and is_gap.mean() < -2.5 * is_gap.std() / math.sqrt(len(x))
    out = ais.ais_points(model, x, ais.AISSettings(steps=500, chains=8), seed=0)
    err = out["log_px"] - exact
    se = err.std() / math.sqrt(len(x))
    assert abs(err.mean()) < max(0.05, 3 * se), (err.mean(), se)
    assert 0.4 < out["accept"].mean() < 0.95  # tuned toward 0.65 in the pilot


def test_ais_from_the_prior_also_recovers_the_closed_form():
    model, x = poor_q_model()
    out = ais.ais_points(model, x, ais.AISSettings(steps=300, chains=8, start="prior"), seed=0)
    err = out["log_px"] - model.exact_log_marginal(x)
    assert abs(err.mean()) < max(0.05, 3 * err.std() / math.sqrt(len(x)))


def test_one_intermediate_distribution_is_importance_sampling_with_the_same_noise():
    model, x = poor_q_model()
    q = metrics.encode(model, x)
    chains = 16  # <= IS_CHUNK: IS draws them in one chunk, as AIS draws its chains
    out = ais.ais_points(model, x, ais.AISSettings(steps=1, chains=chains), seed=3,
                         stream="nll_is")
    nll, _ = metrics.nll_is_points(model, q, x, chains, seed=3)
    torch.testing.assert_close(out["log_px"], -nll, rtol=0, atol=1e-10)


def test_same_seed_same_numbers_and_another_seed_other_noise():
    model, x = poor_q_model()
    s = ais.AISSettings(steps=20, chains=4)
    a, b = ais.ais_points(model, x, s, seed=1), ais.ais_points(model, x, s, seed=1)
    assert torch.equal(a["log_w"], b["log_w"]) and torch.equal(a["step"], b["step"])
    assert not torch.equal(a["log_w"], ais.ais_points(model, x, s, seed=2)["log_w"])


def test_bdmc_brackets_the_closed_form_and_its_gap_shrinks_with_more_steps():
    model, _ = poor_q_model()
    gaps = []
    for steps in (10, 200):
        r = ais.bdmc(model, 40, ais.AISSettings(steps=steps, chains=8), seed=0)
        x, _ = ais.simulate(model, 40, ais.generator(0, "bdmc-data"))
        exact = model.exact_log_marginal(x)
        lo, up = (r["lower"] - exact).mean(), (r["upper"] - exact).mean()
        slack = 3 * (r["gap"].std() / math.sqrt(40))
        assert lo < slack and up > -slack, (steps, lo, up)
        gaps.append(r["gap"].mean().item())
    assert gaps[1] < gaps[0] / 3, gaps


def test_a_categorical_latent_is_refused():
    model = VAE(6, CategoricalLatent(2, 3), hidden=(), decoder_hidden=())
    with pytest.raises(ais.AISError, match="continuous latent"):
        ais.check_model(model)


@pytest.mark.parametrize("d", [1, 2])
def test_quadrature_equals_the_closed_form(d):
    model, w, b, sigma, x = linear_gaussian_model(d_obs=6, d_lat=d, sigma=0.5)
    x = x[:10]
    with torch.no_grad():  # q(z|x) = N(x_1 / 4, 0.5): inside the box, not the posterior
        enc = model.encoder[0]
        enc.weight.zero_()
        enc.weight[:d, 0] = 0.25
        enc.bias.zero_()
        enc.bias[d:] = math.log(0.5)
    r = quadrature.quadrature(model, x, radius=8, cells=2000 if d == 1 else 200)
    torch.testing.assert_close(r["log_px"], model.exact_log_marginal(x), rtol=0, atol=1e-4)
    assert r["refinement"].max() < 1e-4 and r["edge_mass"].max() < 1e-12
    # the exact posterior mean, and KL(q || p(z|x)) of two Gaussians as the inference gap
    m = w.T @ w + sigma**2 * torch.eye(d, dtype=w.dtype)
    post_mean = (x - b) @ w @ torch.linalg.inv(m)
    torch.testing.assert_close(r["posterior_mean"], post_mean, rtol=0, atol=1e-6)
    q = metrics.encode(model, x)
    post_cov = sigma**2 * torch.linalg.inv(m)
    p = torch.distributions.MultivariateNormal(post_mean, covariance_matrix=post_cov)
    qd = torch.distributions.MultivariateNormal(q.mu, covariance_matrix=torch.diag_embed(
        q.logvar.exp()))
    kl = torch.distributions.kl_divergence(qd, p)
    assert r["q_mass"].min() > 1 - 1e-9
    torch.testing.assert_close(r["inference_gap"], kl, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def small_2d_model():
    """A Bernoulli VAE with a 2-d latent, trained briefly on digits (posteriors narrow and not
    Gaussian: what quadrature is for)."""
    from bench.data.builtin import load

    torch.manual_seed(0)
    data = load("digits")
    x = data.train[:1000]
    model = VAE(x.shape[1], GaussianLatent(2), hidden=(64,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _step in range(300):
        xb = x[torch.randint(len(x), (100,), generator=g)]
        loss = -model(xb, generator=g).elbo().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data.test[:40].to(torch.get_default_dtype())


def test_ais_agrees_with_quadrature_on_a_trained_2d_model(small_2d_model):
    model, x = small_2d_model
    exact = quadrature.quadrature(model, x, radius=6, cells=600)
    assert exact["refinement"].max() < 1e-3 and exact["edge_mass"].max() < 1e-6
    out = ais.ais_points(model, x, ais.AISSettings(steps=200, chains=8), seed=0)
    err = (out["log_px"] - exact["log_px"]).double()
    se = err.std() / math.sqrt(len(x))
    assert abs(err.mean()) <= max(3 * se, 0.02) and abs(err.mean()) <= 0.05, (err.mean(), se)


def _digests(run: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}


@pytest.fixture(scope="module")
def two_d_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "--dataset", "digits", "--epochs", "1", "--k", "20", "--out", str(out),
                 "--set", "model.hidden=32", "--set", "model.latent_dim=2"]) == 0
    return next(p for p in out.iterdir() if not p.name.startswith("."))


def test_evaluate_ais_writes_its_own_record_and_touches_nothing_else(two_d_run, capsys):
    before = _digests(two_d_run)
    args = ["evaluate", str(two_d_run), "--ais", "--ais-steps", "20", "--ais-chains", "4",
            "--ais-points", "30", "--bdmc", "10"]
    assert main(args) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path.parent == two_d_run and path.name == "ais-T20-C4-L10-encoder-N30-s0-bdmc10.json"
    after = _digests(two_d_run)
    assert {k: v for k, v in after.items() if k != path.name} == before
    record = json.loads(path.read_text())
    metrics_json = json.loads((two_d_run / "metrics.json").read_text())
    assert record["run_id"] == metrics_json["run_id"] and record["points"] == 30
    assert len(record["per_point"]["nll_ais"]) == 30
    assert record["exact"]["refinement_max"] < 1e-2  # a 2-d latent: quadrature beside AIS
    assert record["bdmc"]["points"] == 10 and math.isfinite(record["bdmc_gap"])
    # computed once: a second call reads it (the file is not rewritten)
    mtime = path.stat().st_mtime_ns
    assert main(args) == 0 and path.stat().st_mtime_ns == mtime


def test_evaluate_ais_on_a_categorical_latent_is_one_line_exit_2(tmp_path, capsys):
    assert main(["run", "--dataset", "digits", "--variant", "gumbel", "--epochs", "1", "--k",
                 "5", "--out", str(tmp_path), "--set", "model.hidden=16"]) == 0
    run = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ais", "--ais-points", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "continuous latent" in err[0]


TINY_PROFILE = """
[profile]
description = "AIS attached to a tiny grid"
seeds = [0, 1]
budget = "seconds"
baseline = "vae"

[defaults]
dataset = "digits"
"model.hidden" = [16]
"model.latent_dim" = 3
"train.epochs" = 1
"eval.is_samples" = 20
"eval.ais_points" = 12
"eval.ais_steps" = 5
"eval.ais_chains" = 2

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "beta=0.5"
variant = "beta"
beta = 0.5
"""


def test_suite_attaches_ais_after_the_grid_and_the_report_reads_it(tmp_path, capsys):
    profile = tmp_path / "tiny.toml"
    profile.write_text(TINY_PROFILE)
    results, reports = tmp_path / "results", tmp_path / "reports"
    assert main(["suite", "--profile", str(profile), "--results", str(results)]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["ok"] == 4 and counts["ais done"] == 4
    records = sorted(results.glob("tiny/runs/*/ais-T5-C2-L10-encoder-N12-s0.json"))
    assert len(records) == 4
    indices = {tuple(json.loads(p.read_text())["per_point"]["index"]) for p in records}
    assert len(indices) == 1  # every run on the same points
    assert main(["suite", "--profile", str(profile), "--results", str(results)]) == 0
    assert "ais done" not in capsys.readouterr().out  # computed once
    # other AIS settings in the profile: the same runs (not part of the id), new records, even
    # where a run's own config.json names other settings (or none, as records from before)
    profile.write_text(TINY_PROFILE.replace('"eval.ais_points" = 12', '"eval.ais_points" = 8'))
    assert main(["suite", "--profile", str(profile), "--results", str(results)]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts.get("ok", 0) == 0 and counts["ais done"] == 4
    assert len(list(results.glob("tiny/runs/*/ais-T5-C2-L10-encoder-N8-s0.json"))) == 4
    # a record without its weights (as committed): trained again, its metrics checked, then AIS
    bare = records[0].parent
    (bare / "model.pt").unlink()
    metrics_before = (bare / "metrics.json").read_bytes()
    profile.write_text(TINY_PROFILE.replace('"eval.ais_points" = 12', '"eval.ais_points" = 6'))
    assert main(["suite", "--profile", str(profile), "--results", str(results)]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["weights rebuilt"] == 1 and counts["ais done"] == 4
    assert (bare / "metrics.json").read_bytes() == metrics_before
    assert (bare / "model.pt").is_file() and (bare / "ais-T5-C2-L10-encoder-N6-s0.json").is_file()
    assert main(["report", "--profile", str(profile), "--results", str(results), "--reports",
                 str(reports)]) == 0
    text = (reports / "tiny.md").read_text()
    assert "NLL (AIS)" in text and "## How far the IS NLL is from the truth (AIS)" in text
    assert "Conclusions that change with the estimator" in text


def test_suite_attaches_each_unit_s_ais_as_soon_as_it_finished(tmp_path, capsys, monkeypatch):
    # one local job: a unit's records are made right after it, while its weights are surely
    # there (a working period may end, or the machine change, before the grid does)
    from bench.grid import attached

    profile = tmp_path / "tiny.toml"
    profile.write_text(TINY_PROFILE)
    results = tmp_path / "results"
    seen, real = [], attached.evaluate_ais

    def spy(path, *args, **kwargs):
        seen.append(len(list(results.glob("tiny/runs/*/metrics.json"))))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(attached, "evaluate_ais", spy)
    assert main(["suite", "--profile", str(profile), "--results", str(results),
                 "--stack", "off"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["ok"] == 4 and counts["ais done"] == 4
    assert seen == [1, 2, 3, 4]  # each run's record before the next run trains


def test_a_failing_attached_record_does_not_end_the_grid(tmp_path, capsys):
    from bench.grid.suite import load_profile, run_suite

    profile = tmp_path / "tiny.toml"
    profile.write_text(TINY_PROFILE)

    def each(names):
        raise RuntimeError("planted")

    counts = run_suite(load_profile(str(profile)), tmp_path / "r", progress=False, stack="off",
                       each=each)
    assert counts["ok"] == 4
    assert capsys.readouterr().err.count("RuntimeError: planted (tried again after the grid)") == 4


def test_ais_on_two_stochastic_layers_recovers_the_closed_form():
    # the joint latent (h1, h2), q(h2|h1) through a network: every gradient by autograd
    from test_two_layers import linear_model, sample_data

    model = linear_model(d_obs=6, d1=3, d2=2)
    x = sample_data(model, 30)
    exact = model.exact_log_marginal(x)
    out = ais.ais_points(model, x, ais.AISSettings(steps=200, chains=8), seed=0)
    err = out["log_px"] - exact
    assert abs(err.mean()) < max(0.05, 3 * err.std() / math.sqrt(len(x))), err.mean()


@pytest.mark.parametrize("decoder,options", [("made", {"decoder_hidden": (12,)}),
                                             ("pixelcnn", {"image_shape": (4, 4), "layers": 2,
                                                           "channels": 4})])
def test_ais_of_one_step_is_is_for_autoregressive_decoders(decoder, options):
    # the x-terms computed once per block, then z's part per chain: the same log p(x|z)
    torch.manual_seed(0)
    model = VAE(16, GaussianLatent(3), hidden=(12,), decoder=decoder, **options).double().eval()
    x = (torch.rand(9, 16, dtype=torch.float64) < 0.4).double()
    out = ais.ais_points(model, x, ais.AISSettings(steps=1, chains=8), seed=2, stream="nll_is")
    nll, _ = metrics.nll_is_points(model, metrics.encode(model, x), x, 8, seed=2)
    torch.testing.assert_close(out["log_px"], -nll, rtol=0, atol=1e-9)
    assert torch.isfinite(ais.ais_points(model, x, ais.AISSettings(steps=5, chains=2),
                                         seed=0)["log_px"]).all()
