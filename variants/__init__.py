"""The variants being compared, by name.

A built-in variant is one small module overriding a hook of ``Variant`` plus one line in
``_MODULES``. A variant from outside the package needs neither:

- ``module:Class`` wherever a variant name is accepted: ``Class`` (a ``Variant`` subclass) from
  ``module``, importable from the current directory or ``PYTHONPATH`` (``mymethod:MyVariant``
  for ``./mymethod.py``);
- an installed package's entry point in the group ``vae_bench.variants``
  (``[project.entry-points."vae_bench.variants"] my-method = "pkg.mod:MyVariant"``), then listed
  and usable under its entry-point name.

``resolve(name)`` gives the class; ``source(name)`` the file and sha256 of an outside variant's
source (recorded in env.json, and part of the run id, so an edited method never reuses the runs
of its former self). A broken one raises a one-line ConfigError naming its file and what is
wrong; ``bench.contract.check_variant`` runs the contract the built-in variants are tested
against.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from importlib import metadata
from pathlib import Path

from .base import Param, Variant
from .errors import ConfigError

REGISTRY: dict[str, type[Variant]] = {}
ENTRY_POINT_GROUP = "vae_bench.variants"

_MODULES = ("vae", "beta", "annealing", "free_bits", "iwae", "gumbel", "decoder_only",
            "aggressive", "bn_vae", "delta_vae", "pretrained_encoder", "skip_vae", "du_vae", "mmd")
_BUILT_IN: set[str] = set()
_OUTSIDE: dict[str, type[Variant]] = {}  # import paths and entry points resolved so far
_entry_points_loaded = False


def register(name: str):
    """Class decorator: make a Variant subclass available as ``name``."""

    def wrap(cls: type[Variant]) -> type[Variant]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def is_import_path(name: str) -> bool:
    return ":" in name


def _where(module: str) -> str:
    """The file a module would load from (for messages), else the module name."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    return spec.origin if spec is not None and spec.origin else module


def _fault(exc: BaseException, module: str) -> str:
    """Where an import failed, in the user's own file when it did: "path:line: Error: text"."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename]
    place = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else f"{_where(module)}: "
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{place}{type(exc).__name__}{': ' + text if text else ''}"


def _check_class(cls: object, spec: str, where: str) -> type[Variant]:
    if not (isinstance(cls, type) and issubclass(cls, Variant)):
        raise ConfigError(f"variant {spec!r} ({where}): {cls!r} is not a subclass of "
                          "variants.Variant; allowed: a class deriving from variants.Variant")
    bad = [k for k, p in cls.params.items() if not isinstance(p, Param)]
    if not isinstance(cls.params, dict) or bad:
        raise ConfigError(f"variant {spec!r} ({where}): params must map names to variants.Param; "
                          f"{bad[0]!r} does not")
    if "name" not in vars(cls):  # the name it is run under: the spec itself
        cls.name = spec
    return cls


def _import_class(spec: str) -> type[Variant]:
    module, _, attr = spec.partition(":")
    if not module or not attr or ":" in attr:
        raise ConfigError(f"variant {spec!r} is not an import path; allowed: module:Class "
                          "(a module importable from the current directory or PYTHONPATH)")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` would see it
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise ConfigError(f"variant {spec!r}: no module {module!r} in the current directory "
                              "or PYTHONPATH; allowed: module:Class of an importable module"
                              ) from None
        raise ConfigError(f"variant {spec!r}: {_fault(e, module)}") from None
    except Exception as e:  # noqa: BLE001 - the user's code: any error, one line
        raise ConfigError(f"variant {spec!r}: {_fault(e, module)}") from None
    where = getattr(mod, "__file__", None) or module
    if not hasattr(mod, attr):
        raise ConfigError(f"variant {spec!r}: {where} defines no {attr!r}; allowed: a Variant "
                          "subclass defined in that module")
    return _check_class(getattr(mod, attr), spec, where)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in REGISTRY:
            continue  # a built-in name is never shadowed
        try:
            cls = ep.load()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"variant {ep.name!r} (entry point {ep.value} of group "
                              f"{ENTRY_POINT_GROUP}): {_fault(e, ep.module)}") from None
        cls = _check_class(cls, ep.name, ep.value)
        cls.name = ep.name
        REGISTRY[ep.name] = cls
        _OUTSIDE[ep.name] = cls


def names() -> list[str]:
    """Every variant available by name: built-in, then installed through entry points."""
    _load_entry_points()
    return list(REGISTRY)


def resolve(name: str) -> type[Variant]:
    """The Variant class of a name, an import path (module:Class) or an entry point."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"variant {name!r} is invalid; allowed: a variant name or module:Class")
    if name in REGISTRY:
        return REGISTRY[name]
    if is_import_path(name):
        if name not in _OUTSIDE:
            _OUTSIDE[name] = _import_class(name)
        return _OUTSIDE[name]
    _load_entry_points()
    if name not in REGISTRY:
        raise ConfigError(f"unknown variant {name!r}; allowed: {', '.join(REGISTRY)}, or "
                          "module:Class (a Variant subclass in an importable module)")
    return REGISTRY[name]


def create(name: str, **hparams: object) -> Variant:
    """The variant ``name`` with validated hyperparameters (ConfigError if anything is wrong,
    including a user's ``__init__`` that raises: one line naming the class and the error)."""
    cls = resolve(name)
    try:
        return cls(**hparams)
    except ConfigError:
        raise
    except Exception as e:  # a user's class: its own code failed while constructing
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"variant {name!r}: {cls.__qualname__}({', '.join(hparams)}) raised "
                          f"{type(e).__name__}: {first}; allowed: a class whose construction "
                          "succeeds with its declared hyperparameters") from None


def source(name: str) -> dict | None:
    """For a variant from outside the package: {"file", "sha256"} of the file defining its
    class; None for a built-in one (the suite version covers those)."""
    cls = resolve(name)
    if name in _BUILT_IN:
        return None
    try:
        path = Path(inspect.getsourcefile(cls) or "")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, TypeError) as e:
        raise ConfigError(f"variant {name!r}: cannot read the source of {cls.__qualname__} "
                          f"({e}); allowed: a class defined in a .py file") from None
    return {"file": str(path.resolve()), "sha256": digest}


for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")
_BUILT_IN.update(REGISTRY)

__all__ = ["ENTRY_POINT_GROUP", "REGISTRY", "ConfigError", "Param", "Variant", "create",
           "is_import_path", "names", "register", "resolve", "source"]
