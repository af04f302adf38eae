"""Names -> builders: the only place that knows which bases and components exist.

Each base, generator and add-on registers itself where it is defined, when its module is imported (as timm's models
do)::

    @register_base("spcl")
    class SpCL(BaseMethod): ...

    @register_hard_samples("hpf")          # a generator or an add-on: a name for ``method.hard_samples``
    class HardPersonFeatures(Component): ...

A builder is called as ``builder(cfg, device)`` and returns the base (a ``BaseMethod``) or the component (a
``Component``); a class whose ``__init__`` takes ``(cfg, device)`` is one. The modules of this package that register
(``bases/``, ``generators/``, ``addons/``) are imported the first time a name is looked up (``load_builtin``), and
the config's validation asks this module for the valid names of ``method.base`` and ``method.hard_samples``
(``config.register_choices``), so a new module needs no change anywhere else (docs/architecture.md, "Adding a
method").
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence, TypeVar

import torch

from ..config import Config, register_choices
from ..errors import UserError
from .contract import BaseMethod, Component

BaseBuilder = Callable[[Config, torch.device], BaseMethod]
ComponentBuilder = Callable[[Config, torch.device], Component]
T = TypeVar("T")

BASES: dict[str, BaseBuilder] = {}  # method.base
HARD_SAMPLES: dict[str, ComponentBuilder] = {}  # method.hard_samples: generators and add-ons
BUILTIN = ("hardreid.methods.bases", "hardreid.methods.generators", "hardreid.methods.addons")


def _register(registry: dict[str, Any], kind: str, name: str) -> Callable[[T], T]:
    def add(builder: T) -> T:
        old = registry.get(name)
        same = old is not None and (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == (
            getattr(builder, "__module__", None), getattr(builder, "__qualname__", None))  # a module imported again
        if old is not None and not same:
            raise ValueError(f"{kind} '{name}' is registered twice: by {old!r} and by {builder!r}")
        registry[name] = builder  # type: ignore[assignment]
        return builder
    return add


def register_base(name: str) -> Callable[[T], T]:
    """Decorator: ``builder`` (a ``BaseMethod`` class) is the base ``method.base: name``."""
    return _register(BASES, "method.base", name)


def register_hard_samples(name: str) -> Callable[[T], T]:
    """Decorator: ``builder`` (a ``Component`` class: a generator or an add-on) is ``method.hard_samples: [name]``."""
    return _register(HARD_SAMPLES, "method.hard_samples", name)


def load_builtin() -> None:
    """Import the modules of this package that register (once; later calls cost a dictionary look-up each)."""
    for module in BUILTIN:
        importlib.import_module(module)


def base_names() -> list[str]:
    load_builtin()
    return sorted(BASES)


def hard_sample_names() -> list[str]:
    load_builtin()
    return sorted(HARD_SAMPLES)


def base(name: str) -> BaseBuilder:
    """The builder of ``method.base: name``."""
    load_builtin()
    if name not in BASES:
        raise UserError(f"unknown method.base '{name}'; choose one of {', '.join(sorted(BASES))}")
    return BASES[name]


def hard_samples(names: Sequence[str]) -> list[ComponentBuilder]:
    """The builders of ``method.hard_samples: names``, in that order (each name at most once: checked with the
    config)."""
    load_builtin()
    unknown = [name for name in names if name not in HARD_SAMPLES]
    if unknown:
        choices = ", ".join(sorted(HARD_SAMPLES)) or "none available yet"
        raise UserError(f"unknown method.hard_samples {unknown}; choose from: {choices}")
    return [HARD_SAMPLES[name] for name in names]


register_choices("method.base", base_names)  # config validation asks the registry for the valid names
register_choices("method.hard_samples", hard_sample_names)

__all__ = ["BASES", "HARD_SAMPLES", "base", "base_names", "hard_sample_names", "hard_samples", "load_builtin",
           "register_base", "register_hard_samples"]
