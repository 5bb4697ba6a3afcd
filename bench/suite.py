"""Profiles and the grid: configurations x seeds, run with resume on a backend.

A profile (``bench/profiles/NAME.toml``) is a few overrides of ``default.toml``: ``[profile]``
(description, seeds, budget), ``[defaults]`` (config overrides for every run) and ``[[config]]``
entries (a label, a variant and its hyperparameters), and ``[[published]]`` numbers from papers
to set beside a configuration where the protocol is comparable. Optional ``[[group]]`` entries
(a name and config overrides, e.g. a decoder setting) cross every configuration: the grid is
then groups x configurations x seeds, labelled "group / configuration". ``inherits = "default"``
merges the parent's ``[profile]`` and ``[defaults]`` and keeps its configurations (and groups,
published numbers) unless the child lists its own.

Every run is keyed by the hash of its resolved config; a run whose record exists is skipped, so an
interrupted suite continues where it stopped. Records are renamed into place whole
(``bench.results.write_run``): a half-written run is never read as a result.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import tomllib
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from variants.base import ConfigError

from .config import RunConfig, apply_overrides, pretrain_config, resolve, to_dict
from .results import ensure_writable, environment, git_dirty, read_json, write_run

PROFILES = Path(__file__).parent / "profiles"
RESERVED = {"label", "variant"}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    seeds: tuple[int, ...]
    budget: str
    defaults: dict
    configs: tuple[dict, ...]
    published: tuple[dict, ...] = ()
    groups: tuple[dict, ...] = ()
    #: label of the configuration every other one is compared with, seed by seed (the report's
    #: paired comparison and cost column), and of the no-latent floor a method should beat
    baseline: str = ""
    floor: str = ""
    #: a published table set beside ours: title, source, note, columns, rows
    reference: dict = field(default_factory=dict)
    #: profiles whose finished runs (under the same results directory) are copied in instead of
    #: trained again: runs are named by the hash of their config, so a match is the same run
    reuse: tuple[str, ...] = ()
    #: metrics shown in the main table after the usual ones (mean ± sd over seeds)
    columns: tuple[str, ...] = ()


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.toml"))


def _read_toml(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILES / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown profile {name_or_path!r}; allowed: "
                              f"{', '.join(profile_names())} or a path to a .toml file")
    try:
        return path.stem, tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"profile {path}: malformed TOML ({e})") from None


def load_profile(name_or_path: str) -> Profile:
    """A profile with its parent merged in; ConfigError if it is empty, malformed or unknown."""
    name, raw = _read_toml(name_or_path)
    if not raw:
        raise ConfigError(f"profile {name!r} is empty; expected [profile], [defaults] and "
                          "[[config]] tables")
    tables = ("inherits", "profile", "defaults", "config", "published", "group", "reference")
    unknown = set(raw) - set(tables)
    if unknown:
        raise ConfigError(f"profile {name!r}: unknown table {sorted(unknown)[0]!r}; allowed: "
                          + ", ".join(tables))
    if "inherits" in raw:
        parent = load_profile(raw["inherits"])
        meta = {"description": parent.description, "seeds": list(parent.seeds),
                "budget": parent.budget, "baseline": parent.baseline, "floor": parent.floor,
                "columns": list(parent.columns), **raw.get("profile", {})}
        defaults = {**parent.defaults, **raw.get("defaults", {})}
        configs = raw.get("config", list(parent.configs))
        published = raw.get("published", list(parent.published))
        groups = raw.get("group", list(parent.groups))
        reference = raw.get("reference", parent.reference)
    else:
        meta, defaults, configs = raw.get("profile", {}), raw.get("defaults", {}), raw.get("config")
        published, groups = raw.get("published", []), raw.get("group", [])
        reference = raw.get("reference", {})
    if not configs:
        raise ConfigError(f"profile {name!r} has no [[config]] entries; expected at least one "
                          "with a label and a variant")
    seeds = meta.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"profile {name!r}: seeds={seeds!r} is invalid; allowed: a non-empty "
                          "list of integers >= 0")
    for c in configs:
        if not isinstance(c, dict) or not {"label", "variant"} <= set(c):
            raise ConfigError(f"profile {name!r}: config {c!r} needs a label and a variant")
    for g in groups:
        if not isinstance(g, dict) or "name" not in g:
            raise ConfigError(f"profile {name!r}: group {g!r} needs a name")
    columns = meta.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        raise ConfigError(f"profile {name!r}: columns={columns!r} is invalid; allowed: a list of "
                          "metric names")
    reuse = meta.get("reuse", [])
    if not isinstance(reuse, list) or not all(isinstance(r, str) and r for r in reuse):
        raise ConfigError(f"profile {name!r}: reuse={reuse!r} is invalid; allowed: a list of "
                          "profile names")
    labels = [c["label"] for c in configs]
    for key in ("baseline", "floor"):
        if meta.get(key) and meta[key] not in labels:
            raise ConfigError(f"profile {name!r}: {key}={meta[key]!r} is not a configuration; "
                              f"allowed: {', '.join(labels)}")
    return Profile(name, meta.get("description", ""), tuple(seeds), meta.get("budget", ""),
                   defaults, tuple(configs), tuple(published), tuple(groups),
                   meta.get("baseline", ""), meta.get("floor", ""), reference, tuple(reuse),
                   tuple(columns))


def with_variants(profile: Profile, specs: list[str]) -> Profile:
    """``profile`` with one more configuration per variant spec (a name or module:Class, its
    defaults; labelled by the spec), named ``PROFILE+SPEC``, reusing the finished runs of
    ``profile``: only the new configurations train, and the report pairs them with the
    profile's baseline seed by seed."""
    if not specs:
        return profile
    from variants import resolve

    labels = {c["label"] for c in profile.configs}
    for spec in specs:
        resolve(spec)  # a broken or unknown variant: one line, before anything else
        if spec in labels:
            raise ConfigError(f"--add-variant {spec}: profile {profile.name!r} already has a "
                              f"configuration labelled {spec!r}")
    name = "+".join([profile.name, *(s.replace(":", ".") for s in specs)])
    return dataclasses.replace(profile, name=name,
                               configs=(*profile.configs, *({"label": s, "variant": s}
                                                            for s in specs)),
                               reuse=(profile.name, *profile.reuse))


def grid(profile: Profile) -> list[tuple[str, RunConfig]]:
    """(label, resolved config) for every [group x] configuration x seed, validated up front."""
    out = []
    for group in profile.groups or ({},):
        over = {k: v for k, v in group.items() if k != "name"}
        for entry in profile.configs:
            hp = {k: v for k, v in entry.items() if k not in RESERVED}
            label = f"{group['name']} / {entry['label']}" if group else entry["label"]
            for seed in profile.seeds:
                overrides = {**profile.defaults, **over, "variant": entry["variant"],
                             "seed": seed, **hp}
                try:
                    cfg = resolve(apply_overrides(RunConfig(), overrides))
                except ConfigError as e:
                    raise ConfigError(f"profile {profile.name!r}, config {label!r}: {e}") \
                        from None
                out.append((label, cfg))
    for what, names in (("config labels", [c["label"] for c in profile.configs]),
                        ("group names", [g["name"] for g in profile.groups])):
        if len(set(names)) != len(names):
            raise ConfigError(f"profile {profile.name!r}: duplicate {what} in {names}")
    return out


def group_of(label: str) -> str:
    """The group part of a grid label ("" for a profile without groups)."""
    return label.split(" / ")[0] if " / " in label else ""


def runs_dir(results: Path, profile: Profile) -> Path:
    return Path(results) / profile.name / "runs"


def run_one(cfg: RunConfig, out: Path | str, data_dir: str | None, threads: int) -> str:
    """Run one grid point; any failure becomes a record with status 'failed' and its error."""
    import torch

    from .allocator import tune
    from .runner import execute, run_name

    tune()  # in every worker process, whatever the backend
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    try:
        return read_json(execute(cfg, out, data_dir) / "metrics.json")["status"]
    except Exception as e:  # recorded, and the grid goes on
        target = out / run_name(cfg)
        if not target.exists():
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            write_run(target, config=to_dict(cfg), history=[], state_dict=None,
                      metrics={"status": "failed", "error": error,
                               "traceback": traceback.format_exc()},
                      env=environment(cfg.device, {}, {}))
        return "failed"


def reuse_finished(profile: Profile, results: Path) -> int:
    """Copy into this profile's runs every missing run (and pretrained decoder) that a profile
    of ``profile.reuse`` finished under the same results directory; returns how many. A copy
    lands whole (a temporary name, then renamed), without mid-run checkpoints."""
    from .runner import run_name

    out = runs_dir(results, profile)
    wanted = {}
    for _, cfg in grid(profile):
        wanted[run_name(cfg)] = cfg
        pre = pretrain_config(cfg)
        if pre is not None:
            wanted[run_name(pre)] = pre
    copied = 0
    for name in wanted:
        if (out / name / "metrics.json").exists():
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


def pending(profile: Profile, results: Path) -> list[tuple[str, RunConfig]]:
    from .runner import run_name

    out = runs_dir(results, profile)
    return [(label, cfg) for label, cfg in grid(profile)
            if not (out / run_name(cfg) / "metrics.json").exists()]


def stages(configs: list[RunConfig], out: Path) -> list[list[RunConfig]]:
    """The runs to do in order: first the missing pretrained decoders that pending lagging runs
    start from (each once), then the runs themselves, so no worker waits for another's decoder."""
    from .runner import run_name

    first = {}
    for cfg in configs:
        pre = pretrain_config(cfg)
        if pre is not None and not (out / run_name(pre) / "metrics.json").exists():
            first.setdefault(run_name(pre), pre)
    return [s for s in (list(first.values()), configs) if s]


BACKENDS = ("local", "ray")


def _local(configs: list[RunConfig], out: Path, data_dir: str | None, jobs: int):
    """The embedded default: in this process for one job, else a process pool."""
    if jobs == 1:
        for cfg in configs:
            yield run_one(cfg, out, data_dir, 0)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn, not fork: a forked child of a process that has run OpenMP threads can deadlock
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, cfg, out, data_dir, threads) for cfg in configs]
        for fut in as_completed(futures):
            yield fut.result()


def _ray_token_auth(address: str | None) -> None:
    """Connect the way Ray documents a cluster: `ray start --head` (Ray 2.60 turns token
    authentication on for clusters started that way and writes the token to ~/.ray/auth_token)
    accepts a driver only with RAY_AUTH_MODE=token. So, for an existing cluster, when a token is
    at hand and the user chose no mode, ask for token authentication."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        return  # a local Ray started by this driver
    if "RAY_AUTH_MODE" in os.environ:
        return  # the user's choice
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
            or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _ray(configs: list[RunConfig], out: Path, data_dir: str | None, address: str | None):
    """One Ray task per run (1 CPU, 1 GPU for cuda runs), retried when a worker dies. Every task
    writes its own record under ``out``, which must be on storage the workers share; the driver
    only counts statuses. ``address``: None starts a local Ray unless RAY_ADDRESS is set."""
    _ray_token_auth(address)  # before ray is imported: it reads the mode as it loads
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray' needs the ray extra: pip install 'vae-bench[ray]'; "
                          "allowed without it: local") from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, configure_logging=False)
    except ConnectionError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"the Ray cluster refused or did not answer the driver ({first}); a "
                          "cluster started with `ray start --head` uses token authentication "
                          "(Ray >= 2.60): set RAY_AUTH_MODE=token and make its token available "
                          "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); allowed "
                          "without a cluster: --backend local") from None
    from . import numerics

    task = ray.remote(run_one)
    refs = [task.options(num_cpus=1, num_gpus=1 if cfg.device == "cuda" else 0, max_retries=3,
                         retry_exceptions=False,
                         # a worker loads torch in the run's numerics mode (one that loaded it
                         # otherwise runs the task in a fresh process of that mode)
                         runtime_env={"env_vars": numerics.environment_for(cfg.numerics, {})})
            .remote(cfg, str(out.resolve()), data_dir, 1) for cfg in configs]
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        yield ray.get(done[0])


def dry_run(profile: Profile, results: Path) -> tuple[list[dict], str]:
    """What ``run_suite`` would do, without training: one row per grid point (label, seed, run
    name, ``done`` / ``pending`` / ``resumable`` when a mid-run checkpoint exists), and a line
    estimating the pending runs' cost from the finished runs of the same configuration
    (training + evaluation seconds, mean over their seeds)."""
    from .runner import checkpoint_dir, run_name

    out = runs_dir(results, profile)
    rows, seconds = [], {}
    for label, cfg in grid(profile):
        path = out / run_name(cfg)
        metrics = path / "metrics.json"
        if metrics.exists():
            status = "done"
            m = read_json(metrics)
            seconds.setdefault(label, []).append(m.get("train_seconds", 0) +
                                                 (m.get("eval_seconds") or 0))
        else:
            status = "resumable" if any(checkpoint_dir(path).glob("epoch-*.pt")) else "pending"
        rows.append({"label": label, "seed": cfg.seed, "run": path.name, "status": status})
    todo = [r for r in rows if r["status"] != "done"]
    known = [sum(seconds[r["label"]]) / len(seconds[r["label"]]) for r in todo
             if r["label"] in seconds]
    line = (f"{len(rows)} runs: {len(rows) - len(todo)} done, {len(todo)} to run; estimated "
            f"{sum(known) / 60:.1f} min for the {len(known)} of them whose configuration has a "
            f"finished seed" + (f", no estimate for {len(todo) - len(known)}"
                                if len(todo) > len(known) else ""))
    return rows, line


def run_suite(profile: Profile, results: Path, jobs: int = 1, data_dir: str | None = None,
              progress: bool | None = None, backend: str = "local",
              ray_address: str | None = None) -> dict:
    """Run every missing grid point on a backend; return counts of what was done."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    out = runs_dir(results, profile)
    ensure_writable(out)
    reused = reuse_finished(profile, results) if profile.reuse else 0
    total, todo = len(grid(profile)), [cfg for _, cfg in pending(profile, results)]
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
    for i, stage in enumerate(stages(todo, out)):
        statuses = _ray(stage, out, data_dir, ray_address) if backend == "ray" \
            else _local(stage, out, data_dir, jobs)
        for status in statuses:
            if i == 0 and stage is not todo:  # a pretrained decoder, not a grid point
                counts[f"pretrained decoders {status}"] += 1
                continue
            counts[status] += 1
            bar.update()
    bar.close()
    return {**counts, "seconds": time.perf_counter() - start}
