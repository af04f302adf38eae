"""The value types of config keys, as pydantic annotated types, and the rules that bounds and choices cannot say.

Types are strict and nothing is truncated or guessed (YAML scalars and command-line strings both arrive here):

* ``Int``: an int (not a bool), or text of digits (``"+3"``); ``1.9``, ``2.0`` and ``true`` are refused.
* ``Float``: a finite int or float, or text of one (``"1e-4"``); ``nan`` / ``inf`` and bools are refused.
* ``Bool``: true/false, or the text true/false, yes/no, on/off, 1/0.
* ``BoolOrAuto``: a ``Bool`` or ``auto`` (decided from the training images when a run starts).
* ``Str``: text (``null`` = ``""``); numbers and lists are refused.
* ``List[T]``: a list of ``T``; text is read as YAML (``"[hpf, hpi]"``), ``null`` is ``[]``, one value a list of one.

Each refusal is a ``PydanticCustomError`` of type ``hr_type`` / ``hr_rule`` whose context ``must`` completes
"config key 'section.key' ... must ...": :mod:`.messages` turns it into the one-line UserError.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, Callable, Literal, Sequence

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from .choices import registered

TYPE_ERROR, RULE_ERROR = "hr_type", "hr_rule"


def refuse(kind: str, must: str, hint: str = "", **got: Any) -> PydanticCustomError:
    """The error a validator raises: ``must`` completes "config key 'x' must ..." (``hint``: did you mean; ``got``:
    the value to show when not the one given, e.g. the number a text was read as)."""
    return PydanticCustomError(kind, "must {must}", {"must": must, "hint": hint, **got})


_INT = re.compile(r"\s*[-+]?\d+\s*")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    raise refuse(TYPE_ERROR, "be an integer")


def to_float(value: Any) -> float:
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise refuse(TYPE_ERROR, "be a number") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise refuse(TYPE_ERROR, "be a finite number")
    return float(number)


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise refuse(TYPE_ERROR, "be true or false")


def to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise refuse(TYPE_ERROR, "be text (put it in quotes)")


def to_list(value: Any) -> list[Any]:
    if isinstance(value, str):  # command line (or a YAML string): parse as YAML
        import yaml

        try:
            value = yaml.safe_load(value) if value.strip() else []
        except yaml.YAMLError:
            raise refuse(TYPE_ERROR, "be a list such as [a, b]") from None
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


Int = Annotated[int, BeforeValidator(to_int)]
Float = Annotated[float, BeforeValidator(to_float)]
def bool_or_auto(value: Any) -> bool | str:
    """A ``Bool`` or the text ``auto`` (a key whose value a run decides from its data, e.g. model.camera_bn)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return to_bool(value)
    except PydanticCustomError:
        raise refuse(RULE_ERROR, "be true, false or auto", did_you_mean(value, ["auto", "true", "false"]),
                     got=value) from None


Bool = Annotated[bool, BeforeValidator(to_bool)]
BoolOrAuto = Annotated[bool | Literal["auto"], BeforeValidator(bool_or_auto)]
Str = Annotated[str, BeforeValidator(to_str)]
ListOf = BeforeValidator(to_list)  # List[T] = Annotated[list[T], ListOf]


def did_you_mean(value: Any, choices: Sequence[Any]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
    return f". Did you mean '{close[0]}'?" if close else ""


def rule(check: Callable[[Any], bool], must: str) -> AfterValidator:
    """A rule on the (already typed) value that bounds and choices cannot say: ``must`` when ``check`` fails."""
    def validate(value: Any) -> Any:
        if not check(value):
            raise refuse(RULE_ERROR, must, got=value)
        return value
    return AfterValidator(validate)


def from_registry(key: str, many: bool = False) -> AfterValidator:
    """One of the names the registry of ``key`` holds when the value is checked (``many``: a list of distinct
    names). The registry fills them when it is imported (:mod:`.choices`)."""
    names = registered(key)

    def validate(value: Any) -> Any:
        valid = names()
        if not many:
            if value not in valid:
                must = "be " + (str(valid[0]) if len(valid) == 1 else "one of " + ", ".join(map(str, valid)))
                raise refuse(RULE_ERROR, must, did_you_mean(value, valid), got=value)
        elif any(v not in valid for v in value) or len(set(value)) != len(value):
            wrong = next((v for v in value if v not in valid), None)
            raise refuse(RULE_ERROR, f"be a list of distinct names from: {', '.join(map(str, valid))}",
                         did_you_mean(wrong, valid), got=value)
        return value
    return AfterValidator(validate)


def pairs_ok(schedule: list[list[float]]) -> bool:
    return all(len(e) == 2 and e[0] >= 0 and float(e[0]).is_integer() and e[1] >= 0 for e in schedule)


def increasing(values: list[Any]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def camera_regex(value: str) -> bool:
    try:
        return not value or re.compile(value).groups >= 1
    except re.error:
        return False


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes


def compile_mode(value: Any) -> bool | str:
    """train.compile: false (eager), true (= ``default``) or a mode of torch.compile; the text true/false, yes/no,
    on/off, 1/0 as for ``Bool``."""
    if isinstance(value, bool):
        return "default" if value else False
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE + _FALSE:
            return "default" if text in _TRUE else False
        if text in COMPILE_MODES:
            return text
    raise refuse(RULE_ERROR, f"be false, true or a torch.compile mode ({', '.join(COMPILE_MODES)})",
                 did_you_mean(value, COMPILE_MODES), got=value)


def eps_value(value: Any) -> float | str:
    """cluster.eps: a DBSCAN radius in (0, 1) on Jaccard distances, or ``auto`` (set each epoch)."""
    must = "be a number in (0, 1) or auto"
    if value == "auto":
        return value
    try:
        number = to_float(value)
    except PydanticCustomError:
        if value is None or isinstance(value, str):
            raise refuse(RULE_ERROR, must, did_you_mean(value, ["auto"]), got=value or "") from None
        raise refuse(TYPE_ERROR, must) from None
    if not 0 < number < 1:
        raise refuse(RULE_ERROR, must, got=number)
    return number
