"""A device-placement audit for code run on the CPU: what would land on, or move to, the host on a GPU.

``DeviceAudit`` is a ``TorchFunctionMode``: it sees every torch call made while it is active, and records
the calls made *directly by hardreid's own code* (the caller's frame is a file of the package, outside
``data/``, where loading is host work by design) that

* create a tensor without naming its device (``torch.zeros(n)``, ``torch.arange(n)``, ``torch.as_tensor(list)``,
  ``torch.rand(..., generator=cpu_generator)``...): on a GPU run such a tensor is on the CPU, and either breaks
  the step ("expected all tensors on the same device") or silently keeps work on the host;
* copy a tensor to the host: ``.cpu()``, ``.numpy()``, ``.tolist()``, ``.to("cpu")``, ``torch.from_numpy``.

Derived tensors (``*_like``, ``new_*``, ``device=x.device``, results of operations) follow their inputs and are
not recorded.

What it cannot cover on a CPU-only machine (left to ``benchmarks/device_run.py``'s ``methods_amp`` stage on a
GPU, and to reading the code): a tensor built with ``device=some_variable`` or moved with ``.to(device)`` where
the variable holds the CPU by mistake (on the CPU every device is the CPU), hence where the state built in
``start_epoch`` (memories, prototypes, proxies, the EMA teacher, hng's networks) ends up; and host syncs
(``.item()``, ``float(t)``, ``if t.any()``), which are reads, not placements (each step reads its loss anyway).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import hardreid

PACKAGE = Path(hardreid.__file__).resolve().parent
HOST_WORK = (PACKAGE / "data",)  # image loading and sampling are host work by design
_HOST_COPIES = {"cpu", "numpy", "tolist", "from_numpy"}


def _constructors() -> set[Any]:
    try:
        from torch.utils._device import _device_constructors

        return set(_device_constructors())
    except ImportError:  # pragma: no cover - older torch
        names = ("empty", "zeros", "ones", "full", "arange", "range", "linspace", "logspace", "eye", "rand",
                 "randn", "randint", "randperm", "tensor", "as_tensor", "scalar_tensor", "empty_strided")
        return {getattr(torch, n) for n in names}


class DeviceAudit(TorchFunctionMode):
    """Records ``(file:function, what)`` for each host placement made by hardreid code while active."""

    def __init__(self) -> None:
        super().__init__()
        self.records: set[tuple[str, str]] = set()
        self.constructors = _constructors()
        self._audited: dict[str, str | None] = {}  # file name -> its path in the package, None = not audited

    def audited_file(self, filename: str) -> str | None:
        if filename not in self._audited:
            path = Path(filename)
            inside = PACKAGE in path.parents and not any(folder in path.parents for folder in HOST_WORK)
            self._audited[filename] = path.relative_to(PACKAGE).as_posix() if inside else None
        return self._audited[filename]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        code = sys._getframe(1).f_code
        where = self.audited_file(code.co_filename)
        if where is not None:
            what = self.host_placement(func, args, kwargs)
            if what:
                self.records.add((f"{where}:{code.co_name}", what))
        return func(*args, **kwargs)

    def host_placement(self, func, args, kwargs) -> str | None:
        name = getattr(func, "__name__", str(func))
        if func in self.constructors:
            if kwargs.get("device") is not None:
                return None
            if name in ("tensor", "as_tensor") and args and isinstance(args[0], torch.Tensor):
                return None  # keeps the input's device
            return f"torch.{name} without device"
        if name in _HOST_COPIES:
            return name
        if name == "to" and any(isinstance(a, str) and a.startswith("cpu") for a in (*args[1:], kwargs.get("device"))):
            return 'to("cpu")'
        return None
