"""Score a model on a data set's query / gallery splits."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..config import ClusterConfig, DataConfig, EvalConfig
from ..data.transforms import eval_transform
from ..data.types import ReidDataset
from ..errors import UserError
from .camera_bn import extract_model_features
from .ranking import RankingResult, evaluate_ranking
from .rerank import RERANK_MODES, camera_aware_re_ranking, re_ranking


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of unit vectors, 2 - 2 a.b (same ranking as cosine distance)."""
    return (2.0 - 2.0 * (a @ b.t())).clamp_(min=0.0)


def check_evaluable(dataset: ReidDataset) -> int:
    """Number of queries that can be scored (a gallery image of the same identity in another camera);
    a UserError when the splits are empty or no query can be scored. Reads no image."""
    from ..data.inspect import unmatched_queries

    if not dataset.query or not dataset.gallery:
        raise UserError(f"data set at {dataset.root} has no query or gallery images to evaluate on "
                        f"(query {len(dataset.query)}, gallery {len(dataset.gallery)})")
    scored = len(dataset.query) - len(unmatched_queries(dataset.query, dataset.gallery))
    if scored == 0:
        raise UserError(f"no query of {dataset.root} has a gallery image of the same identity from another camera "
                        f"({len(dataset.query)} queries, {len(dataset.gallery)} gallery images), so nothing can be "
                        "scored: check the query/gallery folders and the identity and camera numbers in the file names "
                        "(hardreid datasets inspect shows them)")
    return scored


def query_gallery_features(model: nn.Module, dataset: ReidDataset, data_cfg: DataConfig, eval_cfg: EvalConfig,
                           device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the query and of the gallery images (shared by the processes; call it on every one)."""
    check_evaluable(dataset)
    transform = eval_transform(data_cfg)
    kwargs = dict(batch_size=eval_cfg.batch_size, workers=data_cfg.workers, device=device, flip=eval_cfg.flip)
    qf = extract_model_features(model, dataset.query, transform, desc="query features", **kwargs)
    gf = extract_model_features(model, dataset.gallery, transform, desc="gallery features", **kwargs)
    return qf, gf


def rerank_mode(rerank: bool | str | None) -> str | None:
    """The re-ranking asked for: None (none), ``standard`` (also ``True``) or ``camera_aware``; UserError else."""
    if rerank is None or rerank is False:
        return None
    if rerank is True:
        return "standard"
    if rerank in RERANK_MODES:
        return str(rerank)
    raise UserError(f"unknown re-ranking {rerank!r}; choose one of {', '.join(RERANK_MODES)}")


def feature_distances(qf: torch.Tensor, gf: torch.Tensor, rerank: bool | str | None,
                      cameras: tuple[np.ndarray, np.ndarray] | None = None,
                      cluster_cfg: ClusterConfig | None = None) -> torch.Tensor:
    """Query x gallery distances: squared Euclidean of unit features, or re-ranked (``rerank_mode``).

    ``camera_aware`` needs ``cameras`` (query and gallery camera ids) and takes its neighbour counts from
    ``cluster_cfg`` (default: the paper's).
    """
    mode = rerank_mode(rerank)
    dist = squared_distance(qf, gf)
    if mode == "standard":
        dist = torch.as_tensor(re_ranking(dist.numpy(), squared_distance(qf, qf).numpy(), squared_distance(gf, gf).numpy()))
    elif mode == "camera_aware":
        if cameras is None:
            raise UserError("camera-aware re-ranking needs the camera of every query and gallery image")
        c = ClusterConfig() if cluster_cfg is None else cluster_cfg
        dist = torch.as_tensor(camera_aware_re_ranking(
            dist.numpy(), squared_distance(qf, qf).numpy(), squared_distance(gf, gf).numpy(), *cameras,
            k1_intra=c.k1_intra, k1_inter=c.k1_inter, k2_intra=c.k2_intra, k2_inter=c.k2_inter))
    return dist


def _cameras(dataset: ReidDataset) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s.camid for s in dataset.query]), np.array([s.camid for s in dataset.gallery])


def query_gallery_distances(model: nn.Module, dataset: ReidDataset, data_cfg: DataConfig, eval_cfg: EvalConfig,
                            device: torch.device | str = "cpu", rerank: bool | str | None = None,
                            cluster_cfg: ClusterConfig | None = None) -> torch.Tensor:
    """Query x gallery distances (squared Euclidean of unit features, or re-ranked: ``feature_distances``)."""
    qf, gf = query_gallery_features(model, dataset, data_cfg, eval_cfg, device)
    return feature_distances(qf, gf, eval_cfg.rerank if rerank is None else rerank, _cameras(dataset), cluster_cfg)


def score_distances(dist: torch.Tensor, dataset: ReidDataset, max_rank: int = 10) -> RankingResult:
    """CMC / mAP of a query x gallery distance matrix on the Market-1501 protocol."""
    q_pids = np.array([s.pid for s in dataset.query])
    g_pids = np.array([s.pid for s in dataset.gallery])
    q_cams = np.array([s.camid for s in dataset.query])
    g_cams = np.array([s.camid for s in dataset.gallery])
    return evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max(max_rank, 10))


def evaluate_model(model: nn.Module, dataset: ReidDataset, data_cfg: DataConfig, eval_cfg: EvalConfig,
                   device: torch.device | str = "cpu", rerank: bool | str | None = None,
                   cluster_cfg: ClusterConfig | None = None) -> RankingResult:
    """CMC / mAP of ``model`` on the Market-1501 protocol (optionally re-ranked, flip-averaged).

    Several processes: each extracts its share of the features, rank 0 scores, every process gets the result.
    """
    qf, gf = query_gallery_features(model, dataset, data_cfg, eval_cfg, device)
    rerank = eval_cfg.rerank if rerank is None else rerank
    return distributed.main_then_broadcast(
        lambda: score_distances(feature_distances(qf, gf, rerank, _cameras(dataset), cluster_cfg), dataset,
                                eval_cfg.max_rank))
