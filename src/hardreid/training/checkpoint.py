"""Checkpoint files: atomic writes, clear errors on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .run_files import atomic_save

FORMAT = "hardreid-checkpoint-v1"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    atomic_save({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises many kinds of errors
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a hardreid checkpoint (for plain backbone weights use --weights)")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path, for_evaluation: bool = False) -> None:
    """Load a checkpoint's model weights; a mismatch names both architectures.

    ``for_evaluation``: the weights that were evaluated during training (``eval_model``: e.g. ICE's EMA
    teacher) when the checkpoint has them, else the trained model.
    """
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
