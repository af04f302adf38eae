"""Per-epoch pictures of hard negative generation: image grids and the paper's Fig. 2 curves.

The component (``component.py``) calls these with what they draw (its generator and settings), so this module does
not know the component: the import runs one way."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torchvision.utils import save_image

from ....config import HngConfig
from .fusion import fuse
from .networks import Generator, to_gan_space
from ....files import atomic_save_figure


@torch.no_grad()
def save_picture_grid(generator: Generator, h: HngConfig, mean: Sequence[float], std: Sequence[float],
                      anchors: torch.Tensor, negatives: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """Rows: anchor / negative / generated hard negative / reconstruction (columns: samples), from ``generator`` as
    it is now; ``h``: the fusion settings (``cfg.hng``); ``mean``, ``std``: the re-ID input normalisation."""
    device = next(generator.parameters()).device
    a = to_gan_space(anchors.float().to(device), mean, std)
    n = to_gan_space(negatives.float().to(device), mean, std)
    f_a, f_n = generator.encode(a), generator.encode(n)
    fused = fuse(h.fusion, f_a, f_n, h.fusion_lambda, h.part_stride, h.noise_std, torch.Generator().manual_seed(seed))
    rows = torch.cat([a, n, generator.decode(fused.features), generator.reconstruct(f_a)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(((rows + 1) / 2).clamp(0, 1).cpu(), path, nrow=len(anchors), padding=2)
    return path


def plot_hard_negative_statistics(history: list[dict[str, float]], path: Path) -> Path:
    """Paper Fig. 2: anchor-negative similarity (top) and loss (bottom), generated vs mined hard negatives."""
    fig, (sim, loss) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for kind, colour in (("generated", "red"), ("mined", "blue")):
        for ax, key in ((sim, f"hng_sim_{kind}"), (loss, f"hng_loss_{kind}")):
            points = [(row["epoch"], row[key]) for row in history if key in row]
            if points:
                ax.plot(*zip(*points), marker="o", color=colour, label=f"{kind} hard negative")
    joint = [row["epoch"] for row in history if row.get("hng_stage_joint")]
    for ax, label in ((sim, "anchor-negative cosine similarity"), (loss, "loss")):
        if joint:
            ax.axvline(min(joint) - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(label), ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    loss.set_xlabel("epoch (dashed: joint fine-tuning starts)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(path, fig, dpi=100)
    plt.close(fig)
    return path
