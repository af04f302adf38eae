"""Shared helpers of the benchmarks: machine description, peak memory, synthetic re-ID features.

Nothing here is imported by the package; the scripts put the repository's
``benchmarks/`` folder on ``sys.path`` themselves.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

# --------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def total_ram_gb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_description() -> dict[str, Any]:
    """CPU, cores, RAM, library versions, GPU (if any) and the current load average."""
    import torch

    desc: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags_avx512_bf16": "avx512_bf16" in _read("/proc/cpuinfo"),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": total_ram_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "load_average_1_5_15": load_average(),
    }
    for mod in ("scipy", "sklearn", "faiss"):
        try:
            desc[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            desc[mod] = None
    if torch.cuda.is_available():
        desc["gpu"] = torch.cuda.get_device_name(0)
        desc["cuda"] = torch.version.cuda
    else:
        desc["gpu"] = None
    return desc


# --------------------------------------------------------------------------- memory


def rss_mb() -> float:
    """Current resident set size of this process (MB), from /proc."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB).

    ``VmHWM`` from /proc: the high-water mark of this process's own address
    space.  (``ru_maxrss`` is not used where /proc exists: Linux carries the
    parent's peak over fork + exec into it, so a spawned child would report at
    least its parent's peak.)
    """
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """User + system CPU seconds of this process (all its threads) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(fn: Callable[..., Any], args: tuple, kwargs: dict, conn) -> None:  # pragma: no cover - subprocess
    try:
        base = rss_mb()
        cpu = _cpu_s()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        wall = time.perf_counter() - t
        conn.send(("ok", out, wall, _cpu_s() - cpu, base, peak_rss_mb()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", 0.0, 0.0, 0.0, 0.0))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run ``fn(*args, **kwargs)`` in a fresh (spawned) process; measure its own peak memory.

    Returns ``{"result", "wall_s", "cpu_s", "rss_start_mb", "peak_rss_mb"}``: ``cpu_s``
    is the CPU time (user + system, all threads) the child spent in ``fn`` --
    on a busy machine a steadier measure of the work than the wall time;
    ``peak_rss_mb``
    is the child's peak RSS (``VmHWM``: interpreter + imports + inputs + the stage),
    ``rss_start_mb`` its RSS just before ``fn`` ran, so ``peak - start`` is
    what the stage itself added.  ``fn`` must be importable (module level) and
    its result picklable; load big inputs inside ``fn`` (e.g. from a .npy
    path) rather than passing them as arguments.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, kwargs, child))
    proc.start()
    child.close()
    try:
        status, out, wall, cpu, base, peak = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark subprocess died (exit code {proc.exitcode}; killed for memory?)") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark subprocess failed:\n{out}")
    return {"result": out, "wall_s": wall, "cpu_s": cpu, "rss_start_mb": round(base, 1), "peak_rss_mb": round(peak, 1)}


class StageTimer:
    """``with timer("name"): ...`` accumulates wall-clock seconds per stage."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> "_Stage":
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: StageTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timer.times[self.name] = self.timer.times.get(self.name, 0.0) + time.perf_counter() - self.t


# --------------------------------------------------------------------------- features


def reid_features(
    n: int,
    dim: int = 2048,
    num_ids: int | None = None,
    num_cams: int = 6,
    seed: int = 0,
    lookalike_fraction: float = 0.15,
    outlier_fraction: float = 0.03,
    sizes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic re-ID embeddings shaped like a trained backbone's: ``(features, pids, camids)``.

    * identities of varying size: ``num_ids`` (default ``n / 17``, Market's
      ratio) with sizes drawn from a long-tailed (log-normal) law, at least 2;
    * a shared component (ReLU/BN features are far from zero-mean: two random
      images have a cosine of about 0.3) and a spectrum decaying like
      ``1 / sqrt(rank)``, so that a few directions dominate as in real features;
    * camera shifts: each camera adds its own offset, and each identity is seen
      by 2-6 cameras, so identities split into camera sub-clusters;
    * look-alike pairs: ``lookalike_fraction`` of the identities are copies of
      another identity's centre plus a small perturbation (similar clothes);
    * per-identity spread varying by a factor ~2, and ``outlier_fraction`` of
      the images replaced by unrelated vectors (detector failures).

    ``sizes`` (optional) fixes the number of images of every identity instead
    (``n`` must be their sum).  Features are float32 and L2-normalised;
    ``pids`` of outlier images are -1.  Deterministic for a given
    (n, dim, seed, ...).
    """
    rng = np.random.default_rng(seed)
    if sizes is not None:
        sizes = np.asarray(sizes, dtype=np.int64)
        num_ids = sizes.size
        if sizes.sum() != n:
            raise ValueError(f"sizes sum to {sizes.sum()}, not n={n}")
    else:
        num_ids = num_ids or max(2, int(round(n / 17.2)))
        sizes = np.maximum(2, rng.lognormal(mean=0.0, sigma=0.6, size=num_ids))
        sizes = np.maximum(2, np.floor(sizes / sizes.sum() * n)).astype(np.int64)
        while sizes.sum() < n:  # fix the rounding: add/remove single images at random identities
            sizes[rng.integers(num_ids)] += 1
        while sizes.sum() > n:
            j = rng.integers(num_ids)
            if sizes[j] > 2:
                sizes[j] -= 1
    pids = np.repeat(np.arange(num_ids), sizes)

    spectrum = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    spectrum *= np.sqrt(dim / float((spectrum**2).sum()))  # unit average variance per coordinate

    def gaussian(rows: int) -> np.ndarray:  # unit expected squared norm, decaying spectrum
        return (rng.standard_normal((rows, dim), dtype=np.float32) * spectrum) / np.sqrt(dim)

    common = np.abs(gaussian(1)) / np.linalg.norm(gaussian(1))
    common /= np.linalg.norm(common)
    centers = gaussian(num_ids)
    partner = rng.permutation(num_ids)[: int(lookalike_fraction * num_ids)]
    for a, b in zip(partner[0::2], partner[1::2]):  # b looks like a
        centers[b] = centers[a] + 0.55 * gaussian(1)[0]
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    cam_shift = 0.45 * gaussian(num_cams)
    # each identity is seen by 2..num_cams cameras
    id_cams = [rng.choice(num_cams, size=rng.integers(2, num_cams + 1), replace=False) for _ in range(num_ids)]
    camids = np.concatenate([rng.choice(id_cams[p], size=s) for p, s in enumerate(sizes)])
    spread = (0.55 + 0.5 * rng.random(num_ids)).astype(np.float32)

    feats = np.empty((n, dim), dtype=np.float32)
    step = 8192
    for a in range(0, n, step):
        b = min(n, a + step)
        p, c = pids[a:b], camids[a:b]
        x = 0.65 * common + centers[p] + cam_shift[c] + spread[p, None] * gaussian(b - a)
        feats[a:b] = x
    out = rng.random(n) < outlier_fraction
    feats[out] = 0.65 * common + gaussian(int(out.sum())) * 1.2
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    pids = pids.copy()
    pids[out] = -1
    perm = rng.permutation(n)
    return np.ascontiguousarray(feats[perm]), pids[perm], camids[perm]


def feature_stats(feats: np.ndarray, pids: np.ndarray, sample: int = 500, seed: int = 0) -> dict[str, float]:
    """Mean cosine of same-identity and different-identity pairs on a sample of rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(feats.shape[0], size=min(sample, feats.shape[0]), replace=False)
    sim = feats[rows] @ feats.T
    same = (pids[rows, None] == pids[None, :]) & (pids[rows, None] >= 0)
    same[np.arange(rows.size), rows] = False
    diff = pids[rows, None] != pids[None, :]
    return {"cos_same_id": round(float(sim[same].mean()), 3), "cos_diff_id": round(float(sim[diff].mean()), 3)}


def result_header(benchmark: str, argv: list[str] | None) -> dict[str, Any]:
    """The fields every result file starts with: what ran, when, on which machine."""
    return {
        "benchmark": benchmark,
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_description(),
    }


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def repo_src_on_path() -> None:
    """Make ``import hardreid`` work from a plain checkout (no install)."""
    src = Path(__file__).resolve().parents[1] / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
