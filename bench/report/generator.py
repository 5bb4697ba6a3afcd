"""The report's floor: where the data come from a known generating model, its own NLL on the test
split (``results/<profile>/generator-<dataset>.json``, bench.evaluation.oracle), each
configuration's NLL above it (an estimate of KL(p_data || p_model) per sequence) and the
generator's mutual information I(x; z) beside the fitted encoders' I_q(x; z)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.oracle import record_path
from .tables import _fmt, config_name, markdown


def _sd(a: np.ndarray) -> float:
    return a.std(ddof=1) if len(a) > 1 else np.nan


def read(results: Path, profile: str, dataset: str) -> dict | None:
    try:
        rec = json.loads(record_path(results, profile, dataset).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("kind") == "generator" else None


def section(summary: pd.DataFrame, rec: dict | None) -> list[str]:
    if rec is None:
        return []
    ok = summary[summary["status"] == "ok"]
    rows = []
    for label in dict.fromkeys(ok["label"]):
        part = ok[ok["label"] == label]
        col = "nll_exact" if "nll_exact" in part and part["nll_exact"].notna().all() else "nll_is"
        nll = part[col].astype(float).to_numpy()
        mi = part["mutual_info"].astype(float).to_numpy() if "mutual_info" in part \
            else np.full(len(part), np.nan)
        rows.append({"configuration": config_name(label), "seeds": len(part),
                     "NLL": f"{_fmt(nll.mean(), _sd(nll), 2)} ({'exact' if col == 'nll_exact' else 'IS'})",
                     "above the generator": _fmt(nll.mean() - rec["nll"], _sd(nll), 2),
                     "I_q(x; z) of the encoder": _fmt(mi.mean(), _sd(mi), 2)})
    check = rec["check"]
    text = (f"The test sequences come from a known model: under their own generating model "
            f"(its 2-d latent integrated by adaptive quadrature, bench/evaluation/oracle.py) "
            f"their NLL is **{rec['nll']:.2f}** ± {rec['nll_se']:.2f} nats (SE over the "
            f"{rec['points']} points; the first {check['points']} recomputed on a grid twice as "
            f"fine, wider, agree within {check['max_abs_diff']:.1e}; posterior mass at the "
            f"grid's edge at most {rec['edge_mass_max']:.0e}). No model's expected NLL goes "
            "below it; a configuration's NLL above it estimates KL(p_data || p_model) per "
            "sequence, on the same points. The generator's latent carries I(x; z) = "
            f"**{rec['mi']:.2f}** ± {rec['mi_se']:.2f} nats about a sequence (log p(x|z) - "
            "log p(x) with each test sequence's generating z): what a latent could carry here, "
            "beside what each fitted encoder carries (I_q(x; z), pooled over the test split; "
            "mean ± sd over seeds).")
    return ["## The data's own likelihood (its generating model)", "", text, "",
            markdown(pd.DataFrame(rows)), ""]
