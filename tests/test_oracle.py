"""The data's own likelihood under its generating model (bench.evaluation.oracle), checked on a
tiny generator of He et al.'s form (vocabulary 4, length 3, 3 units) where every sequence can be
enumerated: the marginals sum to 1, match the generator's own draws, and the mutual information
estimate agrees with the entropy difference computed on the grid."""

import math

import numpy as np
import torch

from bench.data import tokens
from bench.evaluation import oracle

VOCAB, LENGTH, EMBED, HIDDEN, SEED = 4, 3, 3, 3, 7
GRID = {"radius": 9.0, "coarse": 0.5, "split": 2, "window": 30.0}


def _tiny():
    par = {k: torch.from_numpy(v) for k, v in
           tokens.parameters(np.random.default_rng(SEED), VOCAB, EMBED, HIDDEN).items()}
    every = torch.cartesian_prod(*[torch.arange(VOCAB)] * LENGTH)  # all 64 sequences
    return par, every


def test_the_generator_s_marginals_sum_to_one_and_match_its_draws():
    par, every = _tiny()
    q = oracle.log_marginal(tokens.log_joint(par), every, **GRID)
    p = q["log_px"].exp()
    assert abs(p.sum().item() - 1.0) < 1e-6  # the grid holds the whole prior and p(.|z) sums to 1
    assert q["edge_mass"].max() < 1e-9  # the prior at 7 sd
    n = 40_000
    drawn, _ = tokens.generate(n, seed=SEED, vocab=VOCAB, length=LENGTH, embed=EMBED,
                               hidden=HIDDEN)
    code = torch.from_numpy(drawn) @ torch.tensor([VOCAB ** 2, VOCAB, 1])
    counts = torch.bincount(code, minlength=VOCAB ** LENGTH).double()
    z = (counts - n * p) / (n * p * (1 - p)).sqrt()
    assert z.abs().max() < 5, z.abs().max()  # the likelihood is the sampler's own


def test_the_mutual_information_estimate_agrees_with_the_entropies_on_the_grid():
    par, every = _tiny()
    log_lik = lambda x, z: tokens.log_likelihood(par, x, z)  # noqa: E731
    log_px = oracle.log_marginal(tokens.log_joint(par), every, **GRID)["log_px"]
    h = 0.25
    axis = -9 + h * (torch.arange(72, dtype=torch.float64) + 0.5)
    zg = torch.cartesian_prod(axis, axis)
    w = (tokens.log_prior(zg) + 2 * math.log(h)).exp()  # prior mass of each cell
    ll = torch.stack([log_lik(x.expand(len(zg), -1), zg) for x in every], 1)  # (cells, 64)
    h_x_given_z = -(w * (ll.exp() * ll).sum(1)).sum()
    mi_true = -(log_px.exp() * log_px).sum() - h_x_given_z
    n = 2_000
    drawn, z = tokens.generate(n, seed=SEED, vocab=VOCAB, length=LENGTH, embed=EMBED,
                               hidden=HIDDEN)

    class Data:  # what reference reads of a dataset
        test = torch.from_numpy(drawn)
        digests = {"test": "tiny"}
        oracle = {"generator": par, "z_test": torch.from_numpy(z)}

    rec = oracle.reference("synthetic-lstm", Data, check_points=10, grid=GRID)
    assert abs(rec["mi"] - mi_true.item()) < 4 * rec["mi_se"], (rec["mi"], mi_true.item())
    code = Data.test @ torch.tensor([VOCAB ** 2, VOCAB, 1])
    assert abs(rec["nll"] + log_px[code].mean().item()) < 1e-9  # the per-point marginals
    assert rec["check"]["max_abs_diff"] < 1e-6 and rec["points"] == n


class _Tiny:
    """What the oracle reads of a dataset: a small draw of the tiny generator."""

    def __init__(self, n: int = 50):
        par, _ = _tiny()
        drawn, z = tokens.generate(n, seed=SEED, vocab=VOCAB, length=LENGTH, embed=EMBED,
                                   hidden=HIDDEN)
        self.test, self.digests = torch.from_numpy(drawn), {"test": "tiny"}
        self.oracle = {"generator": par, "z_test": torch.from_numpy(z)}


def test_the_suite_writes_the_generator_record_once_and_the_report_reads_it(tmp_path, monkeypatch):
    import types

    import pandas as pd

    import bench.data
    from bench.report import generator

    monkeypatch.setitem(bench.data.GENERATING_MODELS, "tiny", tokens.generating_model)
    monkeypatch.setattr(bench.data, "load", lambda name, root=None: _Tiny())
    monkeypatch.setattr(oracle, "GRID", GRID)
    run = lambda d: ("x", types.SimpleNamespace(config=types.SimpleNamespace(dataset=d)))  # noqa: E731
    profile = types.SimpleNamespace(name="p")
    assert oracle.attach(profile, tmp_path, None, [run("digits")]) == {}  # no known generator
    assert oracle.attach(profile, tmp_path, None, [run("tiny")]) == {"generator reference done": 1}
    assert oracle.attach(profile, tmp_path, None, [run("tiny")]) == {}  # found, not redone
    rec = generator.read(tmp_path, "p", "tiny")
    summary = pd.DataFrame({"label": ["a", "a", "b"], "status": ["ok"] * 3,
                            "nll_is": [5.0, 5.2, 6.0], "nll_exact": [4.0, 4.2, np.nan],
                            "mutual_info": [0.1, 0.3, 0.0]})
    text = "\n".join(generator.section(summary, rec))
    assert f"**{rec['nll']:.2f}**" in text and f"**{rec['mi']:.2f}**" in text
    assert f"| a | 2 | 4.10 ± 0.14 (exact) | {4.1 - rec['nll']:.2f} ± 0.14 | 0.20 ± 0.14 |" in text
    assert f"| b | 1 | 6.00 (IS) | {6.0 - rec['nll']:.2f} | 0.00 |" in text
    assert generator.section(summary, generator.read(tmp_path, "p", "other")) == []
