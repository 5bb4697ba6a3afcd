"""The config-key reference, generated from the dataclasses of ``bench.config``.

The documentation site's config page (``docs/config.md``) is this function's output at build
time (``docs/hooks.py``), so the reference lists exactly the keys the code accepts, with their
defaults, allowed values and documentation, and cannot go stale.
"""

from __future__ import annotations

import dataclasses

from .config import SECTIONS, RunConfig
from .identity import NOT_HASHED

_TITLES = {None: "Top level", "model": "`model.*`: the model",
           "train": "`train.*`: training and the convergence protocol",
           "eval": "`eval.*`: evaluation and the attached AIS record"}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "unset" if value is None else f'"{value}"' if isinstance(value, str) else str(value)


def _allowed(f: dataclasses.Field) -> str:
    if "widths" in f.metadata:
        return "comma-separated widths >= 1"
    return f.metadata["param"].allowed()


def rows(section: str | None) -> list[tuple[str, str, str, str]]:
    """(key, default, allowed values, documentation) of every field of one section (None: the
    top level, without the sections and the variant's hyperparameters)."""
    owner = RunConfig() if section is None else getattr(RunConfig(), section)
    out = []
    for f in dataclasses.fields(owner):
        if section is None and f.name in (*SECTIONS, "hparams"):
            continue
        key = f.name if section is None else f"{section}.{f.name}"
        doc = f.metadata["doc"]
        if (section, f.name) in NOT_HASHED:
            doc += " (not part of the run id)"
        out.append((key, _default(getattr(owner, f.name)), _allowed(f), doc))
    return out


def reference_markdown() -> str:
    """Every config key as Markdown tables, one per section."""
    parts = []
    for section in (None, *SECTIONS):
        parts += [f"## {_TITLES[section]}", "", "| key | default | allowed | what it sets |",
                  "|---|---|---|---|"]
        parts += ["| " + " | ".join(_cell(c) for c in (f"`{k}`", f"`{d}`", a, doc)) + " |"
                  for k, d, a, doc in rows(section)]
        parts.append("")
    return "\n".join(parts)
