"""Market-1501 style ranking metrics (CMC and mAP), vectorised over query blocks.

Protocol (as torchreid's ``eval_market1501``, plus the junk rule of the
official Market-1501 code):

* for every query, gallery entries with the same pid *and* the same camera
  are removed, and so are gallery entries with pid ``-1`` (junk);
  pid ``0`` is an ordinary identity (Market's distractors);
* queries left without any true match are skipped (not counted);
* CMC is multi-shot: ``cmc[r-1]`` is the share of valid queries with a true
  match among the first ``r`` kept gallery entries (no single-gallery-shot
  sampling);
* AP is the mean, over the true matches, of the precision at each hit in the
  kept ranked list.

Ties: the gallery is ranked by ``(distance, gallery index)``, i.e. a stable
sort of the distances, so equal distances keep gallery order. This makes the
result deterministic and independent of ``block_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch

from hardreid.errors import UserError

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int]]

#: Ranks reported by :meth:`RankingResult.to_dict` (those <= ``max_rank``).
REPORTED_RANKS: tuple[int, ...] = (1, 5, 10, 20, 50)

#: Elements of the hits gathered at once to locate the candidates (bounds the extra memory of a block).
_CHUNK_ELEMENTS = 1 << 22

#: Above this share of candidates in a block (kept non-matches not farther than their query's last true match), the
#: whole block is located at once instead of candidate by candidate (one thread, 768 x 15,913 Market-like blocks,
#: loaded machine: 0.23 s against 0.42 s at a share of 0.09 (mAP 66), even near 0.25, 0.97 s against 0.54 s at 0.63).
_DENSE_SHARE = 0.25


@dataclass
class RankingResult:
    """CMC curve and mAP of one query/gallery evaluation.

    One unit everywhere: **percent** (0-100), as in logs, ``metrics.csv`` and
    ``--json``. ``cmc[r-1]`` is the rank-``r`` accuracy and ``mAP`` the mean
    average precision over the valid queries (those with at least one
    cross-camera true match). ``all_ap`` holds the AP (percent) of each valid
    query in query order; ``valid_query`` marks which queries were counted.
    """

    cmc: np.ndarray
    mAP: float
    num_valid_queries: int
    all_ap: np.ndarray
    num_query: int = 0
    num_gallery: int = 0
    valid_query: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def max_rank(self) -> int:
        return int(len(self.cmc))

    def rank(self, r: int) -> float:
        """Rank-``r`` accuracy (percent), ``1 <= r <= max_rank``."""
        if not 1 <= r <= self.max_rank:
            raise ValueError(f"rank must be in [1, {self.max_rank}], got {r}")
        return float(self.cmc[r - 1])

    def to_dict(self) -> dict[str, Any]:
        """Plain summary (percent): mAP, CMC at ranks 1/5/10/20/50 (those <= max_rank), counts."""
        ranks = [r for r in REPORTED_RANKS if r <= self.max_rank]
        return {
            "mAP": float(self.mAP),
            "cmc": {str(r): float(self.cmc[r - 1]) for r in ranks},
            "num_query": int(self.num_query),
            "num_valid_query": int(self.num_valid_queries),
            "num_gallery": int(self.num_gallery),
            "max_rank": self.max_rank,
        }


def _as_long_tensor(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or (t.is_floating_point() and not bool((t == t.round()).all())):
        raise ValueError(f"{name} must hold integer ids, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def _as_dist_tensor(distmat: np.ndarray | torch.Tensor) -> torch.Tensor:
    d = distmat if isinstance(distmat, torch.Tensor) else torch.from_numpy(np.asarray(distmat))
    if d.dim() != 2:
        raise ValueError(f"distmat must be 2-D (query x gallery), got shape {tuple(d.shape)}")
    return d.detach()


def evaluate_ranking(
    distmat: np.ndarray | torch.Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 10,
    block_size: int = 256,
) -> RankingResult:
    """CMC and mAP under the Market-1501 protocol (see module docstring).

    ``distmat`` is query x gallery (numpy or torch, on any device; smaller =
    more similar). Queries are processed ``block_size`` at a time, so besides
    the input only O(block_size x num_gallery) memory is used. The returned
    ``cmc`` always has ``max_rank`` entries (it saturates once the kept list
    is exhausted). Raises :class:`~hardreid.errors.UserError` if no query has a
    cross-camera match in the gallery, or if ``distmat`` holds NaN.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    d = _as_dist_tensor(distmat)
    device = d.device
    num_q, num_g = d.shape
    qp = _as_long_tensor(q_pids, "q_pids", device)
    gp = _as_long_tensor(g_pids, "g_pids", device)
    qc = _as_long_tensor(q_camids, "q_camids", device)
    gc = _as_long_tensor(g_camids, "g_camids", device)
    if len(qp) != num_q or len(qc) != num_q:
        raise ValueError(
            f"distmat has {num_q} query rows but q_pids/q_camids have {len(qp)}/{len(qc)} entries"
        )
    if len(gp) != num_g or len(gc) != num_g:
        raise ValueError(
            f"distmat has {num_g} gallery columns but g_pids/g_camids have {len(gp)}/{len(gc)} entries"
        )

    first_hit = torch.empty(num_q, dtype=torch.long, device=device)  # kept rank of first true match
    ap = torch.zeros(num_q, dtype=torch.float64, device=device)
    valid = torch.zeros(num_q, dtype=torch.bool, device=device)
    for start in range(0, num_q, block_size):
        stop = min(start + block_size, num_q)
        block = d[start:stop]
        if block.dtype not in (torch.float32, torch.float64):
            # integers: exact in float64; float16/bfloat16: order-preserving upcast
            block = block.to(torch.float32 if block.is_floating_point() else torch.float64)
        block = block.contiguous()
        if block.numel() > 0 and bool(torch.isnan(block.amax())):  # amax propagates NaN (one pass, vectorised)
            raise UserError(
                "The query-gallery distance matrix contains NaN values "
                f"(query rows {start}..{stop - 1}); check the extracted features for NaN/inf."
            )
        fh, blk_ap, ok = _rank_block(block, qp[start:stop], qc[start:stop], gp, gc)
        first_hit[start:stop] = fh
        ap[start:stop] = blk_ap
        valid[start:stop] = ok

    num_valid = int(valid.sum())
    if num_valid == 0:
        raise UserError(
            f"No query has a cross-camera match in the gallery ({num_q} queries, {num_g} gallery "
            "images): under the Market-1501 protocol gallery images with the query's pid and camera, "
            "and junk images (pid -1), are ignored. Check that query and gallery pids/camids are "
            "loaded correctly and that the gallery holds the query identities from other cameras."
        )
    fh = first_hit[valid]
    ranks = torch.arange(1, max_rank + 1, device=device)
    cmc = (fh[None, :] <= ranks[:, None]).sum(dim=1).to(torch.float64) / num_valid
    all_ap = ap[valid].cpu().numpy()
    return RankingResult(  # fractions -> percent (RankingResult's one unit)
        cmc=100.0 * cmc.cpu().numpy(),
        mAP=100.0 * float(all_ap.mean()),
        num_valid_queries=num_valid,
        all_ap=100.0 * all_ap,
        num_query=int(num_q),
        num_gallery=int(num_g),
        valid_query=valid.cpu().numpy(),
    )


def _rank_block(
    block: torch.Tensor, qp: torch.Tensor, qc: torch.Tensor, gp: torch.Tensor, gc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-hit rank, AP and validity for one block of queries, by counting (no sort of the gallery rows).

    The kept rank of a query's true match ("hit") ``k`` (0-based, in (distance, index) order) is ``k + 1 +`` the
    number of kept non-hits ranked before it. Only the hits are sorted (a few per query); the kept non-hits that
    can precede a hit at all (distance <= the query's last hit's: usually a small share of the row) are picked
    with one comparison, located between consecutive hits with ``searchsorted`` (ties with a hit: by gallery
    index; candidate by candidate, or the whole block at once when they are over ``_DENSE_SHARE`` of it) and
    counted. Precision at each hit, AP and the CMC first-hit rank then equal those of a full stable
    sort, bit for bit (the precisions are the same quotients of the same integers, added in the same order).
    """
    nb, num_g = block.shape
    device = block.device
    flat_block = block.view(-1)
    kept_g = (gp >= 0)[None, :]  # junk (pid -1) is never kept
    match = gp[None, :] == qp[:, None]
    hit = match & (gc[None, :] != qc[:, None]) & kept_g  # true matches: same pid, other camera
    other = ~match & kept_g  # kept entries that are not true matches
    del match
    # Hits as flat indices (row-major: gallery-index order within a row); counted per row without a bool -> long
    # copy of the block.
    flat = hit.view(-1).nonzero()[:, 0]
    del hit
    rows = torch.div(flat, num_g, rounding_mode="floor") if num_g > 0 else flat
    cols = flat - rows * num_g
    nh = torch.bincount(rows, minlength=nb)
    ok = nh > 0
    h_max = int(nh.max()) if nb > 0 and num_g > 0 else 0
    if h_max == 0:
        return (torch.zeros(nb, dtype=torch.long, device=device),
                torch.zeros(nb, dtype=torch.float64, device=device), ok)

    # Hits of each query, padded to h_max: distance +inf and index >= num_g,
    # so pads sort after every real entry (also after real +inf distances).
    offsets = torch.cumsum(nh, 0) - nh
    slot = torch.arange(len(rows), device=device) - offsets[rows]
    hd = torch.full((nb, h_max), float("inf"), dtype=block.dtype, device=device)
    hd[rows, slot] = flat_block.index_select(0, flat)
    hidx = (num_g + torch.arange(h_max, device=device)).expand(nb, h_max).clone()
    hidx[rows, slot] = cols
    hd, perm = torch.sort(hd, dim=1, stable=True)  # by (distance, index); a row's real hits come first
    hidx = torch.gather(hidx, 1, perm)

    # Kept non-hits farther than a query's last hit come after all its hits: they change no rank. The others
    # ("candidates") are few for any useful distance. NaN as the bound of a query without hits selects nothing.
    last = torch.gather(hd, 1, (nh - 1).clamp_min(0)[:, None])
    last = torch.where(ok[:, None], last, torch.full_like(last, float("nan")))
    cand = other & (block <= last)
    del other, last
    # (start of its tie group, gallery index) of each hit: sorted within each row, to place candidates tied with hits
    span = num_g + h_max + 1
    key_h = torch.searchsorted(hd, hd, right=False) * span + hidx
    if int(torch.count_nonzero(cand)) > _DENSE_SHARE * cand.numel():
        counts = _count_dense(block, cand, hd, key_h, span)
    else:
        counts = _count_candidates(flat_block, cand, hd, key_h, span)
    del cand
    before = torch.cumsum(counts, dim=1)[:, :h_max]  # kept non-hits ranked before hit k
    k = torch.arange(h_max, device=device)[None, :]
    rank = before + k + 1  # kept rank (1-based) of hit k
    is_real = k < nh[:, None]
    prec = torch.where(is_real, (k + 1).to(torch.float64) / rank.to(torch.float64), 0.0)
    ap = _sum_in_rank_order(prec) / nh.clamp_min(1).to(torch.float64)
    return rank[:, 0], ap, ok


def _count_candidates(
    flat_block: torch.Tensor, cand: torch.Tensor, hd: torch.Tensor, key_h: torch.Tensor, span: int
) -> torch.Tensor:
    """``counts[i, k]``: candidates of row ``i`` preceded by exactly ``k`` of its hits, the candidates taken one by
    one (flat indices), in chunks of bounded memory. ``b``, the number of hits ranked before a candidate under
    (distance, index), is its ``searchsorted`` position among the row's hits; a candidate ties with some hit iff the
    hit at position ``b`` has the same distance, and then the tied hits with a smaller gallery index also precede
    it: those (rare) candidates are located again by (tie group, index) in ``key_h``."""
    nb, num_g = cand.shape
    h_max = hd.shape[1]
    flat = cand.view(-1).nonzero()[:, 0]
    c_r = torch.div(flat, num_g, rounding_mode="floor")
    c_j = flat - c_r * num_g
    c_d = flat_block.index_select(0, flat)
    del flat
    b = torch.empty(len(c_r), dtype=torch.long, device=cand.device)
    step = max(1, _CHUNK_ELEMENTS // h_max)
    for s in range(0, len(c_r), step):
        r, d = c_r[s:s + step], c_d[s:s + step, None]
        hd_r = hd.index_select(0, r)
        b_r = torch.searchsorted(hd_r, d, right=False)
        tie = (torch.gather(hd_r, 1, b_r.clamp_max(h_max - 1)) == d)[:, 0].nonzero(as_tuple=True)[0]
        if len(tie) > 0:
            key_j = b_r[tie] * span + c_j[s:s + step, None][tie]
            b_r[tie] = torch.searchsorted(key_h.index_select(0, r[tie]), key_j, right=False)
        b[s:s + step] = b_r[:, 0]
        del hd_r, b_r
    return torch.bincount(c_r * (h_max + 1) + b, minlength=nb * (h_max + 1)).view(nb, h_max + 1)


def _count_dense(
    block: torch.Tensor, cand: torch.Tensor, hd: torch.Tensor, key_h: torch.Tensor, span: int
) -> torch.Tensor:
    """As :func:`_count_candidates`, every entry of the block located at once (``searchsorted`` of each row among
    its hits, without gathering): cheaper when most entries are candidates (distances that rank true matches
    no better than chance); only the candidates are counted."""
    nb = block.shape[0]
    h_max = hd.shape[1]
    b = torch.searchsorted(hd, block, right=False)
    tie_r, tie_j = ((torch.gather(hd, 1, b.clamp_max(h_max - 1)) == block) & cand).nonzero(as_tuple=True)
    if len(tie_r) > 0:
        key_j = (b[tie_r, tie_j] * span + tie_j)[:, None]
        b[tie_r, tie_j] = torch.searchsorted(key_h.index_select(0, tie_r), key_j, right=False)[:, 0]
    counts = torch.zeros(nb, h_max + 1, dtype=torch.long, device=block.device)
    return counts.scatter_add_(1, b, cand.long())


def _sum_in_rank_order(prec: torch.Tensor) -> torch.Tensor:
    """Row sums of the hits' precisions (padded with zeros to the widest row of the block), added one by one in rank
    order: the last column of ``cumsum``, a sequential scan on the CPU, which trailing zeros do not change.
    ``prec.sum(dim=1)`` groups the terms by the padded *width* (vectorised partial sums), so a query's AP would
    change in the last bit with the other queries of its block, i.e. with ``block_size``."""
    return prec.cumsum(dim=1)[:, -1]
