"""Checkpoint files: atomic writes, safe reads (no code from the file runs), clear errors on load.

Format ``hardreid-checkpoint-v2`` holds only tensors, containers, numbers and strings (checked when saving,
see :func:`hardreid.serialization.check_plain`) and is read with ``torch.load(weights_only=True)``.
Version 1 files stored numpy's RNG state as numpy objects; they are read with the same weights-only loader
plus an explicit allowlist of the numpy globals such a state needs (array, dtype, scalar, the array rebuild
function and the dtypes of integers, floats and booleans; nothing that can call other code), and converted to
the v2 form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..serialization import check_plain, load_pth
from .run_files import atomic_save

FORMAT = "hardreid-checkpoint-v2"
FORMAT_V1 = "hardreid-checkpoint-v1"
_NUMPY_CORE = np._core.multiarray  # numpy >= 2; v1 files written with numpy 1 name numpy.core.multiarray
V1_NUMPY_GLOBALS = [np.ndarray, np.dtype, _NUMPY_CORE._reconstruct, _NUMPY_CORE.scalar,
                    (_NUMPY_CORE._reconstruct, "numpy.core.multiarray._reconstruct"),
                    (_NUMPY_CORE.scalar, "numpy.core.multiarray.scalar"),
                    # the dtypes of numpy's RNG keys and of numbers in the metrics history
                    *(type(np.dtype(code)) for code in ("u4", "i4", "i8", "f4", "f8", "?"))]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    state = {"format": FORMAT, **state}
    check_plain(state)
    atomic_save(state, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A hardreid checkpoint as a dict (v1 files converted to v2); a UserError for anything else."""
    path = Path(path)
    state = load_pth(path, "checkpoint", allowed=V1_NUMPY_GLOBALS)
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
        raise UserError(f"{path} is not a hardreid checkpoint (for plain backbone weights use --weights)")
    if state["format"] == FORMAT_V1:
        state = {**_without_numpy(state), "format": FORMAT}
    return state


def _without_numpy(value: Any) -> Any:
    """numpy arrays -> tensors, numpy scalars -> Python numbers (v1 -> v2); numpy's RNG tuple -> the v2 dict."""
    if isinstance(value, tuple) and len(value) == 5 and value[0] == "MT19937" and isinstance(value[1], np.ndarray):
        return {"bit_generator": value[0], "keys": torch.from_numpy(value[1].astype(np.int64)), "pos": int(value[2]),
                "has_gauss": int(value[3]), "cached_gaussian": float(value[4])}
    if isinstance(value, dict):
        return type(value)((k, _without_numpy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_without_numpy(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path, for_evaluation: bool = False) -> None:
    """Load a checkpoint's model weights; a mismatch names both architectures.

    ``for_evaluation``: the weights that were evaluated during training (``eval_model``: e.g. ICE's EMA
    teacher) when the checkpoint has them, else the trained model.
    """
    if not isinstance(state.get("model"), dict):
        raise UserError(f"checkpoint {path} holds no model weights")
    weights = state.get("eval_model", state["model"]) if for_evaluation else state["model"]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        saved = state.get("backbone", "unknown")
        ours = getattr(model, "backbone_name", type(model).__name__)
        first = str(exc).splitlines()[1:2]
        raise UserError(f"checkpoint {path} holds a '{saved}' model (feature dim {state.get('feat_dim')}), which does not fit "
                        f"the '{ours}' model being built ({first[0].strip() if first else exc}). Use the checkpoint's own "
                        "architecture (model.backbone) or another checkpoint.") from None
