"""Rounding-error bounds for tests that compare floats computed two different ways.

Two computations of one quantity agree bit for bit on every CPU only by construction: the same kernels on the same
shapes, in the same order, with the same thread count, or elementwise IEEE operations, or integer arithmetic. A
kernel that reduces (a dot product, a convolution, a sum, a norm, BatchNorm's statistics) rounds in an order that
depends on the batch shape, the CPU's instruction set and the library's code path (MKL / oneDNN / faiss choose
their blocking by shape and ISA; a different thread count splits reductions differently), so a test that compares
such computations uses a bound derived here, or data with clear margins, or compares partitions by an ARI bound.

The bounds are worst-case and first-order (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.1
and 4.2): a sum of n terms computed in any order, blocking or vector width is within (n - 1) u sum|terms| of the
exact sum (we use n u), u = 2^-24 in float32 and 2^-53 in float64.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64


def unit_roundoff(dtype: torch.dtype) -> float:
    return {torch.float32: U32, torch.float64: U64}[dtype]


def sum_error(n: int, abs_sum: float, u: float = U32) -> float:
    """Worst-case rounding error of a sum of ``n`` terms whose magnitudes add up to ``abs_sum``, in any order."""
    return n * u * abs_sum


def normalize_error(dim: int, u: float = U32) -> float:
    """Relative (= absolute, on a unit vector) rounding error of F.normalize of a row of ``dim`` values: the sum of
    ``dim`` squares is within dim u (relative), dim u / 2 after the square root, plus the root and the division."""
    return (dim / 2 + 2) * u


def reduction_lengths(model: nn.Module, x: torch.Tensor, backward: bool = False) -> list[int]:
    """The length of every reduction that one forward pass of ``model`` on ``x`` makes per output value: the fan-in
    of each Conv / Linear output, N*H*W for the statistics of a BatchNorm in train mode; with ``backward`` also the
    fan-in of the input gradient of each Conv / Linear (out channels x kernel area, out features). Measured on a
    copy, so the model's BatchNorm running statistics are not touched."""
    lengths: list[int] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.modules.conv._ConvNd):
            area = 1
            for k in module.kernel_size:
                area *= k
            lengths.append(module.in_channels // module.groups * area)
            if backward:
                lengths.append(module.out_channels // module.groups * area)
        elif isinstance(module, nn.Linear):
            lengths.append(module.in_features)
            if backward:
                lengths.append(module.out_features)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            lengths.append(inputs[0].numel() // inputs[0].shape[1])

    probe = copy.deepcopy(model)
    for module in probe.modules():
        module.register_forward_hook(hook)
    with torch.no_grad():
        probe(x)
    return lengths


def forward_error(model: nn.Module, x: torch.Tensor, u: float = U32, backward: bool = False) -> float:
    """First-order bound on the relative rounding error of ``model(x)`` (and of its input gradient with
    ``backward``): every reduction of length n rounds within n u of the magnitudes of its terms, elementwise layers
    add O(u), and with activations kept O(1) (He initialisation, BatchNorm) the relative errors of the layers add
    up to first order: u * sum of the reduction lengths. Two evaluations that run different kernels (another batch
    size, memory layout, library or CPU) differ by at most twice this."""
    return u * sum(reduction_lengths(model, x, backward))
