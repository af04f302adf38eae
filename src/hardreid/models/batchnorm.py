"""How a network's BatchNorm layers behave in forwards that must not act like training forwards.

Used by the hard-sample generators: ACFL's hard positive instances (ascent steps on images,
``acfl.hpi_bn``) and hard negative generation (the forward of synthetic images, ``hng.bn_synthetic``).

``eval_mode``           running statistics for the block (nothing is written).
``scratch_forward``     train-mode forward whose running-statistic updates go to private copies.
``frozen_batch_forward``  train-mode normalisation with statistics taken once from a reference batch
                        and then held constant: each image's output (and gradient) depends on itself
                        only, as in eval mode, but with the reference batch's statistics.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block (BatchNorm uses and keeps its running statistics)."""
    saved = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def scratch_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward with its buffers replaced by private copies (torch.func.functional_call).

    BatchNorm in training mode writes its running statistics (and num_batches_tracked) into the copies, so the
    model's own buffers are neither changed nor bumped in version: a forward of the same step whose backward
    still holds them stays valid. The parameters are the model's own (gradients reach them and the inputs).
    """
    buffers = buffer_snapshot(model)
    return lambda x: functional_call(model, buffers, (x,))


def buffer_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every buffer of ``model`` (running statistics, counters), by name."""
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


UNIT_ROUNDOFF_64 = 2.0 ** -53


@torch.no_grad()
def biased_variance(value: torch.Tensor) -> torch.Tensor:
    """``value.var(dim=dims, unbiased=False)`` over every dim but 1 (the channels), bit for bit, for float32 about
    twice as fast on CPU.

    ``torch.var`` accumulates float32 in float64 with Welford's algorithm, which on CPU runs element by element
    (~8x a BatchNorm layer). Here a two-pass float64 variance is rounded to float32 instead: both float64 results
    lie within a few ``n u kappa^2`` of the exact variance (n values per channel, u the float64 unit roundoff,
    kappa^2 = 1 + mean^2 / var), far below float32's half-ulp, so they round to the same float32 unless the
    exact value lies that close to a rounding boundary: those channels (a fraction of a percent; every channel
    whose variance is zero or not finite) are recomputed with ``torch.var`` itself.
    """
    dims = [d for d in range(value.dim()) if d != 1]
    if value.dtype != torch.float32 or value.numel() == 0:
        return value.var(dim=dims, unbiased=False)
    n = value.numel() // value.shape[1]
    x = value.double()
    mean = x.mean(dim=dims, keepdim=True)
    x.sub_(mean).square_()
    var64 = x.mean(dim=dims)
    out = var64.float()
    tol = 64.0 * n * UNIT_ROUNDOFF_64 * (1.0 + mean.flatten().square() / var64)
    doubtful = ((var64 * (1.0 + tol)).float() != out) | ((var64 * (1.0 - tol)).float() != out) | ~torch.isfinite(tol)
    if bool(doubtful.any()):
        channels = doubtful.nonzero().flatten()
        out[channels] = value.index_select(1, channels).var(dim=dims, unbiased=False)
    return out


@torch.no_grad()
def batch_statistics(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and biased variance that every BatchNorm layer of ``model`` normalises ``x`` with in train mode.

    Returned as buffer replacements ``{"<layer>.running_mean": mean, "<layer>.running_var": var}``; one forward
    without gradient, the model's own buffers untouched (scratch copies). Chunked BatchNorm (``bn_chunk``) is the
    caller's business: pass one chunk.
    """
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            def record(mod: nn.Module, inputs: tuple[torch.Tensor, ...], prefix: str = name) -> None:
                value = inputs[0].float()
                dims = [d for d in range(value.dim()) if d != 1]
                stats[f"{prefix}.running_mean"] = value.mean(dim=dims)
                stats[f"{prefix}.running_var"] = biased_variance(value)
            hooks.append(module.register_forward_pre_hook(record))
    try:
        scratch_forward(model)(x)
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def frozen_batch_forward(model: nn.Module, reference: torch.Tensor, chunk: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward that normalises with the train-mode batch statistics of ``reference``, held constant.

    The statistics are computed once (``batch_statistics``), then every call runs the network in eval mode with
    them in place of the running statistics (the model's buffers are untouched). ``chunk`` > 0 emulates per-GPU
    BatchNorm (``train.bn_chunk``): ``reference`` and every input are split into chunks of that many images and
    each chunk uses its own statistics, as the training forward would. Inputs must have ``reference``'s shape.
    """
    chunks = reference.split(chunk) if 0 < chunk < reference.shape[0] else (reference,)
    buffers = {name: buffer.detach() for name, buffer in model.named_buffers()}
    per_chunk = [{**buffers, **batch_statistics(model, c)} for c in chunks]
    sizes = [c.shape[0] for c in chunks]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != reference.shape[0]:
            raise ValueError(f"frozen-batch forward of {reference.shape[0]} images called with {x.shape[0]}")
        with eval_mode(model):
            return torch.cat([functional_call(model, stats, (part,)) for part, stats in zip(x.split(sizes), per_chunk)])

    return forward
