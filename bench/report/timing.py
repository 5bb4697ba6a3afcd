"""The report's throughput section: CPU and GPU columns from the records of
``vae-bench throughput`` (results/throughput/{cpu,cuda}[-DECODER].json)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results import read_json
from .tables import markdown


def _train_cell(result: dict | None, name: str) -> str:
    rows = [r for r in (result or {}).get("train", []) if r["variant"] == name]
    if not rows:
        return "n/a"
    r = rows[0]
    same = r.get("ratio_same_optimizer")
    same = "" if same is None else f", {same:.2f}× with the same optimizer"
    fast = (f"; fast mode {r['fast_samples_per_s']:,.0f}/s = {r['fast_over_eager']:.2f}× eager"
            if "fast_over_eager" in r else "")
    return (f"{r['samples_per_s']:,.0f}/s ({r['ratio_to_baseline']:.2f}× hand-written{same}, "
            f"{r['fraction_of_peak']:.0%} of peak{fast})")


def _eval_cell(result: dict | None) -> str:
    ev = (result or {}).get("eval")
    if not ev:
        return "n/a"
    memory = (f"; memory +{ev['memory_growth']:.0%} from K={ev['k']} to {10 * ev['k']}"
              if "memory_growth" in ev else "")
    return (f"{ev['samples_per_s']:,.0f} point-samples/s, {ev['fraction_of_peak']:.0%} of "
            f"{ev.get('peak', 'matmul')} peak{memory}")


def throughput_section(results: Path) -> str:
    """CPU and GPU columns from results/throughput/{cpu,cuda}[-DECODER].json ("n/a" where
    absent): every variant with the MLP decoder, then the other decoder families."""
    def load(dev: str, suffix: str) -> dict | None:
        path = results / "throughput" / f"{dev}{suffix}.json"
        return read_json(path) if path.exists() else None

    found = {dev: t for dev in ("cpu", "cuda") if (t := load(dev, ""))}
    if not found:
        return "No throughput measured yet: run `vae-bench throughput`."
    rows = []
    for decoder, suffix in (("", ""), ("made", "-made"), ("pixelcnn", "-pixelcnn")):
        by_dev = {dev: load(dev, suffix) for dev in ("cpu", "cuda")}
        present = [t for t in by_dev.values() if t]
        if not present:
            continue
        tag = f", {decoder} decoder" if decoder else ""
        for name in dict.fromkeys(r["variant"] for t in present for r in t["train"]):
            rows.append({"train step (batch 100)": f"{name}{tag}",
                         "CPU": _train_cell(by_dev["cpu"], name),
                         "GPU": _train_cell(by_dev["cuda"], name)})
        rows.append({"train step (batch 100)": f"IS evaluation{tag}",
                     "CPU": _eval_cell(by_dev["cpu"]), "GPU": _eval_cell(by_dev["cuda"])})
    table = pd.DataFrame(rows)
    hw = "; ".join(f"{dev}: {t['env'].get('cuda_device') or t['env']['cpu_capability']}, "
                   f"{t['env']['threads']} threads, torch {t['env']['torch']}, measured matmul "
                   f"peak {t['matmul_peak_gflops']:.0f} GFLOP/s" for dev, t in found.items())
    return (f"{markdown(table)}\n\nMeasured by `vae-bench throughput` ({hw}). Ratios are "
            "medians of interleaved repeats in one process. \"hand-written\" is a minimal "
            "PyTorch loop with the default Adam; \"the same optimizer\" is that loop with the "
            "fused Adam that training uses, so it isolates the harness's own cost. Peak is the "
            "fp32 matmul rate measured in the same process (for IS evaluation, in each round "
            "next to the evaluator). Other decoders (`vae-bench throughput --decoder made|"
            "pixelcnn`, the plain VAE): for MADE (one masked hidden layer of 500, direct "
            "connections) the hand-written loop is an independent masked MLP of the same "
            "architecture; for the PixelCNN (3 gated layers x 16 channels, k = 3) it is the "
            "minimal loop around the same decoder module, and its peak is a 3x3 convolution's "
            "(64 -> 64 channels, 28x28).")
