#!/usr/bin/env python3
"""Quick start without anything but Python 3.10+ and pip.

    python3 dev.py demo [hardreid demo options]   # create/reuse .venv, run the demo
    python3 dev.py test [pytest options]          # create/reuse .venv, run the default tests
    python3 dev.py slow                           # the slow tests (real data, longer training)
    python3 dev.py shell                          # print how to activate the environment

The virtual environment lives in .venv (override with HARDREID_VENV); it is
(re)installed when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("HARDREID_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def ensure_env() -> None:
    """Create the venv and install hardreid (editable, with test extras) when needed."""
    stamp = VENV / ".hardreid-installed"
    # Reinstall when the dependencies or the checkout's location change (editable install).
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + str(ROOT).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted and PY.exists():
        return
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing hardreid and its dependencies (first time: PyTorch is large, this takes a few minutes)", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e",
                    f"{ROOT}[dev,search,export,tensorboard,vit]"],
                   check=True)
    stamp.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "slow", "shell"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_env()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if command == "demo":
        return subprocess.call([str(BIN / "hardreid"), "demo", *rest], env=env)
    if command == "test":
        return subprocess.call([str(PY), "-m", "pytest", "-q", *rest], cwd=ROOT, env=env)
    if command == "slow":
        return subprocess.call([str(PY), "-m", "pytest", "-q", "-m", "slow", *rest], cwd=ROOT, env=env)
    print(f"source {BIN / 'activate'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
