"""Evaluation metrics: pure functions of a trained model and a test split (docs/design.md, section 3).

Everything is per data point, in nats. A metric never asks which variant made the model: it gets
what it needs from the posterior object (``variants.latents``) and from the model's likelihood.
Each metric declares its direction (lm-eval's ``higher_is_better``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..seeding import generator

IS_BLOCK = 100  # test points per importance-sampling block (fixes which noise each point gets)
IS_CHUNK = 50  # samples per decoder call; memory is O(IS_BLOCK * IS_CHUNK), independent of K
ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016, section 5.2: Cov_x(E_q[u|x]) > 10^-2
#: The strict count (README, "Metrics"): Var_x E_q[z_u|x] > 0.1. Near collapse the posterior of a
#: unit keeps variance ~1, and a unit whose mean wobbles with variance v over the data carries at
#: most about 1/2 log(1 + v) nats: 0.005 at Burda's 0.01, which a collapsed encoder clears by
#: noise, 0.05 at 0.1. The statistic (and so the categorical case) is the same as Burda's.
ACTIVE_THRESHOLD_STRICT = 0.1


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None  # None: no better direction (a rate, not a score)
    doc: str


METRICS = {m.name: m for m in [
    Metric("neg_elbo", False, "-ELBO, unmodified, analytic KL"),
    Metric("recon", False, "-E_q log p(x|z)"),
    Metric("kl", None, "KL(q(z|x) || p(z)) summed over units"),
    Metric("nll_is", False, "-log p(x), importance sampled with K samples from q"),
    Metric("ess", True, "mean normalized effective sample size of the IS weights"),
    Metric("active_units", True, "units with Var_x E_q[z_u|x] > 0.01"),
    Metric("active_units_strict", True, "units with Var_x E_q[z_u|x] > 0.1"),
    Metric("mutual_info", True, "I_q(x; z) under the pooled aggregate posterior"),
    Metric("mutual_info_bound", None, "log N: no estimate pooled over N points can exceed it"),
    Metric("nll_exact", False, "-log p(x) in closed form (where the model admits it)"),
    Metric("is_gap", False, "nll_is - nll_exact, paired per point (the estimator's error)"),
    Metric("nll_ais", False, "-log p(x) by annealed importance sampling (bench.evaluation.ais), on a subset"),
    Metric("is_minus_ais", None, "nll_is - nll_ais on the same points, paired per point"),
    Metric("nll_exact_subset", False, "-log p(x) by quadrature (1-2 dim latents), AIS's points"),
]}


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error over data points."""
    v = values.double()
    return v.mean().item(), (v.std(unbiased=True) / math.sqrt(len(v))).item()


@torch.no_grad()
def encode(model, x: Tensor, batch: int = 2000):
    """The posterior of the whole split, encoded once in batches."""
    params = torch.cat([model.posterior_params(x[i:i + batch]) for i in range(0, len(x), batch)])
    return model.latent.posterior(params)


@torch.no_grad()
def elbo_terms(model, q, x: Tensor, samples: int, gen: torch.Generator) -> dict[str, float]:
    """-ELBO = recon + KL per point: recon with L samples, KL analytic (never the objective);
    where the posterior has no analytic KL (two stochastic layers), estimated per unit from the
    same L samples (``variants.hierarchy``)."""
    recon, kls = [], []
    for i in range(0, len(x), IS_BLOCK):
        qb = q.slice(i, i + IS_BLOCK)
        z = qb.sample(samples, gen)
        recon.append(-model.log_likelihood(x[i:i + IS_BLOCK], z).mean(0))
        if q.kl_from_samples:
            kls.append(qb.kl(z))
    recon = torch.cat(recon)
    kl_units = torch.cat(kls) if q.kl_from_samples else q.kl()
    kl = kl_units.sum(-1)
    out = {}
    for name, v in (("neg_elbo", recon + kl), ("recon", recon), ("kl", kl)):
        out[name], out[f"{name}_se"] = mean_se(v)
    out["kl_per_dim"] = kl_units.double().mean(0).tolist()
    return out


@torch.no_grad()
def iter_log_weights(model, q, x: Tensor, k: int, gen: torch.Generator):
    """Chunks of log w_ik = log p(x_i|z_ik) + log p(z_ik) - log q(z_ik|x_i), z_ik ~ q, each of
    shape (chunk, B) in float64, K samples in all.

    The encoder is not called: ``q`` is the posterior of ``x``, computed once. Samples are drawn in
    chunks of IS_CHUNK so that each decoder call is one large matmul over chunk x points.
    """
    for start in range(0, k, IS_CHUNK):
        z = q.sample(min(IS_CHUNK, k - start), gen)
        yield (model.log_likelihood(x, z) + q.prior_log_prob(z) - q.log_prob(z)).double()


def is_log_weights(model, q, x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """All K log-weights at once, shape (K, B) (for tests and small K)."""
    return torch.cat(list(iter_log_weights(model, q, x, k, gen)))


class StreamingLogSumExp:
    """logsumexp over chunks of rows without keeping them: a running max m and the sums
    s1 = sum exp(w - m), s2 = sum exp(2 (w - m)), rescaled when m grows. The result is the one
    logsumexp over all K (m + log s1); the normalized ESS is s1^2 / (K s2). Memory O(B), not O(KB).
    """

    def __init__(self) -> None:
        self.m = self.s1 = self.s2 = None

    def add(self, w: Tensor) -> None:
        m_new = w.max(0).values if self.m is None else torch.maximum(self.m, w.max(0).values)
        e = torch.exp(w - m_new)
        if self.m is None:
            self.s1, self.s2 = e.sum(0), (e * e).sum(0)
        else:
            scale = torch.exp(self.m - m_new)
            self.s1 = self.s1 * scale + e.sum(0)
            self.s2 = self.s2 * scale * scale + (e * e).sum(0)
        self.m = m_new

    def logsumexp(self) -> Tensor:
        return self.m + torch.log(self.s1)

    def ess(self, k: int) -> Tensor:
        return self.s1**2 / self.s2 / k


def nll_is_points(model, q, x: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per point: -[logsumexp_k log w_ik - log K] and the normalized ESS (sum w)^2 / (K sum w^2).

    One logsumexp over all K in float64 (Burda et al. 2016, eq. 8 used as an estimator), taken
    as the chunks stream past, so memory does not grow with K. Point i's noise depends only on
    (seed, block of i), never on the training seed or any batch size.
    """
    nll, ess = [], []
    for block, i in enumerate(range(0, len(x), IS_BLOCK)):
        gen = generator(seed, "nll_is", block, device=x.device)
        acc = StreamingLogSumExp()
        for log_w in iter_log_weights(model, q.slice(i, i + IS_BLOCK), x[i:i + IS_BLOCK], k, gen):
            acc.add(log_w)
        nll.append(math.log(k) - acc.logsumexp())
        ess.append(acc.ess(k))
    return torch.cat(nll), torch.cat(ess)


def svae_tf_ll_points(model, q, x: Tensor, n: int, seed: int) -> Tensor:
    """Per point: the "LL" of Davidson et al. 2018's code (nicola-decao/s-vae-tf
    ``examples/mnist.py``, ``log_likelihood``), which their Table 1 reports, as written there:
    log p(x|z_0) of ONE posterior sample z_0 (the training graph's) plus logmeanexp over n fresh
    samples z_j ~ q of log p(z_j) - log q(z_j|x). It is not an importance-sampled likelihood: its
    expectation is E_q log p(x|z) + E log mean_j p(z_j)/q(z_j|x), between the ELBO (n = 1, in
    expectation) and E_q log p(x|z) = ELBO + KL (n -> infinity, where the mean ratio -> 1). The
    paper calls it the importance-sampled log-likelihood; their PyTorch port (s-vae-pytorch) and
    ``nll_is_points`` take log p(x|z_j) of each sample instead. Kept to read their numbers with
    their estimator beside ours (``vae-bench evaluate --svae-tf-ll``), never as a suite metric."""
    out = []
    for block, i in enumerate(range(0, len(x), IS_BLOCK)):
        gen = generator(seed, "svae-tf-ll", block, device=x.device)
        qb, xb = q.slice(i, i + IS_BLOCK), x[i:i + IS_BLOCK]
        recon = model.log_likelihood(xb, qb.sample(1, gen))[0].double()
        acc = StreamingLogSumExp()
        for start in range(0, n, IS_CHUNK):
            z = qb.sample(min(IS_CHUNK, n - start), gen)
            acc.add((qb.prior_log_prob(z) - qb.log_prob(z)).double())
        out.append(recon + acc.logsumexp() - math.log(n))
    return torch.cat(out)


def active_units(q, gen: torch.Generator | None = None) -> dict[str, float]:
    """Units whose activity statistic varies over the split: Var_x summed over its classes > delta,
    counted at Burda's delta = 0.01 and at the strict 0.1 (``ACTIVE_THRESHOLD_STRICT``).

    For a Gaussian unit the statistic is E_q[z_u|x]; for a categorical variable the vector of its
    class probabilities (docs/design.md, section 3). Unbiased variance over the whole split. With
    stochastic layers (``q.layer_units``), also the counts per layer, bottom first, as Burda et
    al. report them ("layer 1 + layer 2"); ``gen`` serves statistics estimated by sampling.
    """
    act = q.activity(gen).double()
    var = act.var(dim=0, unbiased=True).sum(-1) if act.shape[1] else act.new_zeros(0)
    out = {"active_units": int((var > ACTIVE_THRESHOLD).sum().item()),
           "active_units_strict": int((var > ACTIVE_THRESHOLD_STRICT).sum().item()),
           "unit_variance": var.tolist()}
    layers = getattr(q, "layer_units", None)
    if layers:
        parts = var.split(list(layers))
        for key, delta in (("active_units", ACTIVE_THRESHOLD),
                           ("active_units_strict", ACTIVE_THRESHOLD_STRICT)):
            out[f"{key}_by_layer"] = [int((v > delta).sum().item()) for v in parts]
    return out


def active_directions(q, gen: torch.Generator | None = None) -> int:
    """Latent directions in use: eigenvalues of Cov_x E_q[z|x] (the activity statistic's full
    covariance over the split) above Burda's 0.01. ``active_units`` counts its diagonal, so it
    assumes the code is axis-aligned; this count does not change under a rotation of the latent
    space. Both agree where the code is axis-aligned (a linear VAE at its optimum, Lucas et al.
    2019); where trained units share near-degenerate directions, only this one counts the
    directions themselves (the linear-collapse profile reports both)."""
    act = q.activity(gen).double()
    act = act.reshape(len(act), -1)
    if not act.shape[1]:
        return 0
    return int((torch.linalg.eigvalsh(torch.cov(act.T).reshape(act.shape[1], -1))
                > ACTIVE_THRESHOLD).sum().item())


@torch.no_grad()
def mutual_info(q, gen: torch.Generator, chunk: int = 256) -> dict[str, float]:
    """I_q(x; z) = E_x E_q[log q(z|x)] - E_q[log qbar(z)], qbar = (1/N) sum_j q(z|x_j).

    One z_i ~ q(z|x_i) per point; qbar is pooled over the whole split (not a minibatch, whose
    estimate cannot exceed log(batch size)). Computed in float64.
    """
    n = len(q)
    terms = []
    for i in range(0, n, chunk):
        qi = q.slice(i, i + chunk)
        z = qi.sample(1, gen)[0].double()
        log_q_own = qi.log_prob(z)
        log_q_all = q.pairwise_log_prob(z)  # (chunk, N)
        terms.append(log_q_own - (torch.logsumexp(log_q_all, dim=1) - math.log(n)))
    mi, se = mean_se(torch.cat(terms))
    return {"mutual_info": mi, "mutual_info_se": se, "mutual_info_bound": math.log(n)}


@torch.no_grad()
def evaluate(model, x: Tensor, is_samples: int = 1000, elbo_samples: int = 1,
             seed: int = 0) -> dict:
    """All metrics of ``model`` on ``x``; the noise of each metric comes from its own stream."""
    model.eval()
    q = encode(model, x)
    out = elbo_terms(model, q, x, elbo_samples, generator(seed, "elbo", device=x.device))
    if model.latent.dim == 0:  # no latent: every sample is the same, one is exact
        is_samples = 1
    nll, ess = nll_is_points(model, q, x, is_samples, seed)
    out["nll_is"], out["nll_is_se"] = mean_se(nll)
    out["ess"] = ess.mean().item()
    out.update(active_units(q, generator(seed, "active_units", device=x.device)))
    out.update(mutual_info(q.double(), generator(seed, "mutual_info", device=x.device)))
    log_px = model.exact_log_marginal(x)
    if log_px is not None:  # the estimator's own error, paired point by point
        out["nll_exact"], out["nll_exact_se"] = mean_se(-log_px)
        out["is_gap"], out["is_gap_se"] = mean_se(nll + log_px)
    return out


@torch.no_grad()
def validation_diagnostics(model, x: Tensor, seed: int, epoch: int) -> dict:
    """The collapse diagnostics of one epoch end on the validation split ``x``: -ELBO, recon, KL
    and KL per unit (1 sample), both active-unit counts, and the pooled mutual information with
    its bound log N. Noise from the evaluation seed and the epoch, never a training stream."""
    was_training = model.training
    model.eval()
    q = encode(model, x)
    gen = generator(seed, "validation", epoch, device=x.device)
    e = elbo_terms(model, q, x, 1, gen)
    au = active_units(q, gen)
    mi = mutual_info(q.double(), gen)
    model.train(was_training)
    return {"val_neg_elbo": e["neg_elbo"], "val_recon": e["recon"], "val_kl": e["kl"],
            "val_mutual_info": mi["mutual_info"], "val_mutual_info_se": mi["mutual_info_se"],
            "val_mutual_info_bound": mi["mutual_info_bound"],
            "val_active_units": au["active_units"],
            "val_active_units_strict": au["active_units_strict"],
            "val_kl_per_unit": " ".join(f"{v:.4g}" for v in e["kl_per_dim"]),
            **({"val_active_units_by_layer": "+".join(map(str, au["active_units_by_layer"]))}
               if "active_units_by_layer" in au else {})}


@torch.no_grad()
def validation_loss(model, variant, x: Tensor, batch: int, seed: int, epoch: int, step: int,
                    total: int) -> float:
    """The variant's own training objective on the validation split ``x`` (``train.monitor =
    val_loss``): ``variant.loss`` at training step ``step`` of ``total`` on each minibatch of
    ``batch`` points in order (a minibatch objective such as mmd's sees minibatches as in
    training), averaged weighted by minibatch size, the model in eval mode. Noise from the
    evaluation seed, the epoch and its own stream name, never a training stream."""
    was_training = model.training
    model.eval()
    gen = generator(seed, "validation-loss", epoch, device=x.device)
    total_loss = 0.0
    for i in range(0, len(x), batch):
        part = x[i:i + batch]
        loss, _ = variant.loss(model, part, step, total, gen)
        total_loss += float(loss) * len(part)
    model.train(was_training)
    return total_loss / len(x)


@torch.no_grad()
def validation_minibatch_mi(model, x: Tensor, batch: int, seed: int, epoch: int) -> float:
    """I_q(x; z) estimated as He et al.'s ``calc_mi`` does it (jxhe/vae-lagging-encoder
    ``image.py`` with ``modules/encoders/encoder.py``): ``mutual_info`` of each minibatch of
    ``batch`` points of ``x`` in order, with that minibatch's own aggregate posterior (so each is
    bounded by log batch), averaged weighted by minibatch size. A procedure's rule reads it (the
    aggressive switch-off); the reported MI stays the pooled one. Noise from the evaluation seed,
    the epoch and its own stream name."""
    was_training = model.training
    model.eval()
    q = encode(model, x).double()
    gen = generator(seed, "minibatch-mi", epoch, device=x.device)
    total = 0.0
    for i in range(0, len(q), batch):
        part = q.slice(i, i + batch)
        total += mutual_info(part, gen)["mutual_info"] * len(part)
    model.train(was_training)
    return total / len(q)
