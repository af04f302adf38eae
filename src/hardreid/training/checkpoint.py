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
from ..serialization import NUMPY_GLOBALS, check_plain, load_pth
from .run_files import atomic_save

FORMAT = "hardreid-checkpoint-v2"
FORMAT_V1 = "hardreid-checkpoint-v1"
V1_NUMPY_GLOBALS = NUMPY_GLOBALS  # the dtypes of numpy's RNG keys and of numbers in the metrics history among them


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
    check_checkpoint_keys(state, path)
    return state


# key -> (required, accepted types, what it is): checked before anything reads the checkpoint
CHECKPOINT_KEYS: dict[str, tuple[bool, tuple[type, ...], str]] = {
    "config": (True, (dict,), "the run's config as a dict"),
    "model": (True, (dict,), "the model's state dict"),
    "eval_model": (False, (dict,), "the evaluated model's state dict"),
    "epoch": (False, (int,), "the number of finished epochs"),
    "backbone": (False, (str,), "the backbone's name"),
    "feat_dim": (False, (int,), "the feature dimension"),
}


def check_checkpoint_keys(state: dict[str, Any], path: str | Path) -> None:
    """Each key a command reads has the right type; one line naming the key otherwise."""
    for key, (required, types, what) in CHECKPOINT_KEYS.items():
        if key not in state:
            if required:
                raise UserError(f"checkpoint {path} has no '{key}' ({what}): it is damaged or was not written by hardreid "
                                "train; use another checkpoint")
            continue
        value = state[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise UserError(f"checkpoint {path}: '{key}' should be {what} ({'/'.join(t.__name__ for t in types)}), "
                            f"found {type(value).__name__}: the file is damaged; use another checkpoint")


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
    except RuntimeError:
        saved = state.get("backbone", "unknown")
        ours = getattr(model, "backbone_name", type(model).__name__)
        raise UserError(f"checkpoint {path} holds a '{saved}' model (feature dim {state.get('feat_dim')}), which does not fit "
                        f"the '{ours}' model being built ({state_dict_differences(model.state_dict(), weights)}). Use the "
                        "checkpoint's own architecture (model.backbone) or another checkpoint.") from None


def _first(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def state_dict_differences(expected: dict[str, Any], given: dict[str, Any]) -> str:
    """How ``given`` differs from ``expected`` in a few words: the first missing, unexpected and mis-shaped keys
    with counts (an architecture mismatch lists hundreds of keys; the message stays one readable line)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shaped = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in given and hasattr(given[k], "shape") and hasattr(v, "shape") and tuple(given[k].shape) != tuple(v.shape)]
    parts = [f"{len(missing)} missing keys: {_first(missing)}" if missing else "",
             f"{len(unexpected)} unexpected keys: {_first(unexpected)}" if unexpected else "",
             f"{len(shaped)} keys of another shape: {_first(shaped, 2)}" if shaped else ""]
    return "; ".join(p for p in parts if p) or "the weights do not load"
