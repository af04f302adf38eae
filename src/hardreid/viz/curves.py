"""Training curves from a run's metrics (ACFL Fig. 5a style: top-1, mAP, clusters, outliers per epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_training_curves(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Two panels: accuracy (mAP, top-1) and pseudo labels (clusters, outliers) against epoch."""
    run_dir = Path(run_dir)
    history = json.loads((run_dir / "metrics.json").read_text())
    epochs = [row["epoch"] for row in history]
    fig, (acc, lab) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, colour in (("top1", "green"), ("mAP", "red")):
        points = [(row["epoch"], row[key]) for row in history if key in row]
        if points:
            acc.plot(*zip(*points), marker="o", color=colour, label="top-1" if key == "top1" else key)
    acc.set_xlabel("epoch"), acc.set_ylabel("%"), acc.set_title("accuracy"), acc.grid(alpha=0.3)
    if acc.lines:
        acc.legend()
    lab.plot(epochs, [row["clusters"] for row in history], marker="o", color="black", label="clusters")
    lab.plot(epochs, [row["outliers"] for row in history], marker="s", color="grey", label="outliers")
    lab.set_xlabel("epoch"), lab.set_title("pseudo labels"), lab.grid(alpha=0.3), lab.legend()
    fig.tight_layout()
    out = Path(out_path) if out_path else run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
