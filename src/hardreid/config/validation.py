"""Checking configs: setting checked values (``apply_dict``), a whole config before a run (``validate_config``) and
one section that a library call takes (``check_section``). Every failure is one line (:mod:`.messages`)."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .messages import source_of, unknown
from .schema import Config


def apply_dict(cfg: Config, values: dict[str, Any], source: str) -> Config:
    """Set the keys of a nested ``{section: {key: value}}`` dict on ``cfg`` (each value checked; the rules between
    keys wait for :func:`validate_config`)."""
    sections = Config.model_fields
    for section, entries in values.items():
        if section not in sections:
            raise unknown("section", str(section), list(sections), source)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise UserError(f"config section '{section}' in {source} must be a mapping of keys, got {entries!r}")
        obj = getattr(cfg, section)
        model = type(obj)
        for key in entries:
            if key not in model.model_fields:
                raise unknown("key", f"{section}.{key}", [f"{section}.{k}" for k in model.model_fields], source)
        with source_of(source):  # the sections' __init__ turns pydantic's errors into a UserError naming it
            checked = model.model_validate(entries)
        for key in entries:
            setattr(obj, key, getattr(checked, key))
    return cfg


def validate_config(cfg: Config) -> Config:
    """Check every key of ``cfg`` (values set in Python too), then the rules between keys; raise one clear
    UserError. Values are normalised in place (e.g. ``"3"`` set in Python for an integer key becomes 3)."""
    values = {name: dict(getattr(cfg, name).__dict__) for name in Config.model_fields}
    checked = Config.model_validate(values)
    for name in values:
        getattr(cfg, name).__dict__.update(getattr(checked, name).__dict__)
    return cfg


def check_section(name: str, section: Any) -> None:
    """Check every key of one section object (e.g. ``cfg.cluster``, named ``name``) as :func:`validate_config`
    does: for library calls that take a section rather than a whole config."""
    model = type(section)
    values = dict(section.__dict__)
    model.model_validate(values)
