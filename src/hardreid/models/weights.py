"""Loading weight files into a module: every key present with its shape, or one clear error."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError


def load_fitting_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, name: str, hint: str) -> None:
    """Load ``state`` into ``module`` only if every key is there with its shape; else a UserError naming examples."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise UserError(
            f"weights file {path} does not fit backbone '{name}': {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(wrong)} with other shapes (e.g. {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:2]]}). "
            f"{hint}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
