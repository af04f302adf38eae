"""User-facing errors: raised for mistakes the user can fix, printed without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (files, config, arguments).

    The message must name the offending file or value, say what was expected
    and, where possible, how to fix it. The command line prints it as one
    clear message instead of a traceback.
    """


def clean_message(exc: BaseException) -> str:
    """Message of a UserError, also when it was re-raised from a DataLoader worker.

    PyTorch re-raises worker exceptions as ``type(msg)`` with the worker's
    traceback folded into the message; keep only the original text.
    """
    text = str(exc)
    marker = "UserError: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (e.g. a library's exception) as one line of at most ``limit`` characters: whitespace runs become one
    space, and a longer text is cut with a note of how much was left out."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else f"{flat[:limit]}... ({len(flat) - limit} more characters)"


def printable(text: object) -> str:
    """A path or name as it goes into a one-line message: as it is, or quoted with escapes when it holds a newline
    or another character a terminal would not print (a file may be named so)."""
    import os

    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    return text if text.isprintable() else repr(text)
