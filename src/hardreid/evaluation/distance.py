"""Query x gallery distances of unit features: squared Euclidean, ``2 - 2 a.b``, on the faster matrix product.

The product dominates the evaluation's cost (Market-1501 test size: 3,368 x 15,913 x 2,048, 0.22 TFLOP). torch's
CPU product is MKL's ``sgemm`` in the usual x86 builds, and MKL runs it at about 60 % of the speed of OpenBLAS
(numpy's BLAS in its wheels) on AMD CPUs (one thread, AMD EPYC, AVX-512 and AVX2 kernels alike: about 55 against
95-104 GFLOP/s, ``benchmarks/README.md``). There, CPU float32 products are numpy's; everywhere else torch's. The
choice depends on the machine only (not on the sizes), and the distances do not depend on the number of threads
(numpy's product is computed in fixed single-threaded tiles: :func:`_numpy_product`).
"""

from __future__ import annotations

import functools
import platform
from typing import Any

import numpy as np
import torch


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of unit vectors, ``2 - 2 a.b`` clamped at 0 (same ranking as cosine distance).

    Formed in place on the product: ``-2 x + 2`` has the same float value as ``2 - 2 x`` (doubling is exact, the
    one rounding is the addition's), without two more (Q x G) temporaries. The product is numpy's where
    :func:`numpy_blas_preferred` (CPU float32 tensors that need no gradient), torch's otherwise.
    """
    if _numpy_product_applies(a, b):
        prod = _numpy_product(a, b)
    else:
        prod = a @ b.t()
    return prod.mul_(-2.0).add_(2.0).clamp_(min=0.0)


#: Tile of the product computed by one single-threaded BLAS call (rows of ``a`` x rows of ``b``).
_TILE = (1024, 4096)


def _numpy_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` by numpy's BLAS, in fixed tiles, each by one single-threaded call, the tiles spread over as many
    threads as torch uses (``torch.get_num_threads()``). OpenBLAS's AVX2 (Haswell/Zen) kernels give an entry
    different last bits depending on how a call splits the matrix over its threads; fixed single-threaded tiles
    make the distances independent of the thread count (and cost no speed: 2 x 1024 x 4096 x 2048 flops a call)."""
    an, bn = a.detach().numpy(), b.detach().numpy()
    out = np.empty((an.shape[0], bn.shape[0]), dtype=np.float32)
    rows, cols = _TILE
    tiles = [(r, c) for r in range(0, an.shape[0], rows) for c in range(0, bn.shape[0], cols)]

    def tile(rc: tuple[int, int]) -> None:
        r, c = rc
        np.matmul(an[r:r + rows], bn[c:c + cols].T, out=out[r:r + rows, c:c + cols])

    workers = min(torch.get_num_threads(), len(tiles))
    with _blas_threads(1):
        if workers <= 1:
            for rc in tiles:
                tile(rc)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(tile, tiles))
    if an.shape[1] == 0:  # no features: every product is 0 (numpy's matmul of empty tiles leaves them unset)
        out.fill(0.0)
    return torch.from_numpy(out)


def _numpy_product_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dim() == 2 and b.dim() == 2
        and a.dtype == torch.float32 and b.dtype == torch.float32
        and a.device.type == "cpu" and b.device.type == "cpu"
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
        and numpy_blas_preferred()
    )


@functools.lru_cache(maxsize=1)
def numpy_blas_preferred() -> bool:
    """Whether CPU float32 products go to numpy's BLAS: torch's is MKL, numpy's is not, and the CPU is an x86 one
    not made by Intel (where MKL's ``sgemm`` is slow)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    if not torch.backends.mkl.is_available() or "mkl" in _numpy_blas_name():
        return False
    vendor = cpu_vendor()
    return bool(vendor) and vendor != "GenuineIntel"


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...) from ``/proc/cpuinfo`` or the platform;
    empty when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    text = platform.processor()
    for vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls"):
        if vendor in text:
            return vendor
    return ""


def _numpy_blas_name() -> str:
    """Lower-case name of the BLAS numpy was built with (``scipy-openblas``, ``mkl-sdl``, ...); ``unknown`` for
    numpy versions that do not say."""
    try:
        config = np.show_config(mode="dicts")
        return str(config["Build Dependencies"]["blas"]["name"]).lower()
    except Exception:  # noqa: BLE001 - older numpy: no dict mode
        return "unknown"


@functools.lru_cache(maxsize=1)
def _thread_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return None
    return ThreadpoolController()


def _blas_threads(n: int) -> Any:
    """Context limiting numpy's BLAS to ``n`` threads (a no-op without threadpoolctl)."""
    controller = _thread_controller()
    if controller is None:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return controller.limit(limits=max(1, int(n)), user_api="blas")
