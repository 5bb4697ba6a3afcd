"""Token sequences against truth: the LSTM decoder's one-pass log p(x|z) equals a token-by-token
loop, token t's logits never see tokens >= t, the pretrained start preserves the language
model, and He et al.'s synthetic generator is deterministic."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data import tokens
from variants.decoders.lstm import LSTMDecoder, LSTMEncoder


def _decoder(z_dim=3, layers=2, z_output=True, vocab=7, length=6):
    torch.manual_seed(0)
    return LSTMDecoder(z_dim, vocab, length, embed=5, hidden=4, layers=layers,
                       z_output=z_output).double().eval()


@pytest.mark.parametrize("layers,z_output", [(1, False), (2, True)])
def test_one_pass_log_prob_equals_a_token_by_token_loop(layers, z_output):
    dec = _decoder(layers=layers, z_output=z_output)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 7, (4, 6), generator=g)
    z = torch.randn(3, 4, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fast = dec.log_prob(x, z)
        loop = torch.zeros(3, 4, dtype=torch.float64)
        for s in range(3):
            token, state = torch.full((4, 1), 7), None  # the start symbol
            for t in range(6):
                logits, state = dec.logits(token, z[s], state)
                loop[s] += F.log_softmax(logits[:, 0], -1).gather(1, x[:, t:t + 1])[:, 0]
                token = x[:, t:t + 1]
    assert torch.allclose(fast, loop, atol=1e-10, rtol=0)


def test_token_logits_never_depend_on_later_tokens():
    dec = _decoder()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 7, (5, 6), generator=g)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        base, _ = dec.logits(dec._inputs(x), z)
        for t in range(6):
            flipped = x.clone()
            flipped[:, t:] = (flipped[:, t:] + 1 + torch.arange(6 - t)) % 7
            other, _ = dec.logits(dec._inputs(flipped), z)
            assert torch.equal(other[:, :t + 1], base[:, :t + 1])  # logits of tokens 0..t
            if t < 5:
                assert not torch.equal(other[:, t + 1:], base[:, t + 1:])


def test_chunked_evaluation_equals_one_pass(monkeypatch):
    from variants.decoders import lstm
    dec = _decoder()
    x = torch.randint(0, 7, (5, 6), generator=torch.Generator().manual_seed(3))
    z = torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = dec.log_prob(x, z)
        monkeypatch.setattr(lstm, "EVAL_ROWS", 3)  # chunks that split a sample's points
        assert torch.allclose(dec.log_prob(x, z), whole, atol=1e-12, rtol=0)


def test_pretrained_start_is_exactly_the_language_model():
    lm = _decoder(z_dim=0, z_output=False)
    dec = _decoder(z_dim=3, z_output=True)
    dec.load_pretrained(lm.state_dict())
    x = torch.randint(0, 7, (4, 6), generator=torch.Generator().manual_seed(5))
    z = 3 * torch.randn(2, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(dec.log_prob(x, z), lm.log_prob(x, z[..., :0]).expand(2, 4),
                              atol=1e-12, rtol=0)


def test_samples_are_valid_tokens_and_encoder_shape():
    dec = _decoder()
    s = dec.sample(torch.randn(8, 3, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert s.shape == (8, 6) and int(s.min()) >= 0 and int(s.max()) < 7
    enc = LSTMEncoder(7, 6, embed=5, hidden=4)
    assert enc(s).shape == (8, 6)


def test_synthetic_generator_is_deterministic_and_follows_its_protocol():
    a, za = tokens.generate(300, length=10)
    b, zb = tokens.generate(300, length=10)
    assert np.array_equal(a, b) and np.array_equal(za, zb)
    assert a.shape == (300, 10) and a.min() >= 0 and a.max() < tokens.VOCAB
    c, _ = tokens.generate(300, seed=tokens.SEED + 1)
    assert not np.array_equal(a, c)
    # z: a mixture of unit Gaussians at (+-2, +-2): every point is nearest one of the 4 centres,
    # and about a quarter of them are nearest each
    nearest = np.argmin(((za[:, None] - tokens.CENTRES[None]) ** 2).sum(-1), 1)
    assert all(40 < (nearest == k).sum() < 110 for k in range(4))


# ---- token data through the dataset layer and a run ------------------------------------------
def _token_file(tmp_path, name="tok.npz", **over):
    rng = np.random.default_rng(0)
    arrays = {"train": rng.integers(0, 9, (40, 5)), "test": rng.integers(0, 9, (12, 5)),
              "vocab_size": np.array(9), **over}
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_a_token_file_loads_as_ids_and_bad_ones_are_refused_in_one_line(tmp_path):
    from bench import data
    from bench.data.builtin import DataError

    ds = data.load(_token_file(tmp_path))
    assert ds.likelihood == "categorical" and ds.vocab_size == 9 and ds.train.dtype == torch.int64
    assert data.likelihood(_token_file(tmp_path)) == "categorical"
    bad = {"floats": {"train": np.full((4, 5), 0.5)},
           "out of range": {"test": np.full((3, 5), 9)},
           "negative": {"test": np.full((3, 5), -1)},
           "empty": {"train": np.zeros((0, 5), np.int64)},
           "lengths": {"test": np.zeros((3, 6), np.int64)},
           "vocab": {"vocab_size": np.array(1.5)}}
    for i, (what, over) in enumerate(bad.items()):
        with pytest.raises(DataError) as e:
            data.check(_token_file(tmp_path, f"bad{i}.npz", **over))
        assert "\n" not in str(e.value) and "allowed" in str(e.value), what


def test_token_data_takes_the_lstm_model_and_pixels_refuse_it():
    from bench.config import ModelConfig, RunConfig, resolve
    from variants.errors import ConfigError

    cfg = resolve(RunConfig(dataset="synthetic-lstm", model=ModelConfig(decoder="lstm")))
    assert cfg.model.encoder == "lstm" and cfg.model.latent_dim == 2
    for model, dataset in [(ModelConfig(), "synthetic-lstm"),
                           (ModelConfig(decoder="lstm", encoder="mlp"), "synthetic-lstm"),
                           (ModelConfig(decoder="lstm"), "digits"),
                           (ModelConfig(encoder="lstm"), "digits")]:
        with pytest.raises(ConfigError, match="allowed"):
            resolve(RunConfig(dataset=dataset, model=model))
    assert resolve(RunConfig(dataset="digits")).model.encoder == "auto"  # image ids unchanged


@pytest.mark.parametrize("variant", ["vae", "skip-vae"])
def test_a_tiny_sequence_run_trains_and_evaluates(tmp_path, variant):
    from bench.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
    from bench.grid.runner import execute

    cfg = RunConfig(variant=variant, dataset=_token_file(tmp_path),
                    model=ModelConfig(decoder="lstm", latent_dim=1, embedding_dim=4,
                                      lstm_hidden=4),
                    train=TrainConfig(epochs=1, batch_size=8),
                    eval=EvalConfig(is_samples=4))
    run = execute(cfg, tmp_path / "runs")
    import json
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "ok" and 0 < m["nll_is"] and 0 < m["neg_elbo"]
    assert m["nll_is"] < 5 * np.log(9) + 5  # near the uniform model's 5 log 9 after one epoch


def test_a_1d_lstm_run_s_exact_likelihood_covers_the_whole_test_split(tmp_path):
    """The attached record's quadrature: over the whole split in 1-d (400 cells, a decoder pass
    per point and cell), its IS beside it the run's own nll_is; AIS on a 3-point subset."""
    import json

    from bench.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
    from bench.evaluation import quadrature
    from bench.grid.attached import evaluate_ais
    from bench.grid.runner import execute, load_run

    cfg = RunConfig(dataset=_token_file(tmp_path), dtype="float64",
                    model=ModelConfig(decoder="lstm", latent_dim=1, embedding_dim=4,
                                      lstm_hidden=4),
                    train=TrainConfig(epochs=1, batch_size=8), eval=EvalConfig(is_samples=4))
    run = execute(cfg, tmp_path / "runs")
    _, record = evaluate_ais(run, steps=2, chains=2, points=3)
    exact = record["exact"]
    assert exact["points"] == "split" and exact["cells"] == 400 and record["points"] == 3
    _, model, ds = load_run(run)
    truth = quadrature.quadrature(model, ds.test.to(torch.float64), cells=400)["log_px"]
    assert abs(exact["nll_exact"] + truth.mean().item()) < 1e-10
    m = json.loads((run / "metrics.json").read_text())
    assert abs(exact["is_gap"] - (m["nll_is"] - exact["nll_exact"])) < 1e-9


def test_a_decoder_only_record_is_the_eval_mode_likelihood_of_its_run(tmp_path):
    """No latent: the record's log p(x) is the decoder's own, exact, so it equals IS on the same
    points and the run's nll_exact; with dropout 0.5 a model left in training mode gave other
    (random) numbers (the synthetic profile's first decoder-only records: 1.05-1.60 nats off)."""
    import json

    from bench.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
    from bench.grid.attached import evaluate_ais
    from bench.grid.runner import execute

    cfg = RunConfig(variant="decoder-only", dataset=_token_file(tmp_path), dtype="float64",
                    model=ModelConfig(decoder="lstm", latent_dim=1, embedding_dim=4,
                                      lstm_hidden=4, dropout=0.5),
                    train=TrainConfig(epochs=1, batch_size=8), eval=EvalConfig(is_samples=4))
    run = execute(cfg, tmp_path / "runs")
    _, record = evaluate_ais(run, steps=2, chains=2, points=12)
    m = json.loads((run / "metrics.json").read_text())
    assert record["points"] == 12  # the whole test split
    assert abs(record["is_minus_ais"]) < 1e-9
    assert abs(record["nll_ais"] - m["nll_exact"]) < 1e-9


# ---- the posterior-mean space (He et al. 2019) -----------------------------------------------
def _linear_gaussian(sigma2=0.5):
    from variants.core import VAE
    from variants.latents import GaussianLatent

    torch.manual_seed(0)
    model = VAE(3, GaussianLatent(1), hidden=(), decoder_hidden=(), likelihood="gaussian",
                obs_var=sigma2).double().eval()
    w, b = model.decoder[0].weight[:, 0], model.decoder[0].bias  # x = w z + b + eps
    precision = 1 + (w @ w) / sigma2
    return model, w, b, precision, sigma2


def test_posterior_mean_space_is_exact_on_the_linear_gaussian_model_and_catches_a_caught_up_encoder():
    from bench.evaluation.quadrature import posterior_mean_space

    model, w, b, precision, s2 = _linear_gaussian()
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    truth = ((x - b) @ w / s2 / precision)[:, None]  # E[z|x] in closed form
    with torch.no_grad():
        lin = model.encoder[0]  # set the encoder's mean to the exact posterior mean
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0] = w / s2 / precision
        lin.bias[0] = -(b @ w) / s2 / precision
    pm = posterior_mean_space(model, x)
    assert torch.allclose(pm["model_mean"], truth, atol=1e-8, rtol=0)  # h = 0.1 on [-20, 20)
    assert pm["slope"] == pytest.approx(1.0, abs=1e-7) and pm["corr"] == pytest.approx(1.0)
    with torch.no_grad():
        lin.weight[0] = 0.0  # an encoder that ignores x: the collapsed lag
        lin.bias[0] = 0.0
    lagging = posterior_mean_space(model, x)
    assert lagging["slope"] == pytest.approx(0.0, abs=1e-12) and lagging["spread"] > 0.5
    with torch.no_grad():
        model.decoder[0].weight.zero_()  # a decoder that ignores z: p(z|x) = p(z)
    flat = posterior_mean_space(model, x)
    assert flat["spread"] < 1e-6 and flat["slope"] == 0.0


def test_posterior_mean_columns_go_into_the_history(tmp_path):
    import csv

    from bench.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
    from bench.grid.runner import execute

    cfg = RunConfig(dataset=_token_file(tmp_path),
                    model=ModelConfig(decoder="lstm", latent_dim=1, embedding_dim=4,
                                      lstm_hidden=4),
                    train=TrainConfig(epochs=2, batch_size=8),
                    eval=EvalConfig(is_samples=4, posterior_mean_points=3))
    rows = list(csv.DictReader(open(execute(cfg, tmp_path / "runs") / "history.csv")))
    assert len(rows) == 2 and all(len(r["val_pm_model"].split()) == 3 for r in rows)
    assert all(np.isfinite(float(r["val_pm_spread"])) for r in rows)
    from bench.config import resolve
    from variants.errors import ConfigError
    with pytest.raises(ConfigError, match="1 or 2 dimensions"):
        resolve(RunConfig(dataset="digits", model=ModelConfig(latent_dim=3),
                          eval=EvalConfig(posterior_mean_points=3)))


def test_snapshots_inside_the_first_epoch_leave_training_untouched(tmp_path):
    """eval.posterior_mean_every: epoch 1's row carries a snapshot every N steps, and the run's
    weights, metrics and every other history column are those of the run without them."""
    import csv
    import json

    from bench.config import EvalConfig, ModelConfig, RunConfig, TrainConfig, resolve
    from bench.grid.runner import TIMINGS, execute
    from variants.errors import ConfigError

    def run(every: int, where: str):
        cfg = RunConfig(dataset=_token_file(tmp_path),
                        model=ModelConfig(decoder="lstm", latent_dim=1, embedding_dim=4,
                                          lstm_hidden=4, dropout=0.5),
                        train=TrainConfig(epochs=2, batch_size=8),
                        eval=EvalConfig(is_samples=4, posterior_mean_points=3,
                                        posterior_mean_every=every))
        path = execute(cfg, tmp_path / where)
        rows = list(csv.DictReader(open(path / "history.csv")))
        metrics = {k: v for k, v in json.loads((path / "metrics.json").read_text()).items()
                   if k not in TIMINGS and k != "run_id"}
        return rows, metrics, torch.load(path / "model.pt", weights_only=True)

    rows, metrics, weights = run(2, "a")
    rows0, metrics0, weights0 = run(0, "b")
    snaps = rows[0]["val_pm_steps"].split(";")
    steps = int(rows[0]["step"])
    assert [int(s.split(":")[0]) for s in snaps] == list(range(2, steps + 1, 2))
    assert all(len(s.split(":")) == 4 for s in snaps) and not rows[1]["val_pm_steps"]
    assert metrics == metrics0 and all(torch.equal(weights[k], weights0[k]) for k in weights)
    for r, r0 in zip(rows, rows0, strict=True):
        assert {k: v for k, v in r.items() if "seconds" not in k and k != "val_pm_steps"} == \
            {k: v for k, v in r0.items() if "seconds" not in k}
    with pytest.raises(ConfigError, match="posterior_mean_points > 0"):
        resolve(RunConfig(eval=EvalConfig(posterior_mean_every=5)))


def test_the_report_draws_the_posterior_mean_space(tmp_path):
    from bench.grid.suite import load_profile, run_suite
    from bench.report import write_report

    data = _token_file(tmp_path)
    (tmp_path / "p.toml").write_text(f'''
[profile]
seeds = [0]
baseline = "vae"
floor = "decoder-only"
[defaults]
dataset = "{data}"
"model.decoder" = "lstm"
"model.latent_dim" = 1
"model.embedding_dim" = 4
"model.lstm_hidden" = 4
"train.epochs" = 2
"train.batch_size" = 8
"eval.is_samples" = 4
"eval.posterior_mean_points" = 3
"eval.posterior_mean_every" = 2
[[config]]
label = "vae"
variant = "vae"
[[config]]
label = "decoder-only"
variant = "decoder-only"
''')
    profile = load_profile(str(tmp_path / "p.toml"))
    run_suite(profile, tmp_path / "results", progress=False)
    paths = write_report(profile, tmp_path / "results", tmp_path / "reports")
    text = next(p for p in paths if p.suffix == ".md").read_text()
    assert "## Posterior-mean space" in text and "| vae | 1 |" in text
    assert "encoder `lstm` (4 units)" in text and "token ids" in text  # the header's model/data
    assert "binarized" not in text.split("## Main table")[0]
    assert "slope inside epoch 1" in text and "| vae | 1 | 2: " in text  # the snapshots
    assert (tmp_path / "reports" / profile.name / "posterior_mean_space.png").is_file()


def test_the_report_says_which_encoders_follow_and_which_lag():
    import pandas as pd

    from bench.report.posterior_space import reading

    # (slope, correlation) at the last epoch; d: means that spread without following (an MMD
    # encoder on synthetic-lstm: slope 7, correlation 0.24)
    last = {"a0": (0.9, 0.95), "a1": (0.8, 0.9), "b0": (0.0, 0.1), "b1": (0.1, 0.0),
            "c0": (0.7, 0.9), "c1": (0.2, 0.9), "d0": (7.0, 0.24), "d1": (3.0, 0.3)}
    ok = pd.DataFrame({"label": [r[0] for r in last], "run": list(last)})
    histories = {r: pd.DataFrame({"val_pm_slope": [0.0, v[0]], "val_pm_corr": [0.0, v[1]]})
                 for r, v in last.items()}
    text = " ".join(reading(ok, histories))
    assert "posterior in every seed: `a`;" in text and "lags in every seed: `b`" in text
    assert "disagree: `c`" in text and "(correlation below 0.5) in every seed: `d`" in text


def test_a_trained_model_whose_encoder_can_be_exact_catches_up(tmp_path):
    # the planted check's other half: a linear Gaussian VAE with a 1-d latent on the
    # linear-gaussian data, whose linear encoder can represent the exact posterior mean, ends
    # near the diagonal (slope > 0.9, correlation > 0.99) after 10 epochs
    import csv

    from bench.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
    from bench.grid.runner import execute

    cfg = RunConfig(dataset="linear-gaussian",
                    model=ModelConfig(latent_dim=1, hidden=(), decoder_hidden=()),
                    train=TrainConfig(epochs=10, batch_size=100, lr=1e-2),
                    eval=EvalConfig(is_samples=4, test_points=50, posterior_mean_points=100))
    rows = list(csv.DictReader(open(execute(cfg, tmp_path / "runs") / "history.csv")))
    assert float(rows[-1]["val_pm_slope"]) > 0.9 and float(rows[-1]["val_pm_corr"]) > 0.99
