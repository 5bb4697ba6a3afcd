"""Profiles and their grid: configurations x seeds, every point a resolved run.

A profile (``bench/profiles/NAME.toml``) is a few overrides of ``default.toml``: ``[profile]``
(description, seeds, budget), ``[defaults]`` (config overrides for every run) and ``[[config]]``
entries (a label, a variant and its hyperparameters), and ``[[published]]`` numbers from papers
to set beside a configuration where the protocol is comparable. Optional ``[[group]]`` entries
(a name and config overrides, e.g. a decoder setting) cross every configuration: the grid is
then groups x configurations x seeds, labelled "group / configuration". ``inherits = "default"``
merges the parent's ``[profile]`` and ``[defaults]`` and keeps its configurations (and groups,
published numbers) unless the child lists its own. ``[profile]`` may also name ``reuse``
(profiles whose finished runs are copied in), ``columns`` (more metrics in the main table),
``screening`` (a quicker profile of the same configurations that the report reads beside it),
``stack`` / ``stack_size`` (seeds trained together: ``bench.grid.stack``), ``collapse_kl``
(the KL in nats below which the report reads a configuration as collapsed; 1) and ``control``
(``{profile, group, note}``: a group of another profile's grid that the report shows as this
one's control, with how its runs stopped: bench/report/control.py).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from variants.errors import ConfigError

from ..config import RunConfig, apply_overrides
from ..identity import ResolvedRun, resolve_run

PROFILES = Path(__file__).resolve().parents[1] / "profiles"


RESERVED = {"label", "variant"}
#: the keys of a profile's [profile] table
PROFILE_KEYS = {"description", "seeds", "budget", "baseline", "floor", "columns", "reuse",
                "screening", "stack", "stack_size", "collapse_kl", "control"}


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
    #: a quicker profile of the same configurations whose conclusions the report checks against
    #: this one's (bench/report/screening.py)
    screening: str = ""
    #: whether the seeds of a configuration train together as one stacked model (``auto``, the
    #: default) or each alone (``off``), and the most runs in one stack (``bench.grid.stack``)
    stack: str = "auto"
    stack_size: int = 5
    #: the report's collapse line: a mean KL below this many nats reads as collapsed (1 nat for
    #: the image grids; a 1-d latent's whole use of z can be less)
    collapse_kl: float = 1.0
    #: (profile, group, note): a group of another profile the report shows as a control
    control: tuple[str, str, str] = ()


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
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"profile {path}: cannot read it ({e.strerror}); allowed: "
                          f"{', '.join(profile_names())} or a path to a .toml file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"profile {path}: not UTF-8 text (byte {e.start}); allowed: a TOML file "
                          "in UTF-8") from None
    try:
        return path.stem, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"profile {path}: malformed TOML ({e})") from None


def load_profile(name_or_path: str, _chain: tuple[str, ...] = ()) -> Profile:
    """A profile with its parent merged in; ConfigError if it is empty, malformed or unknown."""
    if not isinstance(name_or_path, str):
        raise ConfigError(f"profile {_chain[-1] if _chain else ''!r}: inherits={name_or_path!r} "
                          "is invalid; allowed: a profile name or a path to a .toml file")
    key = str(Path(name_or_path).resolve()) if name_or_path.endswith(".toml") else name_or_path
    if key in _chain:
        raise ConfigError("profile inheritance loops: " + " -> ".join([*_chain, key]) +
                          "; allowed: a chain of parents that ends")
    name, raw = _read_toml(name_or_path)
    if not raw:
        raise ConfigError(f"profile {name!r} is empty; expected [profile], [defaults] and "
                          "[[config]] tables")
    tables = ("inherits", "profile", "defaults", "config", "published", "group", "reference")
    unknown = set(raw) - set(tables)
    if unknown:
        raise ConfigError(f"profile {name!r}: unknown table {sorted(unknown)[0]!r}; allowed: "
                          + ", ".join(tables))
    for table in ("profile", "defaults", "reference"):
        if table in raw and not isinstance(raw[table], dict):
            raise ConfigError(f"profile {name!r}: {table} = {raw[table]!r} is invalid; allowed: a "
                              f"[{table}] table")
    for table in ("config", "published", "group"):
        if table in raw and not (isinstance(raw[table], list)
                                 and all(isinstance(t, dict) for t in raw[table])):
            raise ConfigError(f"profile {name!r}: {table} = {raw[table]!r} is invalid; allowed: "
                              f"[[{table}]] tables")
    if "inherits" in raw:
        parent = load_profile(raw["inherits"], (*_chain, key))
        meta = {"description": parent.description, "seeds": list(parent.seeds),
                "budget": parent.budget, "baseline": parent.baseline, "floor": parent.floor,
                "columns": list(parent.columns), "stack": parent.stack,
                "stack_size": parent.stack_size, "collapse_kl": parent.collapse_kl,
                **raw.get("profile", {})}
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
    unknown = sorted(set(meta) - PROFILE_KEYS)
    if unknown:  # a misspelt key would be ignored: its setting silently not applied
        raise ConfigError(f"profile {name!r}: unknown [profile] key {unknown[0]!r}; allowed: "
                          + ", ".join(sorted(PROFILE_KEYS)))
    seeds = meta.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"profile {name!r}: seeds={seeds!r} is invalid; allowed: a non-empty "
                          "list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"profile {name!r}: seeds={seeds!r} repeats a seed; allowed: distinct "
                          "seeds (one run each)")
    for c in configs:
        if not isinstance(c, dict) or not {"label", "variant"} <= set(c):
            raise ConfigError(f"profile {name!r}: config {c!r} needs a label and a variant")
        if not isinstance(c["label"], str) or not isinstance(c["variant"], str):
            raise ConfigError(f"profile {name!r}: config {c!r}: label and variant must be "
                              "strings")
        if "seed" in c:
            raise ConfigError(f"profile {name!r}: config {c['label']!r} sets seed; allowed: "
                              "seeds only in [profile] seeds (every config runs every seed)")
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
    screening = meta.get("screening", "")
    if not isinstance(screening, str) or screening == name:
        raise ConfigError(f"profile {name!r}: screening={screening!r} is invalid; allowed: the "
                          "name of another profile")
    stack, stack_size = meta.get("stack", "auto"), meta.get("stack_size", 5)
    if stack not in ("auto", "off"):
        raise ConfigError(f"profile {name!r}: stack={stack!r} is invalid; allowed: auto, off")
    if not isinstance(stack_size, int) or isinstance(stack_size, bool) or stack_size < 1:
        raise ConfigError(f"profile {name!r}: stack_size={stack_size!r} is invalid; allowed: an "
                          "integer >= 1 (1: every run alone)")
    collapse_kl = meta.get("collapse_kl", 1.0)
    if not isinstance(collapse_kl, (int, float)) or isinstance(collapse_kl, bool) or not (
            collapse_kl > 0):
        raise ConfigError(f"profile {name!r}: collapse_kl={collapse_kl!r} is invalid; allowed: a "
                          "number of nats > 0")
    control = meta.get("control", {})
    if not isinstance(control, dict) or (control and (
            set(control) - {"profile", "group", "note"} or not all(
                isinstance(control.get(k), str) and control.get(k) for k in ("profile", "group"))
            or not isinstance(control.get("note", ""), str) or control["profile"] == name)):
        raise ConfigError(f"profile {name!r}: control={control!r} is invalid; allowed: a table "
                          "with profile (another profile's name), group (one of its groups) and "
                          "an optional note")
    control = (control["profile"], control["group"], control.get("note", "")) if control else ()
    labels = [c["label"] for c in configs]
    for key in ("baseline", "floor"):
        if meta.get(key) and meta[key] not in labels:
            raise ConfigError(f"profile {name!r}: {key}={meta[key]!r} is not a configuration; "
                              f"allowed: {', '.join(labels)}")
    return Profile(name, meta.get("description", ""), tuple(seeds), meta.get("budget", ""),
                   defaults, tuple(configs), tuple(published), tuple(groups),
                   meta.get("baseline", ""), meta.get("floor", ""), reference, tuple(reuse),
                   tuple(columns), screening, stack, stack_size, float(collapse_kl), control)


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


def grid(profile: Profile) -> list[tuple[str, ResolvedRun]]:
    """(label, resolved run) for every [group x] configuration x seed, each validated and built
    once, up front (``bench.identity.resolve_run``)."""
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
                    run = resolve_run(apply_overrides(RunConfig(), overrides))
                except ConfigError as e:
                    raise ConfigError(f"profile {profile.name!r}, config {label!r}: {e}") \
                        from None
                out.append((label, run))
    for what, names in (("config labels", [c["label"] for c in profile.configs]),
                        ("group names", [g["name"] for g in profile.groups])):
        if len(set(names)) != len(names):
            raise ConfigError(f"profile {profile.name!r}: duplicate {what} in {names}")
    return out


def only(runs: list[tuple[str, ResolvedRun]], labels: list[str], profile: str
         ) -> list[tuple[str, ResolvedRun]]:
    """The grid's runs of the configurations named in ``labels`` (a grid label, or a
    configuration's label in every group), all runs where ``labels`` is empty; an unknown name
    ends with a one-line error listing the profile's."""
    known = list(dict.fromkeys(label for label, _ in runs))
    hit = {x: [lab for lab in known if lab == x or lab.endswith(f" / {x}")] for x in labels}
    for x, found in hit.items():
        if not found:
            raise ConfigError(f"--only {x!r}: profile {profile!r} has no such configuration; "
                              f"allowed: {', '.join(known)}")
    keep = {lab for found in hit.values() for lab in found}
    return [(lab, run) for lab, run in runs if not labels or lab in keep]


def group_of(label: str) -> str:
    """The group part of a grid label ("" for a profile without groups)."""
    return label.split(" / ")[0] if " / " in label else ""
