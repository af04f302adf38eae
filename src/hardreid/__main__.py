"""``python -m hardreid``: the same as the ``hardreid`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
