"""``python -m hardreid.cli``: the same as the ``hardreid`` command."""

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
