"""Camera-aware features for clustering: per-camera statistics removed before the Jaccard distance.

Images of one camera share its illumination, colour cast, background and
viewpoint, so features of *different* people in one camera can be closer than
features of one person in two cameras; the k-reciprocal neighbours then come
from the query's own camera and the clusters group cameras instead of people.
Known answers:

* **Camera-based batch normalisation** (Zhuang et al., "Rethinking the
  distribution gap of person re-identification with camera-based batch
  normalization", ECCV 2020): normalise with each camera's own mean and
  variance, so that every camera's features share one distribution.
  ``camera_normalize(..., "standardize")`` does this on the extracted
  features, per dimension: ``(f - mu_c) / sqrt(var_c + 1e-5)`` (BatchNorm's eps);
  ``"mean"`` only removes each camera's mean ``mu_c``.  Rows are L2-normalised
  before (the features the trainer clusters) and after.
* **IICS** (Xuan & Zhang, "Intra-inter camera similarity for unsupervised
  person re-identification", CVPR 2021) clusters within each camera first and
  measures inter-camera similarity on per-camera classifier scores, which
  removes the distribution gap between cameras; not done here.
* **Camera-aware proxies** (CAP: Wang et al., "Camera-aware proxies for
  unsupervised person re-identification", AAAI 2021; ICE: Chen et al., ICCV
  2021) keep the plain clustering and split every cluster into one proxy per
  camera in the *loss* (hardreid: the ICE base and the ``camera_proxy``
  add-on); they cannot repair clusters that only hold one camera.
* **CA-Jaccard** (Chen et al., "Camera-aware Jaccard distance for person
  re-identification", CVPR 2024) finds the k-reciprocal neighbours on
  intra-camera and inter-camera ranking lists separately so that other-camera
  neighbours always take part; hardreid's simpler counterpart is
  ``cluster.same_camera_penalty`` (``compute_jaccard_distance``).

The statistics are those of the features being clustered (this epoch's), and
only the clustering sees the normalised features: memories and losses keep the
model's own features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hardreid.errors import UserError

__all__ = ["CAMERA_NORMALIZE", "camera_normalize"]

#: Values of ``cluster.camera_normalize``.
CAMERA_NORMALIZE: tuple[str, ...] = ("none", "mean", "standardize")
_BN_EPS = 1e-5


def camera_normalize(features: torch.Tensor, camids: torch.Tensor | np.ndarray, mode: str = "mean") -> torch.Tensor:
    """Features with each camera's mean (``"mean"``) or mean and std (``"standardize"``) removed, L2-normalised.

    ``"none"`` returns ``features`` unchanged. Cameras are the distinct values
    of ``camids`` (one per row of ``features``); with a single camera
    ``"mean"`` is plain centring. Raises UserError for an unknown mode, a
    length mismatch, or a row that becomes zero (an image equal to its
    camera's mean: a camera with one image, or only identical ones).
    """
    if mode not in CAMERA_NORMALIZE:
        raise UserError(f"unknown cluster.camera_normalize {mode!r}; choose one of {', '.join(CAMERA_NORMALIZE)}")
    if mode == "none":
        return features
    cams = torch.as_tensor(np.asarray(camids)).to(features.device)
    if cams.shape != (features.shape[0],):
        raise UserError(f"cluster.camera_normalize needs one camera id per image: {cams.shape[0] if cams.dim() else 0} "
                        f"ids for {features.shape[0]} features")
    f = F.normalize(features.detach().float(), dim=1)
    out = torch.empty_like(f)
    for cam in torch.unique(cams).tolist():
        rows = cams == cam
        x = f[rows] - f[rows].mean(dim=0)
        if mode == "standardize":
            x = x / torch.sqrt(x.pow(2).mean(dim=0) + _BN_EPS)  # biased variance, as BatchNorm
        out[rows] = x
    zero = out.norm(dim=1) == 0
    if bool(zero.any()):
        bad = int(torch.nonzero(zero)[0])
        raise UserError(f"cluster.camera_normalize={mode}: image {bad} equals the mean of its camera {int(cams[bad])} "
                        f"(a camera with a single image, or only identical ones); use cluster.camera_normalize=none")
    return F.normalize(out, dim=1)
