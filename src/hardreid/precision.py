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
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch

from .errors import UserError

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_HALF = (torch.float16, torch.bfloat16)
_AUTOCAST_DEVICES = ("cpu", "cuda")

F = TypeVar("F", bound=Callable[..., Any])


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
