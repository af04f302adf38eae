"""Keys whose value ``auto`` a run decides from its training images' cameras: ``model.camera_bn`` (camera-based
BatchNorm) and ``cluster.jaccard`` (the camera-aware Jaccard distance).

``auto`` turns the camera-aware option on when every training image names its camera and there are two cameras or
more, and off otherwise (a folder of one camera, or images whose names say no camera): the CPU configs' default
(benchmarks/studies/camera_cuhk03/study.yaml's rule chose camera-aware Jaccard + camera BatchNorm), which must not
refuse data it cannot help. The decision is made once, when a run starts (``hardreid.training.trainer.train``), from
the training split, logged in one line and written into the run's config.yaml, so that a checkpoint, ``resume``,
``evaluate`` and ``export`` see ``true`` / ``false`` and ``standard`` / ``camera_aware``, never ``auto``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .schema import Config

__all__ = ["camera_aware_applies", "resolve_camera_keys", "resolve_jaccard"]


def camera_aware_applies(camids: Iterable[int]) -> tuple[bool, str]:
    """Whether camera-aware options apply to images of these cameras, and why (the reason a log line gives)."""
    cams = np.fromiter(camids, dtype=np.int64)
    if cams.size == 0:
        return False, "there are no training images"
    unnamed = int((cams < 0).sum())
    if unnamed:
        return False, f"{unnamed:,} of the {cams.size:,} training images have no camera id"
    count = len(np.unique(cams))
    if count < 2:
        return False, f"all {cams.size:,} training images come from one camera"
    return True, f"the {cams.size:,} training images come from {count} cameras"


def resolve_jaccard(jaccard: str, camids: Iterable[int]) -> str:
    """``cluster.jaccard`` with ``auto`` decided for images of these cameras (other values unchanged)."""
    if jaccard != "auto":
        return jaccard
    return "camera_aware" if camera_aware_applies(camids)[0] else "standard"


def resolve_camera_keys(cfg: Config, camids: Iterable[int]) -> tuple[Config, str]:
    """``cfg`` with ``model.camera_bn`` and ``cluster.jaccard`` ``auto`` decided from the training images' cameras
    ``camids``: a copy when a key was ``auto`` (the caller's config is left as it was), else ``cfg`` itself. Also
    returns the line that says what was decided and why ("" when nothing was ``auto``)."""
    keys = [key for key, value in (("model.camera_bn", cfg.model.camera_bn), ("cluster.jaccard", cfg.cluster.jaccard))
            if value == "auto"]
    if not keys:
        return cfg, ""
    applies, why = camera_aware_applies(camids)
    out = cfg.model_copy(deep=True)
    decided = []
    if "model.camera_bn" in keys:
        out.model.camera_bn = applies
        decided.append(f"model.camera_bn: auto -> {'true' if applies else 'false'}")
    if "cluster.jaccard" in keys:
        out.cluster.jaccard = "camera_aware" if applies else "standard"
        decided.append(f"cluster.jaccard: auto -> {out.cluster.jaccard}")
    return out, f"{', '.join(decided)} ({why})"
