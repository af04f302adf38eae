"""The ``hardreid`` parser (one subparser per command module) and ``main``, which runs a command and turns its
errors and interruptions into messages and exit codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ..errors import UserError, clean_message
from ..signals import SIGINT_EXIT, SIGTERM_EXIT, Terminated, sigterm_received, terminate_as_interrupt
from ..version import __version__
from . import configs, datasets, demo, evaluate, export, extract, figures, index, info, search, train
from .common import formatter

#: the command modules, in the order ``hardreid --help`` lists them; each has ``add_parser(subparsers)``
COMMANDS = (train, evaluate, extract, index, search, export, info, configs, figures, demo, datasets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardreid", formatter_class=formatter,
        description="Unsupervised person / vehicle re-identification: train from unlabelled crops, evaluate, search.",
        epilog="examples:\n  hardreid demo\n  hardreid datasets inspect ~/data/Market-1501-v15.09.15\n"
               "  hardreid train --config cluster_contrast/market1501 --data-root ~/data/market --output runs/cc\n"
               "  hardreid evaluate --checkpoint runs/cc/checkpoints/best.pth --data-root ~/data/market --html report.html\n"
               "  hardreid extract --checkpoint runs/cc/checkpoints/best.pth --images ~/crops --output feats\n"
               "  hardreid index --features feats --output gallery\n"
               "  hardreid search --index gallery --query person.jpg --top-k 10 --html hits.html\n"
               "  hardreid export --checkpoint runs/cc/checkpoints/best.pth --format onnx --output model.onnx\n"
               "  hardreid info --config acfl/market1501\n"
               "  hardreid figures --run runs/acfl --data-root ~/data/market\n\n"
               "Run 'hardreid COMMAND --help' for the options of each command.")
    parser.add_argument("--version", action="version", version=f"hardreid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        # `hardreid` or `hardreid datasets` without an action: show the relevant help.
        (parser if args.command is None else parser._subparsers._group_actions[0].choices[args.command]).print_help()
        return 2
    try:
        with terminate_as_interrupt():
            return func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (signals.Terminated)
        terminated = isinstance(exc, Terminated)
        what = "terminated by SIGTERM" if terminated else "interrupted (Ctrl-C)"
        print(f"hardreid {args.command}: {what}{_resume_hint(args)}", file=sys.stderr)
        return SIGTERM_EXIT if terminated else SIGINT_EXIT
    except Exception as exc:  # noqa: BLE001 - sorted below; anything else keeps its traceback
        if sigterm_received():  # e.g. a loader worker the same SIGTERM killed first
            print(f"hardreid {args.command}: terminated by SIGTERM{_resume_hint(args)}", file=sys.stderr)
            return SIGTERM_EXIT
        if isinstance(exc, UserError):
            print(f"hardreid {args.command}: error{_rank_note()}: {clean_message(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):  # the machine, not the input: a full disk, a vanished mount, ...
            print(f"hardreid {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


def _rank_note() -> str:
    """Which process failed, when several run (torchrun)."""
    from .. import distributed

    return f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.world_size() > 1 else ""


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted training run (nothing for other commands)."""
    if args.command != "train" or not (Path(args.output) / "checkpoints" / "last.pth").is_file():
        return ""
    return (f"; checkpoints/last.pth holds the last finished epoch: continue with "
            f"hardreid train --output {args.output} --data-root {args.data_root} --resume")
