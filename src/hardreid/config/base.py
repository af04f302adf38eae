"""The base of every config section: a pydantic model whose errors are one-line UserErrors."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .messages import SOURCE, user_error


class Section(BaseModel):
    """One section of the config (``cfg.train``, ...): typed keys with defaults, checked when built.

    Setting a key in Python (``cfg.train.epochs = 3``) is not checked there and then (``validate_config`` checks the
    whole config before a run starts), as with the dataclasses this replaces.
    """

    model_config = ConfigDict(extra="forbid", validate_default=False, revalidate_instances="never")

    #: the section's name in the config ("train"): the messages name keys "train.epochs".
    section: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise user_error(exc, values, SOURCE.get(), type(self)) from None
