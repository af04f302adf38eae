"""Mixed precision: the autocast a training run uses (``train.amp*``) and float32 islands inside it.

Under autocast, matrix products and convolutions run in float16 or bfloat16. The numerically
delicate parts of the methods must not: ACFL's closed-form hard person features (small ascent steps
on logits of temperature 0.05) and its normalised pixel ascent (image gradients that float16 would
flush to zero), the relative entropy, the GAN losses, the cluster logits they start from, and every
memory / prototype / EMA update. Those functions carry the ``float32`` decorator: inside the call
autocast is off and half-precision tensor arguments are cast to float32, whatever the caller's
autocast state; their results are float32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch

from .errors import UserError

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_HALF = (torch.float16, torch.bfloat16)
_AUTOCAST_DEVICES = ("cpu", "cuda")

F = TypeVar("F", bound=Callable[..., Any])
LOG = logging.getLogger("hardreid")


@dataclass(frozen=True)
class Precision:
    """The autocast of a run's training steps: on or off, and its dtype; ``scaler`` says whether
    the loss needs scaling (float16 gradients underflow; bfloat16 has float32's range)."""

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @property
    def scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def cpu_bf16_speed_note(amx: bool | None = None, avx512_bf16: bool | None = None) -> str | None:
    """What bfloat16 autocast costs on this CPU, when it costs: None on a CPU with AMX tiles (where it is the
    fast path), else the measured slow-down (benchmarks/README.md, "Compiled training": on a Zen 4 with
    AVX-512 BF16 and no AMX 1.13-1.30x the float32 CPU time, eager and compiled; with AVX2 kernels ~9x).
    ``amx`` / ``avx512_bf16``: what the CPU has (default: torch's probes; ATEN_CPU_CAPABILITY=avx2 counts as no
    AVX-512)."""
    probe = getattr(torch, "cpu", None)
    if amx is None:
        amx = bool(getattr(probe, "_is_amx_tile_supported", lambda: False)())
    if avx512_bf16 is None:
        avx512_bf16 = (bool(getattr(probe, "_is_avx512_bf16_supported", lambda: False)())
                       and "AVX512" in torch.backends.cpu.get_cpu_capability())
    if amx:
        return None
    measured = ("1.13-1.30x the float32 time on a CPU with AVX-512 BF16 and no AMX" if avx512_bf16 else
                "about 9x the float32 time on AVX2 kernels, where bfloat16 is emulated")
    return (f"train.amp_cpu: bfloat16 autocast on this CPU (no AMX) is slower than float32 in our measurements "
            f"({measured}; benchmarks/README.md): keep train.amp_cpu=false for speed")


def training_precision(amp: bool, amp_dtype: str, amp_cpu: bool, device: torch.device) -> Precision:
    """``train.amp`` (CUDA), ``train.amp_cpu`` (CPU too) and ``train.amp_dtype`` -> the run's autocast.

    ``amp_dtype`` ``auto`` is float16 on CUDA (with a gradient scaler) and bfloat16 on CPU (the only
    half type CPUs run fast, where they do: AVX-512 BF16 / AMX).
    """
    if amp_dtype != "auto" and amp_dtype not in AMP_DTYPES:
        raise UserError(f"train.amp_dtype must be auto, float16 or bfloat16, not '{amp_dtype}'")
    enabled = amp and (device.type == "cuda" or (device.type == "cpu" and amp_cpu))
    if amp_dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    else:
        dtype = AMP_DTYPES[amp_dtype]
    if enabled and device.type == "cpu" and dtype == torch.bfloat16:
        note = cpu_bf16_speed_note()
        if note:
            LOG.warning(note)
    return Precision(device.type, enabled, dtype)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: one function per device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Switch off every autocast that is on (CPU and CUDA) inside the block."""
    with contextlib.ExitStack() as stack:
        for device_type in _AUTOCAST_DEVICES:
            if _autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _is_half(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype in _HALF


def _upcast(value: Any) -> Any:
    """A half tensor as float32; a list / tuple holding one as a new one with float32 tensors; anything else as is
    (a list the function appends to, e.g. a history, stays the caller's object)."""
    if _is_half(value):
        return value.float()
    if isinstance(value, (list, tuple)) and any(_is_half(v) for v in value):
        return type(value)(v.float() if _is_half(v) else v for v in value)
    return value


def float32(fn: F) -> F:
    """Run ``fn`` in float32 whatever the autocast state: autocast off, float16/bfloat16 tensor arguments
    (also inside lists and tuples) cast to float32. Other dtypes (integers, float64) pass unchanged.

    The casts are copies: do not guard a function that updates a half-precision argument in place (guard the
    method that owns the float32 table instead, as the memories do)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with autocast_off():
            return fn(*(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


__all__ = ["AMP_DTYPES", "Precision", "autocast_off", "float32", "training_precision"]
