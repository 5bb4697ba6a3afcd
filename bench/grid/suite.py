"""The grid: a profile's configurations x seeds (``bench.grid.profile``), run with resume on a
backend (``bench.grid.backends``).

Every run is keyed by the hash of its resolved config; a run whose record exists is skipped, so an
interrupted suite continues where it stopped. Records are renamed into place whole
(``bench.results.write_run``): a half-written run is never read as a result.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from variants.errors import ConfigError

from ..identity import ResolvedRun, checkpoint_dir
from ..results import damage, ensure_writable, finished, git_dirty, read_json, retry_reason
from .backends import BACKENDS, _local, _ray, run_one
from .profile import Profile, grid, group_of, load_profile, profile_names, with_variants
from .stack import pack

__all__ = ["BACKENDS", "Profile", "cost_estimates", "dry_run", "grid", "group_of",
           "load_profile", "longest_first", "pending", "profile_names", "run_one", "run_suite",
           "runs_dir", "stages", "with_variants"]


def runs_dir(results: Path, profile: Profile) -> Path:
    return Path(results) / profile.name / "runs"


Runs = list[tuple[str, ResolvedRun]]  # (grid label, resolved run), as ``grid`` gives them


def reuse_finished(profile: Profile, results: Path, runs: Runs) -> int:
    """Copy into this profile's runs every missing run (and pretrained decoder) of ``runs``
    that a profile of ``profile.reuse`` finished under the same results directory; returns how
    many. A copy lands whole (a temporary name, then renamed), without mid-run checkpoints."""
    out = runs_dir(results, profile)
    wanted = {}
    for _, run in runs:
        wanted[run.name] = run
        if run.pretrained is not None:
            wanted[run.pretrained.name] = run.pretrained
    copied = 0
    for name in wanted:
        if finished(out / name):
            continue
        for other in profile.reuse:
            source = Path(results) / other / "runs" / name
            try:
                ok = read_json(source / "metrics.json").get("status") == "ok"
            except (OSError, ValueError, ConfigError, AttributeError):
                ok = False
            if ok:
                out.mkdir(parents=True, exist_ok=True)
                tmp = out / f".{name}.reuse-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoints"))
                tmp.rename(out / name)
                copied += 1
                break
    return copied


def pending(profile: Profile, results: Path, runs: Runs | None = None) -> Runs:
    """The grid points of ``runs`` (default: the profile's grid) without a finished record."""
    out = runs_dir(results, profile)
    return [(label, run) for label, run in (grid(profile) if runs is None else runs)
            if not finished(out / run.name)]


def stages(runs: list[ResolvedRun], out: Path) -> list[list[ResolvedRun]]:
    """The runs to do in order: first the missing pretrained decoders that pending lagging runs
    start from (each once), then the runs themselves, so no worker waits for another's decoder."""
    first = {}
    for run in runs:
        pre = run.pretrained
        if pre is not None and not finished(out / pre.name):
            first.setdefault(pre.name, pre)
    return [s for s in (list(first.values()), runs) if s]


COMMITTED = Path(__file__).resolve().parents[2] / "results"


# what a run's cost estimate sums (a record's training and evaluation seconds)
ESTIMATE_PARTS = ("train_seconds", "eval_seconds")


def _run_seconds(metrics: dict) -> float:
    return sum(float(metrics.get(p) or 0) for p in ESTIMATE_PARTS)


def finished_seconds(profile: Profile, results: Path,
                     runs: Runs | None = None) -> dict[str, list[float]]:
    """Training + evaluation seconds of each finished grid run in ``results``, by label."""
    out, seconds = runs_dir(results, profile), {}
    for label, run in grid(profile) if runs is None else runs:
        path = out / run.name
        if path.is_dir() and damage(path) is None and retry_reason(path) is None:
            seconds.setdefault(label, []).append(_run_seconds(read_json(path / "metrics.json")))
    return seconds


def cost_estimates(profile: Profile, results: Path, committed: Path | None = None,
                   runs: Runs | None = None) -> dict[str, float]:
    """Seconds one run of each configuration takes (training + evaluation, mean over its
    finished seeds), by grid label: from the finished runs in ``results``, else from the
    profile's committed summary (``committed``, default this checkout's ``results/``; its
    ``PROFILE/summary.csv`` holds the records the committed report is made from); a label with
    neither is absent. Only the order in which runs are submitted depends on it, never a
    number."""
    estimates: dict[str, float] = {}
    summary = (COMMITTED if committed is None else committed) / profile.name / "summary.csv"
    if summary.is_file():
        seen: dict[str, list[float]] = {}
        with open(summary, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status") == "ok" and row.get("label"):
                    try:
                        seconds = _run_seconds(row)
                    except ValueError:  # a summary of another layout: no estimate from it
                        continue
                    if math.isfinite(seconds):
                        seen.setdefault(row["label"], []).append(seconds)
        estimates.update({k: sum(v) / len(v) for k, v in seen.items()})
    estimates.update({k: sum(v) / len(v)
                      for k, v in finished_seconds(profile, results, runs).items()})
    return estimates


def longest_first(todo: Runs, estimates: dict[str, float]) -> list[ResolvedRun]:
    """The runs in submission order: those without an estimate first (they may be long), then
    the rest longest first, grid order among equals. Workers take the next run when they free,
    so submitting the longest first (LPT scheduling) keeps one long run from starting last: on
    the committed `trained` grid, 1.05 h instead of 1.42 h on 8 workers (docs/ray.md)."""
    order = sorted(range(len(todo)), key=lambda i: (todo[i][0] in estimates,
                                                     -estimates.get(todo[i][0], 0.0)))
    return [todo[i][1] for i in order]


def dry_run(profile: Profile, results: Path, runs: Runs | None = None,
            stack: str | None = None) -> tuple[list[dict], str]:
    """What ``run_suite`` would do, without training: one row per grid point (label, seed, run
    name, ``done`` / ``pending`` / ``resumable`` when a mid-run checkpoint exists), and a line
    estimating the pending runs' cost from the finished runs of the same configuration
    (training + evaluation seconds, mean over their seeds)."""
    out, runs = runs_dir(results, profile), grid(profile) if runs is None else runs
    rows, seconds = [], finished_seconds(profile, results, runs)
    for label, run in runs:
        path = out / run.name
        why = (damage(path) or retry_reason(path)) if path.is_dir() else None
        if path.is_dir() and why is None:
            status = "done"
        elif why:
            status = "damaged" if damage(path) else "retry"
        elif any(finished(Path(results) / other / "runs" / path.name) for other in profile.reuse):
            status = "reused"  # copied from a profile it reuses when the suite runs
        else:
            status = "resumable" if any(checkpoint_dir(path).glob("epoch-*.pt")) else "pending"
        rows.append({"label": label, "seed": run.config.seed, "run": path.name, "status": status,
                     **({"why": why} if why else {})})
    todo = [r for r in rows if r["status"] not in ("done", "reused")]
    known = [sum(seconds[r["label"]]) / len(seconds[r["label"]]) for r in todo
             if r["label"] in seconds]
    names = {r["run"] for r in todo}
    missing = [r["label"] for r in todo if r["label"] not in seconds]
    screened = screening_estimate(profile, results, seconds, missing) if missing else ""
    units, alone = pack([run for _, run in runs if run.name in names], stack or profile.stack,
                        profile.stack_size)
    line = (f"{len(rows)} runs: {len(rows) - len(todo)} done"
            + (f" (of them {sum(r['status'] == 'reused' for r in rows)} to copy from "
               f"{', '.join(profile.reuse)})" if profile.reuse else "")
            + f", {len(todo)} to run; estimated "
            f"{sum(known) / 60:.1f} min for the {len(known)} of them whose configuration has a "
            f"finished seed" + (f", no estimate for {len(todo) - len(known)}"
                                if len(todo) > len(known) else "")
            + screened + f"; {packing_line(units, alone)}" + stack_gain_note(units))
    return rows, line


def screening_estimate(profile: Profile, results: Path, seconds: dict[str, list[float]],
                       missing: list[str]) -> str:
    """An estimate for ``missing`` (the pending runs' labels without a finished seed here, one
    entry a run): the screening profile's seconds of the same label (its committed summary or
    its finished runs), scaled by the median ratio of this profile's seconds to the screening's
    over the labels finished in both (a profile with a higher cap trains longer); "" when there
    is no screening profile or nothing to scale by."""
    if not profile.screening:
        return ""
    screen = cost_estimates(load_profile(profile.screening), results)
    ratios = [(sum(v) / len(v)) / screen[k] for k, v in seconds.items() if screen.get(k, 0) > 0]
    covered = [k for k in missing if k in screen]
    if not ratios or not covered:
        return ""
    scale = statistics.median(ratios)
    total = sum(screen[k] for k in covered) * scale
    return (f" (about {total / 60:.1f} min for {len(covered)} of those: `{profile.screening}`'s "
            f"seconds of the same configuration times the median ratio {scale:.2f}x of the "
            f"{len(ratios)} configurations finished in both)")


def stack_gain_note(units: list[list[ResolvedRun]]) -> str:
    """What stacking is measured to save (``results/throughput/stack-cpu.json``, the per-run
    gain of the MLP at each stack size): the estimate above is of runs alone."""
    measured = COMMITTED / "throughput" / "stack-cpu.json"
    sizes = sorted({len(u) for u in units if len(u) > 1})
    if not sizes or not measured.is_file():
        return ""
    try:
        rows = [r for r in read_json(measured)["rows"] if r["decoder"] == "mlp" and "gain" in r]
    except (ValueError, KeyError, TypeError, ConfigError):
        return ""
    gains = {r["runs"]: r["gain"] for r in rows}
    known = [f"{gains[s]:.2f}x at {s}" for s in sizes if s in gains]
    return (f" (stacked, the MLP's per-run step was measured {', '.join(known)}: the estimate "
            "is of runs alone)") if known else ""


def packing_line(units: list[list[ResolvedRun]], alone: dict[str, str]) -> str:
    """One line: how the runs to do are packed into stacks, and why the others train alone."""
    sizes = Counter(len(u) for u in units if len(u) > 1)
    why = Counter(alone.values())
    stacks = ", ".join(f"{n} of {size}" for size, n in sorted(sizes.items(), reverse=True))
    singles = sum(len(u) == 1 for u in units)
    reasons = "; ".join(f"{n}: {w}" for w, n in why.most_common())
    return (f"stacking: {sum(sizes.values())} stacks ({stacks or 'none'}), {singles} runs alone"
            + (f" ({reasons})" if reasons else ""))


def _one_by_one(units: list[list], out: Path, data_dir: str | None,
                each: Callable[[list[str]], None]):
    """The statuses of ``units`` trained in this process, calling ``each`` after every unit; what
    ``each`` raises never ends the grid (the pass after the grid tries again)."""
    for unit in units:
        yield from _local([unit], out, data_dir, 1)
        try:
            each([run.name for run in unit])
        except Exception as e:  # noqa: BLE001 - an attached record, not a run: the grid goes on
            first = (str(e).strip().splitlines() or [""])[0]
            print(f"vae-bench: warning: attached records of {unit[0].name}: "
                  f"{type(e).__name__}: {first} (tried again after the grid)", file=sys.stderr)


def run_suite(profile: Profile, results: Path, jobs: int = 1, data_dir: str | None = None,
              progress: bool | None = None, backend: str = "local",
              ray_address: str | None = None,
              runs: Runs | None = None, stack: str | None = None,
              each: Callable[[list[str]], None] | None = None) -> dict:
    """Run every missing grid point on a backend; return counts of what was done. The seeds of
    a configuration train stacked (``bench.grid.stack``) unless ``stack`` (default: the
    profile's) is ``off``; a line on stderr says how the runs were packed. ``each`` is called
    with the run names of every grid unit (a run, or a stack) as soon as it finished, where one
    job trains in this process (the local backend, ``jobs`` 1): a run's attached evaluations
    then use its weights before anything else can lose them."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    out = runs_dir(results, profile)
    ensure_writable(out)
    runs = grid(profile) if runs is None else runs  # every run of the grid resolved once
    reused = reuse_finished(profile, results, runs) if profile.reuse else 0
    total = len(runs)
    todo = longest_first(pending(profile, results, runs),
                         cost_estimates(profile, results, runs=runs))
    if todo and git_dirty():
        print("vae-bench: warning: this checkout has uncommitted changes; its runs record "
              "git_dirty: true (commit first for results that name the code that made them)",
              file=sys.stderr)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total, initial=total - len(todo), unit="run", disable=not show,
               desc=profile.name)
    counts = Counter(total=total, skipped=total - len(todo))
    if reused:
        counts["reused"] = reused
    start = time.perf_counter()
    mode = profile.stack if stack is None else stack
    for i, stage in enumerate(stages(todo, out)):
        units, alone = pack(stage, mode, profile.stack_size)
        if stage is todo or i > 0:
            print(f"vae-bench: {packing_line(units, alone)}", file=sys.stderr)
        statuses = _ray(units, out, data_dir, ray_address) if backend == "ray" \
            else _local(units, out, data_dir, jobs) if each is None or jobs > 1 or \
            (i == 0 and stage is not todo) else _one_by_one(units, out, data_dir, each)
        for status in statuses:
            if i == 0 and stage is not todo:  # a pretrained decoder, not a grid point
                counts[f"pretrained decoders {status}"] += 1
                continue
            counts[status] += 1
            bar.update()
    bar.close()
    return {**counts, "seconds": time.perf_counter() - start}
