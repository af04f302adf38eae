"""The ``hardreid`` command: a thin layer over the library.

One module per command (``train.py``, ``evaluate.py``, ...: its ``add_parser(subparsers)`` with the options, help text
and examples, and its ``run(args)``); ``common.py`` holds the argument types and groups and the data / model loading
that several commands share; ``app.py`` builds the parser from ``app.COMMANDS`` and runs ``main``. A new command is a
new module with ``add_parser`` and ``run``, listed in ``app.COMMANDS``.
"""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["build_parser", "main"]
