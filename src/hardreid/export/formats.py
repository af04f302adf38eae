"""Export a feature model to ONNX, TorchScript or a torch.export program, and check that it gives the same features.

Every format takes a float32 batch ``images`` (B x 3 x H x W, normalised with
the model's mean / std, RGB) with a dynamic batch axis and returns
``features`` (B x D, L2-normalised). Flip averaging is not in the graph: to
match ``--flip`` features, run the mirrored batch as well, add and
re-normalise.

* ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter), opset
  :data:`ONNX_OPSET`, one file with the weights inside; metadata properties
  record the backbone, input size, mean / std, feature dim and source.
  Needs ``onnx``, ``onnxscript`` (and ``onnxruntime`` for the parity check):
  ``pip install 'hardreid[export]'``.
* ``torchscript``: ``torch.jit.trace`` (deprecated by PyTorch in favour of
  torch.export, kept for runtimes that load TorchScript, e.g. LibTorch).
* ``pt2``: ``torch.export.save`` of the exported program
  (``torch.export.load(path).module()``).

A model trained with ``model.camera_bn`` (camera-based BatchNorm) is exported
with its **global** BatchNorm statistics: the checkpoint's ``model`` buffers,
the mixture of the per-camera running statistics weighted by each training
camera's share of the images (``models/camera_bn.py``). An exported graph has
no camera input and no test-time recalibration, so its features are those of
an image without a camera; the per-camera statistics stay in the checkpoint
(``camera_bn``), and ``hardreid extract`` / ``evaluate`` apply the paper's
per-camera step. The parity check compares with the same global statistics.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import DataConfig
from ..data.images import read_image
from ..data.transforms import eval_transform
from ..errors import UserError
from ..models import ReidModel
from ..models.compiled import compile_model
from ..files import atomic_write_path

FORMATS = ("onnx", "torchscript", "pt2")
ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4  # maximum absolute difference of any feature value


def _plain(model: ReidModel) -> ReidModel:
    """The model in eval mode on CPU with the usual memory layout, eager (a plain graph)."""
    return compile_model(model, False).eval().cpu().use_channels_last(False)


def _example(height: int, width: int) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))


def _batch_dim() -> dict[str, Any]:
    return {"x": {0: torch.export.Dim("batch", min=1, max=65536)}}


def export_onnx(model: ReidModel, path: str | Path, height: int, width: int, metadata: dict[str, Any] | None = None,
                opset: int = ONNX_OPSET) -> Path:
    """``path`` (.onnx): input ``images`` B x 3 x H x W, output ``features`` B x D, dynamic B."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]  # torch.onnx needs both
    if missing:
        raise UserError(f"ONNX export needs onnx and onnxscript ({', '.join(missing)} missing): pip install 'hardreid[export]'")
    import onnx
    path = Path(path)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on decompositions; parity is checked instead
            torch.onnx.export(_plain(model), (_example(height, width),), str(tmp), dynamo=True, external_data=False,
                              input_names=["images"], output_names=["features"], opset_version=opset,
                              dynamic_shapes=_batch_dim(), verbose=False, report=False)
        graph = onnx.load(str(tmp))
        for key, value in {**(metadata or {}), "opset": opset}.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = f"hardreid.{key}", value if isinstance(value, str) else json.dumps(value)
        onnx.save(graph, str(tmp))

    atomic_write_path(path, write)
    return path


def export_torchscript(model: ReidModel, path: str | Path, height: int, width: int) -> Path:
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice (see the module docstring)
        traced = torch.jit.trace(_plain(model), _example(height, width))
    atomic_write_path(path, lambda tmp: traced.save(str(tmp)))
    return path


def export_program(model: ReidModel, path: str | Path, height: int, width: int) -> Path:
    path = Path(path)
    program = torch.export.export(_plain(model), (_example(height, width),), dynamic_shapes=_batch_dim())
    atomic_write_path(path, lambda tmp: torch.export.save(program, str(tmp)))
    return path


def export_model(model: ReidModel, fmt: str, path: str | Path, height: int, width: int,
                 metadata: dict[str, Any] | None = None) -> Path:
    if fmt == "onnx":
        return export_onnx(model, path, height, width, metadata)
    if fmt == "torchscript":
        return export_torchscript(model, path, height, width)
    if fmt == "pt2":
        return export_program(model, path, height, width)
    raise UserError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")


def exported_runner(fmt: str, path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function images (B x 3 x H x W float32) -> features, running the exported file."""
    path = str(path)
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the ONNX parity check needs onnxruntime: pip install 'hardreid[export]'") from None
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["features"], {"images": x})[0]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(path)
    elif fmt == "pt2":
        module = torch.export.load(path).module()
    else:
        raise UserError(f"unknown export format '{fmt}'")

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x)).numpy()

    return run


@dataclass
class Parity:
    """Exported vs PyTorch features on the same images."""

    images: int
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    tolerance: float
    batch_sizes: list[int]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def text(self) -> str:
        return (f"parity on {self.images} images (batches of {', '.join(map(str, self.batch_sizes))}): max |diff| "
                f"{self.max_abs_diff:.2e} ({'within' if self.ok else 'ABOVE'} {self.tolerance:.0e}), cosine min "
                f"{self.min_cosine:.7f} mean {self.mean_cosine:.7f}")


@torch.no_grad()
def check_parity(model: ReidModel, run: Callable[[np.ndarray], np.ndarray], images: torch.Tensor,
                 tolerance: float = PARITY_TOLERANCE) -> Parity:
    """Compare ``run`` (an exported model) with ``model`` on ``images``: whole batch, then one image (dynamic axis)."""
    reference = _plain(model)(images).numpy()
    batches = [len(images), 1] if len(images) > 1 else [1]
    exported = run(images.numpy())
    single = run(images[:1].numpy())
    diff = max(float(np.abs(exported - reference).max()), float(np.abs(single - reference[:1]).max()))
    cos = (exported * reference).sum(1) / (np.linalg.norm(exported, axis=1) * np.linalg.norm(reference, axis=1))
    return Parity(len(images), diff, float(cos.min()), float(cos.mean()), tolerance, batches)


def parity_images(folder: str | Path, data: DataConfig, num: int = 32) -> torch.Tensor:
    """Up to ``num`` real images from ``folder`` (recursive, spread over the sorted list), as the model sees them."""
    from ..retrieval.features import list_images

    root, paths = list_images(folder)
    picks = np.linspace(0, len(paths) - 1, num=min(num, len(paths))).round().astype(int)
    transform = eval_transform(data)
    return torch.stack([transform(read_image(root / paths[i])) for i in dict.fromkeys(picks.tolist())])
