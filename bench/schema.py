"""What a run's metrics.json holds: one definition that the readers check a record against
(``results.damage``: the suite's resume, ``report`` and ``evaluate`` read only records that
pass) and that the writer's fields follow.

Each known field has a kind. A field of the wrong kind (``"nll_is": true``, a number given as
text) makes the record damaged: it is named in one line, set aside and trained again, never
averaged. A finished run (status ``ok``) must carry the estimates every table reads
(``REQUIRED``) as finite numbers; a NaN there is damage too. Fields not named here are a later
version's or a user's and are not read by the report.
"""

from __future__ import annotations

import math

STATUSES = ("ok", "failed", "diverged")

#: kind of every field the report or the suite reads
KINDS: dict[str, str] = {
    **dict.fromkeys(("status", "run_id", "suite_version", "stop_reason", "error", "traceback"),
                    "text"),
    "pretrained_decoder": "text or null",
    **dict.fromkeys(("converged", "transient"), "boolean"),
    "diverged_step": "count or null",
    **dict.fromkeys(("active_units", "active_units_strict", "best_epoch", "collapsed_directions",
                     "collapsed_measured", "collapsed_predicted", "lr_decays", "steps",
                     "stopped_epoch"), "count"),
    **dict.fromkeys(("active_units_by_layer", "active_units_strict_by_layer"), "counts"),
    **dict.fromkeys(("kl_per_dim", "unit_variance"), "numbers"),
    **dict.fromkeys(("neg_elbo", "neg_elbo_se", "recon", "recon_se", "kl", "kl_se", "nll_is",
                     "nll_is_se", "ess", "is_gap", "is_gap_se", "mutual_info", "mutual_info_se",
                     "mutual_info_bound", "nll_exact", "nll_exact_se", "ppca_nll",
                     "ppca_nll_train", "law_margin", "svae_tf_ll", "svae_tf_ll_se",
                     "train_seconds", "eval_seconds", "diagnostics_seconds",
                     "train_samples_per_s"), "number"),
}
#: what a finished run must have, finite
REQUIRED = ("nll_is", "neg_elbo", "kl")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_CHECKS = {
    "text": lambda v: isinstance(v, str),
    "text or null": lambda v: v is None or isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "count": _count,
    "count or null": lambda v: v is None or _count(v),
    "counts": lambda v: isinstance(v, list) and all(_count(x) for x in v),
    "numbers": lambda v: isinstance(v, list) and all(_number(x) for x in v),
    "number": _number,
}


def metrics_problem(metrics) -> str | None:
    """Why ``metrics`` (a metrics.json's content) is not a record to trust (None: it is)."""
    if not isinstance(metrics, dict) or metrics.get("status") not in STATUSES:
        return f"no status among {', '.join(STATUSES)}"
    for key, kind in KINDS.items():
        if key in metrics and not _CHECKS[kind](metrics[key]):
            return f"field {key!r} is {metrics[key]!r}, not a {kind}"
    if metrics["status"] == "ok":
        for key in REQUIRED:
            if not (_number(metrics.get(key)) and math.isfinite(metrics[key])):
                return (f"a finished run whose {key!r} is {metrics.get(key)!r}; allowed: a "
                        "finite number")
    return None
