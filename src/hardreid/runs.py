"""A training run as the command line, the demo and ``hr.train`` start it: the trainer (``training.train``) handed
the run's reports, ``model_info.json`` (parameters and FLOPs, ``export.info``) and ``curves.png`` (``viz.curves``).

The trainer imports neither ``export/`` nor ``viz/``; it calls what it is handed (``RunHooks``). A library user
who calls ``hardreid.training.train`` directly gets the run without these two files, or hands in hooks of their
own (docs/architecture.md, "Layers").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config
from .data.types import ReidDataset
from .export.info import write_model_info
from .models import ReidModel
from .training.trainer import RunHooks, TrainResult
from .training.trainer import train as train_only
from .viz.curves import plot_training_curves


def write_run_model_info(model: ReidModel, cfg: Config, run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/model_info.json: backbone, input size, parameters, FLOPs (``export.info.model_info``)."""
    return write_model_info(model, cfg, Path(run_dir) / "model_info.json")


def run_hooks() -> RunHooks:
    """The reports every run of the command line writes: model_info.json once the model is built, curves.png
    (accuracy, pseudo labels, diagnostics per epoch) after the last epoch."""
    return RunHooks(model_built=(write_run_model_info,), trained=(plot_training_curves,))


def train(cfg: Config, dataset: ReidDataset, output: str | Path, model: ReidModel | None = None, resume: bool = False,
          log_to_stderr: bool = True, start_from: str | Path | None = None) -> TrainResult:
    """``hardreid.training.train`` with the run's reports (``run_hooks``); the arguments are the same."""
    return train_only(cfg, dataset, output, model=model, resume=resume, log_to_stderr=log_to_stderr,
                      start_from=start_from, hooks=run_hooks())


__all__ = ["run_hooks", "train", "write_run_model_info"]
