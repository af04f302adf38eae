"""``hardreid configs``: the packaged configs."""

from __future__ import annotations

import argparse
import sys

from .common import formatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the configs command to ``sub`` (the subparsers of ``hardreid``)."""
    p = sub.add_parser("configs", help="list the packaged configs (names for --config)", formatter_class=formatter,
                       epilog="examples:\n  hardreid configs\n  hardreid configs acfl/t2")
    p.add_argument("filter", nargs="?", default="", help="show only names containing this text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import CONFIG_DIR, packaged_configs

    names = [n for n in packaged_configs() if args.filter in n]
    print("\n".join(names) if names else f"no packaged config name contains '{args.filter}'")
    print(f"({len(names)} configs in {CONFIG_DIR}; use them as --config NAME, e.g. --config acfl/market1501)", file=sys.stderr)
    return 0
