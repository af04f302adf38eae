"""Step 1 of the k-reciprocal Jaccard distance (``hardreid.pseudo_labels.jaccard``): the neighbour search.

Input validation (finite, non-zero rows, L2-normalised), the same-camera
penalty on the scores, the exact kNN by blocked matrix products (upper
triangle of ``F F^T`` only, CUDA products kept in IEEE float32, ties at the
k-th place broken by index) and the fast search in reduced precision with
its choice of int8 / bf16 / fp16 products.

Fast mode (``mode="fast"``, opt-in; config key ``cluster.search``): step 1
scores every pair in reduced precision and keeps the ``k1 + 8`` best per row,
steps 2-6 are unchanged.  On CPU the features are rotated (random coordinate
permutation and signs, orthonormal 128-wide Hadamard blocks: dot products are
preserved, large channels are spread out) and quantised to int8 with one
global scale; ``torch._int_mm`` gives exact int32 products, ~2.5-5x the speed
of fp32 ``sgemm`` on AVX-512 VNNI CPUs.  The cosine error is ~0.016/sqrt(D)
(std; 4e-4 at D = 2048), so only neighbours closer than ~1e-3 can swap ranks,
and the weights use the rounded cosines.  Below D = 512 the CPU runs the exact
search instead (cheap there, and int8 too coarse); on CUDA fp16 products.

Which CPU kernel (``choose_cpu_kernel``, once per process, logged with its
reason): int8 where the CPU has int8 dot-product units (AVX-512 VNNI, AMX)
and ATen runs its AVX-512 kernels, bf16 products where it has bf16 units,
each taken only when a one-off block product beats float32 by a margin;
otherwise -- e.g. an AVX2-only CPU, where ``_int_mm`` is ~20x slower than
``sgemm`` -- the exact float32 search: ``fast`` is never slower than
``exact``.  ``HARDREID_FAST_KERNEL=int8|bf16|exact`` forces one (benchmarks).  Measured on realistic features
(benchmarks/README.md): DBSCAN labels agree with the exact ones at an adjusted
Rand index of 0.995-0.999 (D = 1024-2048), ~0.99 at D = 512.  Alternatives
measured and rejected: PCA to 256-d candidates + exact re-scoring (ARI 0.91),
random projection (0.92), k-means cells (IVF-style probing: recall@30 < 0.7),
exact fp32 re-scoring of int8 candidates (exact labels, but the gathers of N x
(k1 + 8) feature rows cost more than the int8 search saves).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hardreid.errors import UserError

__all__ = ["FAST_KERNELS", "choose_cpu_kernel", "exact_knn"]

# Extra kNN candidates kept per row so that exact ties at the k-th place can
# be broken by index without recomputing the row (see ``_knn_candidates``).
_TIE_SLACK = 8


# --------------------------------------------------------------------------- input


def _prepare_features(features: torch.Tensor | np.ndarray, k1: int, k2: int, block_size: int) -> torch.Tensor:
    """Validate the arguments; return L2-normalised float32 features on their device."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise UserError(f"features must be a torch.Tensor of shape (N, D), got {type(features).__name__}")
    if features.dim() != 2:
        raise UserError(f"features must have shape (N, D), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if n < 2:
        raise UserError(f"need at least 2 feature vectors to compute Jaccard distances, got {n}")
    for name, value in (("k1", k1), ("k2", k2), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if k1 > n - 1:
        raise UserError(
            f"k1={k1} is too large for {n} samples: k1 must be at most N - 1 = {n - 1}; "
            "lower k1 (e.g. in the pseudo-label config) or use more images"
        )
    if k2 > k1:
        raise UserError(f"k2={k2} must not exceed k1={k1} (query expansion uses the k2 nearest of the k1 neighbours)")
    f = features.detach().float()
    finite = torch.cat([torch.isfinite(f[a : a + 8192]).all(dim=1) for a in range(0, n, 8192)])
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise UserError(
            f"features contain NaN or infinite values in {bad.numel()} of {n} rows "
            f"(first bad row: {int(bad[0])}); the model produced invalid features, check for a diverged training run"
        )
    norms = f.norm(dim=1)
    if bool((norms == 0).any()):
        bad = torch.nonzero(norms == 0).flatten()
        raise UserError(
            f"features have {bad.numel()} all-zero rows (first: {int(bad[0])}); they cannot be L2-normalised"
        )
    return F.normalize(f, dim=1)


# --------------------------------------------------------------------------- step 1: kNN


@dataclass(frozen=True)
class _CameraPenalty:
    """Scores ``s' = s - amount`` for pairs of one camera (i != j): ``amount = same_camera_penalty / 2`` in cosine."""

    cams: torch.Tensor  # (N,) camera ids on the features' device
    amount: float

    def subtract(self, scores: torch.Tensor, rows: slice | torch.Tensor, cols: slice | torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
        """``scores`` (rows x cols, any dtype; ``scale``: score units per cosine) with the penalty subtracted in place.

        The diagonal is not exempt here: callers overwrite the query's own score.
        """
        same = self.cams[rows][:, None] == self.cams[cols][None, :]
        step = self.amount * scale
        # the step rounded to the block's dtype first, as ``same.to(dtype) * step`` did, but with one temporary
        # instead of two (2.3x faster on a 4096 x 4096 float32 block; s - 1 * step == s - step, same values)
        if scores.dtype.is_floating_point:
            step = torch.tensor(step, dtype=scores.dtype).item()
        else:
            step = round(step)
        return scores.sub_(same.to(scores.dtype), alpha=step)

    def pairs(self, cos: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Cosines of the pairs (i[t], j[t]) with the penalty subtracted where i != j share a camera."""
        return cos - self.amount * ((self.cams[i] == self.cams[j]) & (i != j)).to(cos.dtype)


def _camera_penalty(camids: torch.Tensor | np.ndarray | None, penalty: float, n: int,
                    device: torch.device) -> _CameraPenalty | None:
    """Validate ``same_camera_penalty`` and its camera ids; None when there is no penalty."""
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not 0 <= penalty <= 4:
        raise UserError(f"same_camera_penalty={penalty!r} must be a number in [0, 4] (cluster.same_camera_penalty; "
                        "4 = every other-camera neighbour ranks first)")
    if penalty == 0:
        return None
    if camids is None:
        raise UserError("same_camera_penalty > 0 needs the camera id of every image (camids)")
    cams = torch.as_tensor(np.asarray(camids)).to(device)
    if cams.shape != (n,):
        raise UserError(f"same_camera_penalty needs one camera id per image: got shape {tuple(cams.shape)} for {n} images")
    return _CameraPenalty(cams, float(penalty) / 2.0)


@contextmanager
def _ieee_fp32_matmul(device: torch.device, backend: object | None = None) -> Iterator[None]:
    """Exact float32 products on CUDA even when the caller enabled TF32 (it reorders neighbours).

    Only the TF32 API that reports TF32 as enabled is touched (PyTorch refuses
    reads that mix the legacy ``allow_tf32`` and the new ``fp32_precision``
    flags), and its value is restored afterwards.  ``backend``: the object
    holding those flags (default ``torch.backends.cuda.matmul``; tests pass a
    stand-in to check the switching on a machine without CUDA).
    """
    if device.type != "cuda":
        yield
        return
    mm = torch.backends.cuda.matmul if backend is None else backend
    restore = None
    try:
        if getattr(mm, "fp32_precision", None) == "tf32":
            mm.fp32_precision = "ieee"
            restore = ("fp32_precision", "tf32")
    except RuntimeError:
        pass
    if restore is None:
        try:
            if mm.allow_tf32:
                mm.allow_tf32 = False
                restore = ("allow_tf32", True)
        except RuntimeError:
            pass
    try:
        yield
    finally:
        if restore is not None:
            setattr(mm, *restore)


def _merge_top(
    top_v: torch.Tensor, top_i: torch.Tensor, pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge pending entries ``(local row, column, value)`` into the per-row top lists."""
    m, c = top_v.shape
    rows = torch.cat([r for r, _, _ in pending])
    if rows.numel() == 0:
        return top_v, top_i
    cols = torch.cat([i for _, i, _ in pending])
    vals = torch.cat([v for _, _, v in pending])
    dev = top_v.device
    order = torch.argsort(rows, stable=True)
    rows, cols, vals = rows[order], cols[order], vals[order]
    cnt = torch.bincount(rows, minlength=m)
    slot = torch.arange(rows.numel(), device=dev) - (torch.cumsum(cnt, 0) - cnt)[rows]
    width = int(cnt.max())
    all_v = torch.full((m, c + width), _lowest(top_v.dtype), dtype=top_v.dtype, device=dev)
    all_i = torch.full((m, c + width), -1, dtype=top_i.dtype, device=dev)
    all_v[:, :c] = top_v
    all_i[:, :c] = top_i
    all_v[rows, slot + c] = vals
    all_i[rows, slot + c] = cols
    v, pos = all_v.topk(c, dim=1)
    return v, all_i.gather(1, pos)


def _lowest(dtype: torch.dtype) -> float | int:
    return torch.iinfo(dtype).min if not dtype.is_floating_point else float("-inf")


def _highest(dtype: torch.dtype) -> float | int:
    return torch.iinfo(dtype).max if not dtype.is_floating_point else float("inf")


def _blocked_top(
    n: int, c: int, block_size: int, product: Callable[[int, int, int, int], torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score, index)`` of shape (n, c): the c highest scores of every row, unordered.

    ``product(a0, a1, b0, b1)`` returns the score block of rows a0..a1-1 against
    rows b0..b1-1; the diagonal (the query itself) is set to the dtype's
    highest value so that it always comes first.  Only block pairs (a, b >= a)
    are computed; each feeds the top lists of both row blocks.  Diagonal blocks
    go first and give every row a threshold (its c-th best score so far); in
    the other blocks only the entries reaching the row's (or, for the
    transposed side, the column's) threshold are kept -- a comparison instead
    of a top-k over the whole block -- and merged into the top lists now and
    then, which raises the thresholds.  Ties at the c-th place are resolved
    arbitrarily (callers that need an exact order check for them).
    """
    starts = list(range(0, n, block_size))
    top: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    pending: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {a: [] for a in starts}
    held = dict.fromkeys(starts, 0)
    for a in starts:  # diagonal blocks: a plain top-k
        a1 = min(a + block_size, n)
        p = product(a, a1, a, a1)
        p.fill_diagonal_(_highest(p.dtype))
        m = min(c, a1 - a)
        v, i = p.topk(m, dim=1)
        if m < c:  # fewer columns than c: pad, so that everything passes the threshold
            v = torch.cat([v, torch.full((a1 - a, c - m), _lowest(p.dtype), dtype=p.dtype, device=device)], 1)
            i = torch.cat([i, torch.full((a1 - a, c - m), -1, dtype=torch.long, device=device)], 1)
        top[a] = (v, i + a)
        del p

    def flush(a: int) -> None:
        if pending[a]:
            top[a] = _merge_top(*top[a], pending[a])
            pending[a], held[a] = [], 0

    for ia, a in enumerate(starts):
        a1 = min(a + block_size, n)
        for b in starts[ia + 1 :]:
            b1 = min(b + block_size, n)
            p = product(a, a1, b, b1)
            rows, cols = (p >= top[a][0][:, -1:]).nonzero(as_tuple=True)
            pending[a].append((rows, cols + b, p[rows, cols]))
            held[a] += rows.numel()
            rows, cols = (p >= top[b][0][:, -1][None, :]).nonzero(as_tuple=True)
            pending[b].append((cols, rows + a, p[rows, cols]))
            held[b] += rows.numel()
            del p, rows, cols
            for blk in (a, b):  # merge once the pending entries outnumber the kept ones
                if held[blk] > top[blk][0].numel():
                    flush(blk)
        flush(a)  # row block a is complete
    score = torch.cat([top[a][0] for a in starts])
    index = torch.cat([top[a][1] for a in starts])
    return score, index


def _knn_candidates(
    f: torch.Tensor, k: int, block_size: int, slack: int = _TIE_SLACK, penalty: _CameraPenalty | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1: exact neighbour ranking, ``c = min(k + slack, N)`` columns per row.

    Returns ``(index, cosine)`` of shape (N, c) on ``f.device``, ordered by
    (self first, decreasing cosine, increasing index).  The first ``k``
    columns are exact; columns ``k..c-1`` are only candidates.  Block pairs
    (a, b) with b >= a are multiplied once and feed both row blocks (see
    ``_blocked_top``); a row whose tie at place k extends past the slack is
    recomputed in full.  With a ``penalty`` the cosines are the penalised ones
    (``_CameraPenalty``), the query's own stays its plain cosine.
    """
    n = f.shape[0]
    c = min(k + slack, n)
    dev = f.device

    def product(a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
        p = f[a0:a1] @ f[b0:b1].T
        return p if penalty is None else penalty.subtract(p, slice(a0, a1), slice(b0, b1))

    with _ieee_fp32_matmul(dev):
        best_v, best_i = _blocked_top(n, c, block_size, product, dev)

    # Order the candidates by (value desc, index asc): sort by index, then stable by value.
    idx_sorted, perm = best_i.sort(dim=1)
    vals = best_v.gather(1, perm)
    vals, perm = vals.sort(dim=1, descending=True, stable=True)
    idx = idx_sorted.gather(1, perm)

    if c < n:
        # Everything outside the candidates has a value <= vals[:, c-1]; if that
        # equals the k-th value, an equal value with a smaller index may be missing.
        redo = torch.nonzero(vals[:, k - 1] == vals[:, c - 1]).flatten()
        for start in range(0, redo.numel(), block_size):
            rows = redo[start : start + block_size]
            with _ieee_fp32_matmul(dev):
                p = f[rows] @ f.T
            if penalty is not None:
                penalty.subtract(p, rows, slice(None))
            p[torch.arange(rows.numel(), device=dev), rows] = float("inf")
            v, i = p.sort(dim=1, descending=True, stable=True)
            vals[rows] = v[:, :c]
            idx[rows] = i[:, :c]
            del p

    vals[:, 0] = (f * f).sum(dim=1)  # self: the true cosine instead of +inf
    return idx, vals


# --------------------------------------------------------------------------- step 1, fast mode

# Width of the Hadamard blocks that spread every feature over many coordinates
# before the int8 quantisation (see ``_rotate_quantize``).
_HADAMARD = 128
# Below this dimension the CPU "fast" mode runs the exact search: the products
# are cheap there, and the int8 rounding error (~0.016 / sqrt(D) in cosine)
# starts to swap enough neighbours to move the labels (ARI ~0.98 at D = 256).
_FAST_MIN_DIM = 512
_INT8_OK: dict[str, bool] = {}
# The CPU kernel of the fast search, chosen once per process (``_cpu_fast_kernel``): (kernel, reason).
_CPU_KERNEL: dict[str, tuple[str, str]] = {}
# A reduced-precision kernel is taken only when its micro-benchmark product takes at most this fraction of
# the float32 product's time (a margin for timing noise: never a path slower than exact).
_KERNEL_MARGIN = 0.8
#: Values of the ``HARDREID_FAST_KERNEL`` environment variable (``auto``: the choice below).
FAST_KERNELS: tuple[str, ...] = ("auto", "int8", "bf16", "exact")
_LOG = logging.getLogger("hardreid")


def _int8_matmul_available() -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32) runs on this CPU build."""
    if "cpu" not in _INT8_OK:
        try:
            a = torch.ones((17, 16), dtype=torch.int8)
            ok = bool((torch._int_mm(a, a.T) == 16).all())
        except (AttributeError, RuntimeError, NotImplementedError):
            ok = False
        _INT8_OK["cpu"] = ok
    return _INT8_OK["cpu"]


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _torch_cpu_capability() -> str:
    """ATen's CPU kernel set (``AVX512``, ``AVX2``, ``DEFAULT``, ...; lowered by ``ATEN_CPU_CAPABILITY``)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):
        return "UNKNOWN"


def _time_product(kernel: str, size: int = 512, dim: int = 1024, repeats: int = 3) -> float:
    """Best of ``repeats`` timings (seconds) of one (size x dim) x (dim x size) block product with ``kernel``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, dim, generator=g)
    if kernel == "int8":
        x = a.mul(20).round_().clamp_(-127, 127).to(torch.int8)

        def product() -> torch.Tensor:
            return torch._int_mm(x, x.T)
    else:
        x = a.bfloat16() if kernel == "bf16" else a

        def product() -> torch.Tensor:
            return x @ x.T
    product()  # warm-up: first-call dispatch and allocations
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - t)
    return best


def choose_cpu_kernel(capability: str, flags: set[str], int8_runs: bool,
                      timer: Callable[[str], float] | None = None) -> tuple[str, str]:
    """The product kernel of the CPU fast search: ``(int8 | bf16 | exact, reason)``.

    Candidates by what the CPU has: int8 (``torch._int_mm``) where ATen runs
    its AVX-512 kernels and the CPU has int8 dot-product units (``avx512_vnni``
    or ``amx_int8``), bf16 where it has bf16 units (``avx512_bf16``,
    ``amx_bf16``).  An x86 CPU with neither (AVX2 only, or ``ATEN_CPU_CAPABILITY``
    set lower) runs the exact float32 search: ``_int_mm`` there is ~20x slower
    than ``sgemm`` (AMD EPYC, 512 x 2048 x 512: 0.784 s against 0.038 s).
    Where the flags say nothing (non-x86), int8 and bf16 are both candidates.
    ``timer(kernel)`` (default ``_time_product``) then times one block product
    of each candidate and of float32: a candidate is taken only when it takes
    at most ``_KERNEL_MARGIN`` of the float32 time, the fastest first; else
    exact.  Never a path slower than exact.
    """
    timer = _time_product if timer is None else timer
    x86 = bool(flags & {"avx2", "avx", "sse4_2", "avx512f"})
    wide = capability in ("AVX512", "AMX") or capability.startswith("AVX512")
    candidates: list[str] = []
    if int8_runs and (not x86 or (wide and bool(flags & {"avx512_vnni", "amx_int8"}))):
        candidates.append("int8")
    if not x86 or (wide and bool(flags & {"avx512_bf16", "amx_bf16"})):
        candidates.append("bf16")
    if not candidates:
        why = (f"ATen CPU capability {capability}" if x86 and not wide
               else "no int8 (VNNI / AMX) or bf16 matrix units" if x86 else "torch._int_mm unavailable, no bf16 hint")
        return "exact", f"{why}: reduced-precision products would not beat float32, exact search"
    t_exact = timer("exact")
    timed = sorted((timer(k), k) for k in candidates)
    best_t, best = timed[0]
    if best_t <= _KERNEL_MARGIN * t_exact:
        return best, (f"{best} block product {best_t * 1e3:.1f} ms against float32 {t_exact * 1e3:.1f} ms "
                      f"(ATen {capability})")
    return "exact", (f"no reduced-precision product beat float32 by the margin ({best} {best_t * 1e3:.1f} ms, "
                     f"float32 {t_exact * 1e3:.1f} ms): exact search")


def _cpu_fast_kernel() -> tuple[str, str]:
    """``choose_cpu_kernel`` for this process's CPU, once (logged), unless ``HARDREID_FAST_KERNEL`` names one."""
    if "cpu" not in _CPU_KERNEL:
        forced = os.environ.get("HARDREID_FAST_KERNEL", "auto").strip().lower() or "auto"
        if forced not in FAST_KERNELS:
            raise UserError(f"HARDREID_FAST_KERNEL={forced!r} is not a kernel of the fast search; choose one of "
                            f"{', '.join(FAST_KERNELS)}")
        if forced == "int8" and not _int8_matmul_available():
            raise UserError("HARDREID_FAST_KERNEL=int8 but torch._int_mm does not run on this CPU build; "
                            "use bf16, exact or auto")
        if forced != "auto":
            choice = (forced, "set by HARDREID_FAST_KERNEL")
        else:
            choice = choose_cpu_kernel(_torch_cpu_capability(), _cpu_flags(), _int8_matmul_available())
        _CPU_KERNEL["cpu"] = choice
        _LOG.info("cluster.search fast on CPU: %s products (%s)", *choice)
    return _CPU_KERNEL["cpu"]


def _hadamard(m: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / m**0.5


def _rotate_quantize(f: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, float]:
    """int8 codes ``q`` and scale ``s`` with ``q_i . q_j / s^2 ~ f_i . f_j`` (CPU).

    The features are first rotated (a fixed random permutation of the
    coordinates, zero-padded to a multiple of the block, then orthonormal
    Hadamard blocks with random signs): dot products are unchanged, but every
    coordinate becomes a mix of many, so no single large feature channel sets
    the quantisation step for all the others.  One global scale keeps the
    int32 products of all pairs comparable.
    """
    n, d = f.shape
    hb = _HADAMARD if d >= _HADAMARD else max(8, 1 << (d - 1).bit_length())
    dp = -(-d // hb) * hb
    g = torch.Generator().manual_seed(20170721)
    perm = torch.randperm(dp, generator=g)
    sign = torch.randint(0, 2, (hb, 1), generator=g).to(f.dtype) * 2 - 1
    had = (sign * _hadamard(hb)).to(f.dtype)  # diag(sign) H is orthonormal too

    def rotated(a: int) -> torch.Tensor:
        x = f[a : a + chunk]
        if dp != d:
            x = F.pad(x, (0, dp - d))
        return (x.index_select(1, perm).view(-1, hb) @ had).view(-1, dp)

    top = 0.0
    for a in range(0, n, chunk):
        lo, hi = torch.aminmax(rotated(a))
        top = max(top, -float(lo), float(hi))
    scale = 127.0 / top
    q = torch.empty((n, dp), dtype=torch.int8)
    for a in range(0, n, chunk):
        q[a : a + chunk] = rotated(a).mul_(scale).round_().to(torch.int8)
    return q, scale


def _fast_precision(device: torch.device, dim: int) -> str:
    """The products of the fast search on ``device``: ``fp16`` (CUDA), on CPU ``exact`` below ``_FAST_MIN_DIM``
    dimensions, else the kernel ``_cpu_fast_kernel`` chose for this CPU (``int8``, ``bf16`` or ``exact``)."""
    if device.type == "cuda":
        return "fp16"
    if device.type != "cpu" or dim < _FAST_MIN_DIM:
        return "exact"
    return _cpu_fast_kernel()[0]


def _fast_knn_candidates(
    f: torch.Tensor, k: int, block_size: int, slack: int = _TIE_SLACK, penalty: _CameraPenalty | None = None,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 in reduced precision (``mode="fast"``): same layout as ``_knn_candidates``.

    Scores: int8 codes of the rotated features multiplied into int32
    (``torch._int_mm``) on CPU, bf16 products where that is unavailable, fp16
    products on CUDA.  Every pair is still scored (no pruning), so only pairs
    whose cosines differ by less than the rounding error (~1e-3) can swap
    ranks; the returned cosines are the reduced-precision ones (the self entry
    is exact).  Ties are broken by index; no exact re-check of ties.
    ``precision`` (``int8`` / ``bf16`` / ``fp16`` / ``exact``) overrides the
    choice of ``_fast_precision`` (tests).
    """
    n, d = f.shape
    c = min(k + slack, n)
    dev = f.device
    precision = _fast_precision(dev, d) if precision is None else precision
    if precision == "exact":
        return _knn_candidates(f, k, block_size, slack, penalty)
    if precision == "int8":
        x, s = _rotate_quantize(f)
        scale = s * s

        def raw_product(a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
            return torch._int_mm(x[a0:a1], x[b0:b1].T)

    else:  # fp16 / bf16 products (float32 accumulation)
        x = f.half() if precision == "fp16" else f.bfloat16()
        scale = 1.0

        def raw_product(a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
            return x[a0:a1] @ x[b0:b1].T

    def product(a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
        p = raw_product(a0, a1, b0, b1)
        return p if penalty is None else penalty.subtract(p, slice(a0, a1), slice(b0, b1), scale)

    score, index = _blocked_top(n, c, block_size, product, dev)
    x = None  # free the low-precision copy (product is not called again)
    idx_sorted, perm = index.sort(dim=1)
    score = score.gather(1, perm)
    score, perm = score.sort(dim=1, descending=True, stable=True)
    idx = idx_sorted.gather(1, perm)
    vals = score.float() / scale
    vals[:, 0] = (f * f).sum(dim=1)
    return idx, vals


def exact_knn(features: torch.Tensor, k: int, block_size: int = 4096, camids: torch.Tensor | np.ndarray | None = None,
              same_camera_penalty: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The ranking of step 1: ``(index, cosine)`` of shape (N, k), self first, ties by index (penalised cosines
    with ``same_camera_penalty``, see ``compute_jaccard_distance``)."""
    f = _prepare_features(features, k, 1, block_size)
    penalty = _camera_penalty(camids, same_camera_penalty, f.shape[0], f.device)
    idx, vals = _knn_candidates(f, k, block_size, penalty=penalty)
    return idx[:, :k].cpu().numpy(), vals[:, :k].cpu().numpy()
