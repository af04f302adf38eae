"""The run directory: log file, per-epoch metrics (CSV + JSON, optionally TensorBoard), atomic checkpoints (see
hardreid.files)."""

from __future__ import annotations

import csv
import io
import json
import math
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..files import atomic_write, atomic_write_text, remove_stale_temp_files

LOG = logging.getLogger("hardreid")

METRIC_COLUMNS = ["epoch", "clusters", "outliers", "loss", "mAP", "top1", "top5", "top10", "seconds"]


def setup_logging(log_file: Path | None = None, verbose: bool = True) -> None:
    """Readable log lines to stderr and, when given, to ``log_file`` (appending, for resume).

    Several processes: rank 0 logs; the others write only errors, to stderr, prefixed with their rank.
    """
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
        handler.close()
    LOG.propagate = False
    if not distributed.is_main():
        LOG.setLevel(logging.ERROR)
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(f"%(asctime)s rank {distributed.rank()}: %(message)s", datefmt="%H:%M:%S"))
        LOG.addHandler(stream)
        return
    LOG.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        LOG.addHandler(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
        LOG.addHandler(file_handler)
    LOG.propagate = False


# Temporary files of earlier versions (mkstemp names); today's are .*.hardreid-tmp (hardreid.files).
OLD_TEMP_FILES = {".": ("metrics.json.tmp", "metrics.csv.tmp"), "checkpoints": ("last.pth.*.tmp", "best.pth.*.tmp")}


def open_run_dir(run_dir: Path, verbose: bool = True) -> None:
    """Create the run directory, remove temporary files a killed run left, log to its train.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder, older in OLD_TEMP_FILES.items():
        remove_stale_temp_files(run_dir / folder, older)
    setup_logging(run_dir / "train.log", verbose=verbose)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path`` (see hardreid.files)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def write_metrics(history: list[dict[str, Any]], run_dir: Path) -> None:
    """``metrics.json`` (everything) and ``metrics.csv`` (the main columns plus any loss terms)."""
    atomic_write_text(run_dir / "metrics.json", json.dumps(history, indent=1))
    extra = sorted({k for row in history for k in row if k not in METRIC_COLUMNS and not isinstance(row[k], (dict, list))})
    columns = METRIC_COLUMNS + extra
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(run_dir / "metrics.csv", table.getvalue())


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else value)


class TensorBoardLog:
    """``train.tensorboard``: each epoch's metrics row as TensorBoard scalars (step = epoch) in RUN_DIR/tensorboard.

    Numbers become scalars named as in metrics.csv (nested ones, e.g. cluster sizes, as
    ``cluster_sizes/<key>``). The writer opens at the first row and drops events of that epoch
    and later ones left by an interrupted run (``purge_step``), so a resumed run has one curve.
    """

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from ..errors import UserError

            raise UserError("train.tensorboard=true needs the tensorboard package: pip install 'hardreid[tensorboard]' "
                            "(or set train.tensorboard=false)") from None
        self._writer_class = SummaryWriter
        self.log_dir = log_dir
        self.writer = None

    def log_epoch(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.log_dir), purge_step=epoch)
        for key, value in _scalars(row):
            self.writer.add_scalar(key, value, global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _scalars(row: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    out = []
    for key, value in row.items():
        if key == "epoch" and not prefix:
            continue
        if isinstance(value, dict):
            out += _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((f"{prefix}{key}", float(value)))
    return out
