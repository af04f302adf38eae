"""SIGTERM handled as Ctrl-C: what cluster schedulers send before they kill a job.

Inside :func:`terminate_as_interrupt`, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main
thread, so it unwinds exactly as Ctrl-C does: a checkpoint being written is abandoned and its temporary file
removed (the previous checkpoint stays), and the command line exits with a message and code 143 (130 for
Ctrl-C). The run continues with ``--resume``.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGINT_EXIT = 128 + signal.SIGINT  # 130
SIGTERM_EXIT = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


_received: list[int] = []


def sigterm_received() -> bool:
    """True once SIGTERM arrived inside :func:`terminate_as_interrupt`: an error raised while unwinding (e.g.
    a DataLoader worker that the same SIGTERM killed first) is part of the termination, not a new problem."""
    return bool(_received)


def _raise_terminated(signum: int, frame: object) -> None:
    _received.append(signum)
    raise Terminated()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while inside; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    _received.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
