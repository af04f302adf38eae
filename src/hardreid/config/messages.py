"""Pydantic's ValidationError as the one-line UserError a user sees: the key (section.key), where the value came
from, the value and what the key accepts, with a did-you-mean for unknown keys and choices.

Only the first error is reported (the first key of the input that is wrong), as a config is fixed one key at a time.
"""

from __future__ import annotations

import contextlib
import difflib
from contextvars import ContextVar
from typing import Annotated, Any, Iterator, Literal, Mapping, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from ..errors import UserError
from .fields import did_you_mean, to_list

#: where the values being validated come from ("command-line overrides", a file, ""= set in Python): validation
#: runs inside pydantic, which calls the sections' __init__ (that converts the errors) without it.
SOURCE: ContextVar[str] = ContextVar("config_source", default="")


@contextlib.contextmanager
def source_of(source: str) -> Iterator[None]:
    token = SOURCE.set(source)
    try:
        yield
    finally:
        SOURCE.reset(token)


_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def unknown(kind: str, name: str, choices: list[str], source: str) -> UserError:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown config {kind} '{name}' in {source}.{hint} Valid: {', '.join(sorted(choices))}")


def user_error(exc: ValidationError, inputs: Any, source: str, section: Any) -> UserError:
    """The UserError of the first error of ``exc``, raised validating ``inputs`` (from ``source``, "" = set in
    Python) as ``section`` (a Section class, or the whole Config whose fields are the sections)."""
    errors = exc.errors(include_url=False)
    order = list(inputs) if isinstance(inputs, Mapping) else []
    error = min(errors, key=lambda e: order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order else len(order))
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    if kind == "hr_config":
        return UserError(f"config: {ctx['message']}")
    if not getattr(section, "section", ""):  # the whole config: loc = (section, key, ...)
        names = list(section.model_fields)
        if not loc or loc[0] not in names:
            return unknown("section", str(loc[0]) if loc else "?", names, source or "the config")
        model = section.model_fields[loc[0]].annotation
        value = inputs.get(loc[0]) if isinstance(inputs, Mapping) else None
        if len(loc) == 1:
            return UserError(f"config section '{loc[0]}' in {source or 'the config'} must be a mapping of keys, "
                             f"got {value!r}")
        return _key_error(error, loc[1:], value, source, model)
    return _key_error(error, loc, inputs, source, section)


def _key_error(error: dict[str, Any], loc: tuple[Any, ...], inputs: Any, source: str, model: Any) -> UserError:
    kind, ctx = error["type"], error.get("ctx") or {}
    fields = model.model_fields
    key = f"{model.section}.{loc[0]}"
    if kind == "extra_forbidden" or loc[0] not in fields:
        return unknown("key", key, [f"{model.section}.{k}" for k in fields], source or "the config")
    where = f" in {source}" if source else (" in the config" if kind == "hr_type" else "")
    value = ctx.get("got", error["input"])
    if kind in ("hr_type", "hr_rule"):
        return UserError(f"config key '{key}'{where} {error['msg']}, got {value!r}{ctx.get('hint', '')}")
    item = any(isinstance(part, int) for part in loc[1:])
    if kind in _BOUNDS or kind == "literal_error":
        allowed, choices = describe(fields[loc[0]], item)
        hint = did_you_mean(error["input"], choices)
        if item:  # the whole list, as a list
            try:
                value = to_list(inputs[loc[0]])
            except Exception:  # noqa: BLE001 - the value as given then
                value = inputs.get(loc[0])
        return UserError(f"config key '{key}'{where} must be {allowed}, got {value!r}{hint}")
    return UserError(f"config key '{key}'{where} is not valid ({error['msg']}), got {value!r}")


def _parts(annotation: Any) -> tuple[Any, list[Any]]:
    if get_origin(annotation) is Annotated:
        base, *meta = get_args(annotation)
        return base, meta
    return annotation, []


def describe(field: FieldInfo, item: bool = False) -> tuple[str, tuple[Any, ...]]:
    """What a key (``item``: each item of a list key) accepts, in words ("an integer >= 1", "one of avg, gem"),
    and its choices (``()`` for bounds)."""
    kind, meta = field.annotation, list(field.metadata)
    if item:
        kind, meta = _parts(get_args(kind)[0])
    flat = []
    for m in meta:
        flat.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        text = str(choices[0]) if len(choices) == 1 else "one of " + ", ".join(map(str, choices))
        return (f"a list of names from: {', '.join(map(str, choices))}" if item else text), choices
    low = next(((getattr(m, a), a == "gt") for m in flat for a in ("ge", "gt") if getattr(m, a, None) is not None), None)
    high = next(((getattr(m, a), a == "lt") for m in flat for a in ("le", "lt") if getattr(m, a, None) is not None), None)
    noun = "an integer" if kind is int else "a number"
    if low and high:
        text = f"{noun} in {'(' if low[1] else '['}{low[0]:g}, {high[0]:g}{')' if high[1] else ']'}"
    elif low:
        text = f"{noun} {'>' if low[1] else '>='} {low[0]:g}"
    elif high:
        text = f"{noun} {'<' if high[1] else '<='} {high[0]:g}"
    else:
        text = noun
    if item:
        text = "a list of " + text.replace("an integer", "integers").replace("a number", "numbers")
    return text, ()
