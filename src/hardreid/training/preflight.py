"""Cheap checks of a run's data and output folder, before any work (BatchNorm calibration, extraction,
clustering): a problem that would stop the run after hours stops it at once, with one clear line."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..config.camera_keys import camera_aware_applies
from ..data.types import ReidDataset
from ..errors import UserError
from ..evaluation.pipeline import check_evaluable
from ..files import check_writable_dir
from ..runtime import resolve_device
from ..outputs import refuse_input_overlap


def require_training_images(dataset: ReidDataset) -> None:
    if not dataset.train:
        raise UserError(f"data set at {dataset.root} has no training images (e.g. bounding_box_train/ is missing or "
                        "empty): train needs them; a test-only folder works with evaluate and extract")


def require_cameras(cfg: Config, dataset: ReidDataset) -> None:
    """``model.camera_bn`` normalises each camera's images apart: the training images need 2 cameras or more, each
    image its camera. Refused rather than run as plain BatchNorm: a run asked to be camera-based must not be one
    silently."""
    if not cfg.model.camera_bn:
        return
    if camera_aware_applies(s.camid for s in dataset.train)[0]:  # the rule of model.camera_bn: auto
        return
    cams = {s.camid for s in dataset.train}
    what = "some have no camera" if min(cams) < 0 else f"all come from {len(cams)} camera"
    raise UserError(f"model.camera_bn normalises each camera's images apart, but the training images of "
                    f"{dataset.root} do not say their cameras ({what}): set model.camera_bn=false, or name the "
                    "cameras (a folder: data.camera_pattern)")


def check_before_training(cfg: Config, dataset: ReidDataset, run_dir: Path) -> None:
    """The device exists; the output folder is writable; the training split can fill a P x K batch and a k1
    neighbourhood; when the data set has query and gallery images, at least one query can be scored."""
    resolve_device(cfg.train.device)
    check_writable_dir(run_dir, "output folder")
    refuse_input_overlap(run_dir, "--output", {"--data-root": dataset.root})
    require_training_images(dataset)
    require_cameras(cfg, dataset)
    n, d, c = len(dataset.train), cfg.data, cfg.cluster
    if n < d.batch_size:
        raise UserError(f"the training split of {dataset.root} has {n} images, fewer than one batch of data.batch_size="
                        f"{d.batch_size} ({d.batch_size // d.num_instances} identities x {d.num_instances} images): "
                        "lower data.batch_size (and data.num_instances) or add images")
    if c.k1 >= n:
        raise UserError(f"cluster.k1={c.k1} needs more than k1 training images, {dataset.root} has {n}: "
                        f"lower cluster.k1 (and cluster.k2) below {n}")
    if dataset.query and dataset.gallery:
        check_evaluable(dataset)
