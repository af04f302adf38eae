"""Label-free diagnostics of a pseudo-label partition, and the collapse warning.

Everything here reads the cluster labels (-1 = outlier) and the camera of each
image only, never the true identities, so it works on a user's unlabelled data:

* ``largest_to_median``: size of the largest cluster over the median cluster size;
* ``single_camera_share``: share of the clusters whose members all come from one
  camera (``None`` when the data set has a single camera: then it means nothing);
* ``large_cluster_share``: share of *all* images (outliers included in the count)
  that sit in clusters larger than ``size_limit``.  The trainer sets
  ``size_limit = cluster.large_cluster_factor x cluster.min_samples`` (25 x 4 =
  100 images by default): min_samples is the smallest group DBSCAN calls a
  cluster, and 100 images is 3-10 times the mean identity of the public person
  re-ID training sets (CUHK03-NP 9.6, Market-1501 17.2, DukeMTMC-reID 23.5,
  MSMT17 31.3 images per identity), so a share of images in such clusters means
  merged people rather than one person seen often;
* ``partition_ari``: adjusted Rand index between this epoch's partition and the
  previous epoch's (``None`` at the first epoch).  Every outlier counts as a
  cluster of its own in both partitions, so an image that moves between a
  cluster and the outliers counts as a change.

``collapse_reasons`` turns the diagnostics into the reasons for the collapse
warning (giant clusters, or clusters that group one camera only) with the
thresholds of the config (``cluster.warn_large_share``,
``cluster.warn_single_camera_share``); ``collapse_warning`` writes the one log
line with what to try.  ``score_decline_warning`` reads a finished run's history: the line that says the
model ended worse than at its first evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "ClusterDiagnostics",
    "cluster_diagnostics",
    "collapse_reasons",
    "collapse_warning",
    "large_cluster_share",
    "largest_to_median",
    "partition_ari",
    "score_decline_warning",
    "single_camera_share",
]


def _sizes(labels: np.ndarray) -> np.ndarray:
    clustered = labels[labels >= 0]
    return np.unique(clustered, return_counts=True)[1] if clustered.size else np.zeros(0, dtype=np.int64)


def largest_to_median(labels: np.ndarray) -> float | None:
    """Largest cluster size / median cluster size (None without clusters)."""
    sizes = _sizes(np.asarray(labels))
    return float(sizes.max() / np.median(sizes)) if sizes.size else None


def single_camera_share(labels: np.ndarray, camids: np.ndarray) -> float | None:
    """Share of the clusters whose images all come from one camera; None without clusters or with one camera."""
    labels, camids = np.asarray(labels), np.asarray(camids)
    if labels.shape != camids.shape:
        raise ValueError(f"labels {labels.shape} and camids {camids.shape} differ in shape")
    keep = labels >= 0
    if not keep.any() or np.unique(camids).size < 2:
        return None
    pairs = np.unique(np.stack([labels[keep], camids[keep]]), axis=1)  # distinct (cluster, camera) pairs
    cameras_per_cluster = np.bincount(pairs[0])
    cameras_per_cluster = cameras_per_cluster[cameras_per_cluster > 0]
    return float((cameras_per_cluster == 1).mean())


def large_cluster_share(labels: np.ndarray, size_limit: float) -> float:
    """Share of all images (outliers counted) in clusters with more than ``size_limit`` images."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    sizes = _sizes(labels)
    return float(sizes[sizes > size_limit].sum() / labels.size)


def _outliers_as_singletons(labels: np.ndarray) -> np.ndarray:
    out = np.asarray(labels, dtype=np.int64).copy()
    alone = out < 0
    out[alone] = out.max(initial=-1) + 1 + np.arange(alone.sum())
    return out


def partition_ari(labels: np.ndarray, previous: np.ndarray | None) -> float | None:
    """Adjusted Rand index between two partitions of the same images, each outlier its own cluster (None: no previous)."""
    if previous is None:
        return None
    labels, previous = np.asarray(labels), np.asarray(previous)
    if labels.shape != previous.shape:
        raise ValueError(f"the two partitions cover different images: {labels.shape} vs {previous.shape}")
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(_outliers_as_singletons(previous), _outliers_as_singletons(labels)))


@dataclass
class ClusterDiagnostics:
    """The label-free diagnostics of one epoch's pseudo labels (module docstring)."""

    largest_to_median: float | None
    single_camera_share: float | None
    large_cluster_share: float
    size_limit: float
    partition_ari: float | None

    def text(self) -> str:
        """For the epoch's log line, e.g. ``largest/median 14.8, one-camera clusters 98%, ...``."""
        def num(x: float | None, spec: str) -> str:
            return "-" if x is None else format(x, spec)

        return (f"largest/median {num(self.largest_to_median, '.1f')}, one-camera clusters "
                f"{num(None if self.single_camera_share is None else 100 * self.single_camera_share, '.0f')}%, "
                f"images in clusters > {self.size_limit:g} {100 * self.large_cluster_share:.0f}%, "
                f"ARI vs last epoch {num(self.partition_ari, '.3f')}")

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def cluster_diagnostics(labels: np.ndarray, camids: np.ndarray, previous: np.ndarray | None = None,
                        size_limit: float = 100.0) -> ClusterDiagnostics:
    """All diagnostics of ``labels`` (-1 = outlier) given each image's camera and the previous epoch's labels."""
    labels = np.asarray(labels)
    return ClusterDiagnostics(
        largest_to_median=largest_to_median(labels),
        single_camera_share=single_camera_share(labels, camids),
        large_cluster_share=large_cluster_share(labels, size_limit),
        size_limit=float(size_limit),
        partition_ari=partition_ari(labels, previous),
    )


def collapse_reasons(diag: ClusterDiagnostics, warn_large_share: float = 0.2,
                     warn_single_camera_share: float = 0.9) -> dict[str, str]:
    """Why the partition looks collapsed, by kind (``large_clusters``, ``one_camera``); empty: it does not."""
    reasons = {}
    if diag.large_cluster_share > warn_large_share:
        reasons["large_clusters"] = (f"{100 * diag.large_cluster_share:.0f}% of the images are in clusters of more "
                                     f"than {diag.size_limit:g} images (cluster.warn_large_share={warn_large_share:g})")
    if diag.single_camera_share is not None and diag.single_camera_share > warn_single_camera_share:
        reasons["one_camera"] = (f"{100 * diag.single_camera_share:.0f}% of the clusters hold images of one camera "
                                 f"only (cluster.warn_single_camera_share={warn_single_camera_share:g})")
    return reasons


def collapse_warning(reasons: dict[str, str], eps: float | None = None, min_samples: int | None = None,
                     jaccard: str | None = None) -> str:
    """One log line: what the diagnostics show and which config keys to try (``eps``: the DBSCAN radius used,
    ``min_samples``: cluster.min_samples, ``jaccard``: the distance the labels came from, standard or
    camera_aware).  The advice follows benchmarks/README.md: the camera matrix (issue 26: on CUHK03 the
    camera-aware distance with camera BatchNorm cut one-camera clusters from 99 % to 5 % and raised mAP from 9.8
    to 14.2), then the robustness table (on data with few images per person, min_samples 2 and a camera-aware loss
    lost least, or gained)."""
    tries = []
    if "large_clusters" in reasons or "one_cluster" in reasons:
        tries += [f"a lower cluster.eps (now {eps:.3g})" if eps is not None else "a lower cluster.eps",
                  "cluster.algorithm=hdbscan"]
    if "one_camera" in reasons:
        if jaccard != "camera_aware":
            tries += ["camera-aware pseudo labels (cluster.jaccard=camera_aware model.camera_bn=true, or both auto as "
                      "in the CPU configs)"]
        tries += ["a camera-aware loss (method.hard_samples=[camera_proxy])", "cluster.camera_normalize=mean"]
    if min_samples is None or min_samples > 2:
        tries += ["cluster.min_samples=2 if each person has few images"]
    return ("pseudo labels look collapsed: " + "; ".join(reasons.values()) + ". Training on them can make the model "
            "worse; try " + ", ".join(tries) + " (configs/cluster_contrast/cpu_mobilenet.yaml has min_samples 2 and "
            "camera_proxy; README: pseudo labels on small or camera-biased data)")


def score_decline_warning(history: list[dict], metric: str = "mAP", start: dict | None = None) -> str | None:
    """The end-of-training line when the last evaluated score is below where training started, else None.

    ``start``: the scores of the model before epoch 1 (``train.eval_at_start``); without it the first evaluated
    epoch stands in for the start.  Names both scores, the best epoch (which best.pth holds) and the epochs whose
    pseudo labels looked collapsed, so that a user sees that training made the model worse and where to look; when
    no trained epoch beat the start, it says so (the weights training started from are then the better model).
    Rows without ``metric`` (epochs that were not evaluated) are skipped; fewer than two scores say nothing.
    """
    scored = [row for row in history if row.get(metric) is not None]
    start_scored = start is not None and start.get(metric) is not None
    first = start if start_scored else (scored[0] if scored else None)
    if first is None or not scored or first is scored[-1] or scored[-1][metric] >= first[metric]:
        return None
    last = scored[-1]
    best = max(scored, key=lambda row: row[metric])
    collapsed = [str(row["epoch"]) for row in history if row.get("collapse_warning")]
    why = (f"; the pseudo labels looked collapsed at epoch(s) {','.join(collapsed)}" if collapsed else
           "; the collapse diagnostics stayed below their thresholds (see the pseudo-label lines of the log)")
    when = "before training" if first.get("epoch") == 0 else f"after epoch {first['epoch']}"
    kept = (f"best.pth holds epoch {best['epoch']} ({metric} {best[metric]:.1f})" if best[metric] > first[metric] else
            f"no epoch beat the start: best.pth holds epoch {best['epoch']} ({metric} {best[metric]:.1f}), the "
            "weights training started from score higher")
    if not start_scored:  # the untrained model was not scored: say what was measured, not more
        return (f"the score fell during training: {metric} {first[metric]:.1f} {when}, {last[metric]:.1f} after epoch "
                f"{last['epoch']} (the model before training was not scored: train.eval_at_start=true compares with "
                f"it){why}. {kept} (README: pseudo labels on small or camera-biased data)")
    return (f"training made the model worse: {metric} {first[metric]:.1f} {when}, {last[metric]:.1f} after epoch "
            f"{last['epoch']}{why}. {kept} (README: pseudo labels on small or camera-biased data)")
