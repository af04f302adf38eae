"""Choices whose valid names a registry above the config holds: the methods' registry (``method.base``,
``method.hard_samples``) and the backbones (``model.backbone``).

Each registry adds its own when it is imported (``register_choices``) and validation asks it when a value is
checked (``registered``), so the config imports nothing above it (docs/architecture.md, "Layers").
"""

from __future__ import annotations

from typing import Any, Callable

#: key -> function returning the valid names of that key ("section.key").
CHOICES: dict[str, Callable[[], Any]] = {}


def register_choices(key: str, names: Callable[[], Any]) -> None:
    """Let ``names()`` (asked when a value is checked) give the valid values of ``key`` (``"section.key"``)."""
    CHOICES[key] = names


def registered(key: str) -> Callable[[], list[Any]]:
    """The names the registry of ``key`` holds when asked."""
    def names() -> list[Any]:
        if key not in CHOICES:
            raise RuntimeError(f"no registry gave the choices of {key}: import hardreid (the package) first")
        return list(CHOICES[key]())
    return names
