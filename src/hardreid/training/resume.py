"""Resuming a run: what may change, what must match, and keeping best.pth in step with the metrics.

A checkpoint holds the run's full config and what it was trained on (``trained_on``: method and the
identity of the training images). ``--resume`` compares the requested config (the run's config.yaml plus
command-line overrides) with the checkpoint's before anything is written, and refuses any change outside
:data:`RESUMABLE_KEYS`, naming the keys with their old and new values.

:data:`RESUMABLE_KEYS` are the keys that do not change what is trained, only how long, how often it is
evaluated and saved, where and with how many resources:

* ``train.epochs``: train longer (or stop earlier, but not before the epochs already done);
* ``train.eval_every``, ``train.eval_at_start``, ``train.save_every``: when evaluation runs and last.pth is
  written (evaluation forks the random streams, so it never changes training; the start is scored only
  before epoch 1, never on resume);
* ``train.device``, ``data.workers``, ``eval.batch_size``: another machine or other resources (the numbers
  are the same up to the device's rounding; every image's augmentation has a seed of its own, so the number
  of loader workers changes nothing);
* ``model.weights``, ``model.pretrained``: they only initialise epoch 1; a resumed run takes every weight
  from the checkpoint (so a moved ImageNet file does not block resuming);
* ``train.dist_timeout``, ``train.check_ranks``: how long processes wait for each other, a debugging check;
* ``train.compile``, ``train.compile_cache``: how the same network is run (compiled or eager, the same numbers up
  to rounding) and where compiled kernels are cached;
* ``train.bn_chunk`` when the run continues with another number of processes (torchrun) and the new value
  keeps the BatchNorm groups of the checkpoint's (the global batch, its images and random streams are the
  same at any number of processes; see ``Trainer.check_world_change``).

Everything else (method, losses, clustering, data layout and augmentation, optimiser, seed, ...) would
silently turn the run into a mixture of two experiments: start a new run instead.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ..config import Config, config_from_dict
from ..data.types import ReidDataset
from ..errors import UserError
from ..runtime import batchnorm_group
from .checkpoint import load_checkpoint, save_checkpoint
from .run_files import LOG, write_metrics

RESUMABLE_KEYS = frozenset({"train.epochs", "train.eval_every", "train.eval_at_start", "train.save_every",
                            "train.device", "data.workers", "eval.batch_size", "model.weights", "model.pretrained",
                            "train.dist_timeout", "train.check_ranks", "train.compile", "train.compile_cache"})
SHOWN_CHANGES = 6


@dataclass
class Continuation:
    """A checked checkpoint a run continues from: its own last.pth (``resume``) or another run's (a new stage)."""

    path: Path
    state: dict[str, Any]
    resume: bool
    epochs: int  # train.epochs of the continued run
    notes: list[str] = field(default_factory=list)

    def settle(self, run_dir: Path) -> None:
        """Once the run's log is open: log the notes; on resume, rewrite a stale best.pth and the metrics files
        (an epoch a kill cut short is redone)."""
        for note in self.notes:
            LOG.warning("warning: %s", note)
        if not self.resume:
            return
        note = repair_best_checkpoint(self.state, run_dir / "checkpoints" / "best.pth")
        if note:
            LOG.warning("%s", note)
        write_metrics(self.state["history"], run_dir)
        if self.state["epoch"] == self.epochs:
            LOG.info("the run already finished its %d epochs: nothing to train (pass train.epochs=N to train longer)",
                     self.epochs)


RUN_FILES = ("config.yaml", "metrics.json", "metrics.csv", "train.log", "model_info.json", "curves.png", "checkpoints")


def run_files(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` a run folder (any one of them does; an empty checkpoints/ does not)."""
    checkpoints = run_dir / "checkpoints"
    found = [f"checkpoints/{p.name}" for p in sorted(checkpoints.iterdir()) if p.is_file()] if checkpoints.is_dir() else []
    return found + [name for name in RUN_FILES if name != "checkpoints" and (run_dir / name).is_file()]


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def checkpoint_to_continue(run_dir: Path, cfg: Config, dataset: ReidDataset, resume: bool,
                           start_from: str | Path | None) -> Continuation | None:
    """The checkpoint a run continues from, read and checked against ``cfg`` and ``dataset``; None for a new run.
    Raises a UserError (before anything is written) when there is none to resume or it does not fit."""
    last = run_dir / "checkpoints" / "last.pth"
    if resume and not last.is_file():
        found = run_files(run_dir)
        held = f" (it holds {_some(found)} of a run whose last checkpoint is gone)" if found else ""
        raise UserError(f"nothing to resume in {run_dir}: {last} does not exist{held}; start a new run in another "
                        "--output, or pass the --output of an existing run")
    if not resume:
        found = run_files(run_dir)
        if last.is_file():
            raise UserError(f"{run_dir} already holds a run ({last}); pass --resume to continue it or choose another --output")
        if found:
            raise UserError(f"{run_dir} holds the files of an earlier run ({_some(found)}) but no "
                            "checkpoints/last.pth to continue from: choose another --output (hardreid will not replace "
                            "that run's files)")
    path = last if resume else (Path(start_from) if start_from is not None else None)
    if path is None:
        return None
    state = load_checkpoint(path)
    notes = check_resume(state, cfg, dataset, path, any_config=not resume)
    return Continuation(path, state, resume, cfg.train.epochs, notes)


CONTENT_SAMPLE = 64  # training images whose bytes are hashed (evenly spaced in name order)


def training_data_identity(dataset: ReidDataset) -> dict[str, Any]:
    """Name, number and hashes of the training images: of the sorted file names (relative to the data set root),
    of every file's size, and of the bytes of an evenly spaced sample of CONTENT_SAMPLE files. Other pixels under
    the same names change the sizes or the sample's hash (checked when a run resumes); at 100k images this
    costs one ``stat`` per file and 64 small reads."""
    paths = sorted((os.path.relpath(s.path, dataset.root), s.path) for s in dataset.train)
    return {"name": dataset.name, "train_images": len(paths), **_fingerprint(tuple(paths))}


@functools.lru_cache(maxsize=4)
def _fingerprint(paths: tuple[tuple[str, str], ...]) -> dict[str, str]:
    names = hashlib.sha1("\n".join(name for name, _ in paths).encode("utf-8"))
    sizes, content = hashlib.sha1(), hashlib.sha1()
    step = max(1, -(-len(paths) // CONTENT_SAMPLE))
    try:
        for index, (_, path) in enumerate(paths):
            sizes.update(f"{os.stat(path).st_size}\n".encode())
            if index % step == 0:
                with open(path, "rb") as handle:
                    content.update(hashlib.sha1(handle.read()).digest())
    except OSError as exc:
        raise UserError(f"cannot read training image {exc.filename}: {exc.strerror or exc}") from None
    return {"train_names_sha1": names.hexdigest(), "train_sizes_sha1": sizes.hexdigest(),
            "train_content_sha1": content.hexdigest()}


def trained_on(cfg: Config, dataset: ReidDataset) -> dict[str, Any]:
    """What a checkpoint was trained on: the method and the training images."""
    return {"method": cfg.method.base, "hard_samples": list(cfg.method.hard_samples),
            "data": training_data_identity(dataset)}


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (old, new)`` for every key whose value differs."""
    a, b = old.to_dict(), new.to_dict()
    return {f"{section}.{key}": (a[section][key], b[section][key])
            for section in a for key in a[section] if a[section][key] != b[section][key]}


def check_resume(state: dict[str, Any], cfg: Config, dataset: ReidDataset, path: Path,
                 any_config: bool = False) -> list[str]:
    """Refuse to continue ``state`` (read from ``path``) with ``cfg`` on ``dataset`` when they do not fit.

    ``any_config``: the run starts from another run's checkpoint as a new stage (``train(start_from=...)``):
    the config may differ, the training images must not. Returns notes worth logging.
    """
    saved = config_from_dict(state.get("config"), f"the config stored in checkpoint {path}")
    if not any_config:
        refused = {k: v for k, v in config_changes(saved, cfg).items()
                   if k not in RESUMABLE_KEYS and not (k == "train.bn_chunk" and same_batchnorm_groups(saved, cfg, state))}
        if refused:
            shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:SHOWN_CHANGES])
            more = f"; and {len(refused) - SHOWN_CHANGES} more" if len(refused) > SHOWN_CHANGES else ""
            raise UserError(f"cannot resume from {path}: the requested config differs from the checkpoint's in "
                            f"{shown}{more}. Only {', '.join(sorted(RESUMABLE_KEYS))} may change when resuming; "
                            "undo the other changes, or start a new run with another --output")
        done = int(state.get("epoch", 0))
        if cfg.train.epochs < done:
            raise UserError(f"cannot resume from {path} with train.epochs={cfg.train.epochs}: the run has already "
                            f"trained {done} epochs; pass train.epochs={done} or more")
    recorded = (state.get("trained_on") or {}).get("data")
    if recorded is None:
        return [f"{path} does not record its training images (an older checkpoint): not checked"]
    ours = training_data_identity(dataset)
    if (recorded["train_images"], recorded["train_names_sha1"]) != (ours["train_images"], ours["train_names_sha1"]):
        raise UserError(f"checkpoint {path} was trained on {recorded['train_images']} training images of data set "
                        f"'{recorded['name']}', but {dataset.root} holds {ours['train_images']} training images "
                        f"of '{ours['name']}'{' with other file names' if recorded['train_images'] == ours['train_images'] else ''}; "
                        "pass the --data-root the run was trained on")
    if "train_content_sha1" not in recorded:
        return [f"{path} records the names of its training images but not their contents (an older checkpoint): "
                "the pixels were not checked"]
    if (recorded["train_sizes_sha1"], recorded["train_content_sha1"]) != (ours["train_sizes_sha1"], ours["train_content_sha1"]):
        raise UserError(f"checkpoint {path} was trained on other pixels: {dataset.root} holds training images with the "
                        "same names but other contents (file sizes or sampled bytes differ). Resuming would mix two data "
                        "sets; start a new run with another --output")
    return []


def same_batchnorm_groups(saved: Config, cfg: Config, state: dict[str, Any]) -> bool:
    """With this run's number of processes, ``cfg`` normalises BatchNorm over the groups the checkpoint's run did."""
    return batchnorm_group(saved, int(state.get("world_size", 1))) == batchnorm_group(cfg, distributed.world_size())


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch best.pth should hold: the first with the highest mAP (None when nothing was evaluated)."""
    best, epoch = -1.0, None
    for row in history:
        if "mAP" in row and row["mAP"] > best:
            best, epoch = row["mAP"], row["epoch"]
    return epoch


def repair_best_checkpoint(state: dict[str, Any], best_path: Path) -> str | None:
    """Rewrite ``best_path`` from ``state`` (last.pth) when a kill left it behind the metrics.

    The trainer writes last.pth before best.pth, and always both when the mAP improved, so a best.pth older
    than the best epoch of last.pth's history can only mean a kill between the two writes, and then last.pth
    holds exactly that epoch. Returns a note for the log when something was done or is wrong.
    """
    wanted = best_epoch(state.get("history", []))
    if wanted is None:
        return None
    held = _epoch_of(best_path)
    if held == wanted:
        return None
    if wanted == state.get("epoch"):
        save_checkpoint({k: v for k, v in state.items() if k != "format"}, best_path)
        return f"rewrote {best_path} with epoch {wanted} (it held {held or 'nothing'}; the run was stopped while saving)"
    return (f"{best_path} holds epoch {held} but the metrics say epoch {wanted} was best, and its weights are "
            "no longer available; best.pth is left as it is")


def _epoch_of(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return int(load_checkpoint(path).get("epoch", -1))
    except UserError:  # damaged: treat as missing
        return None
