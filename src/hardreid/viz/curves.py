"""Training curves from a run's metrics (ACFL Fig. 5a style: top-1, mAP, clusters, outliers per epoch).

A third panel shows the label-free pseudo-label diagnostics when the run has them
(``pseudo_labels.diagnostics``): share of images in large clusters, share of
one-camera clusters, ARI with the previous epoch's partition, and a red mark at
every epoch whose collapse warning fired.  When the run scored the model it started from
(``train.eval_at_start``: RUN_DIR/start_scores.json), the accuracy curves begin at epoch 0 with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from ..files import atomic_save_figure
from ..errors import UserError

DIAGNOSTICS = (("large_cluster_share", "images in large clusters", "purple"),
               ("single_camera_share", "one-camera clusters", "orange"),
               ("partition_ari", "ARI vs last epoch", "teal"))


def _points(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(row["epoch"], row[key]) for row in history if row.get(key) is not None]


def _read_rows(path: Path, many: bool) -> list[dict]:
    """The epoch rows of ``metrics.json`` (a list) or the one row of ``start_scores.json``; a damaged file is a
    UserError naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}. It is damaged; 'hardreid train --resume' rewrites it") from None
    rows = value if many else [value]
    if not isinstance(rows, list) or not all(isinstance(row, dict) and isinstance(row.get("epoch"), int) for row in rows):
        raise UserError(f"{path} does not hold hardreid epoch rows (a list of objects with an 'epoch' number); "
                        "'hardreid train --resume' rewrites it")
    return rows


def plot_training_curves(run_dir: str | Path, out_path: str | Path | None = None, diagnostics: bool = True) -> Path:
    """Accuracy (mAP, top-1), pseudo labels (clusters, outliers) and, when recorded, their diagnostics, per epoch.

    ``diagnostics=False``: the two panels of ACFL's Fig. 5a only.
    """
    run_dir = Path(run_dir)
    history = _read_rows(run_dir / "metrics.json", many=True)
    epochs = [row["epoch"] for row in history]
    start_file = run_dir / "start_scores.json"
    start = _read_rows(start_file, many=False) if start_file.exists() else []
    with_diagnostics = diagnostics and any(_points(history, key) for key, _, _ in DIAGNOSTICS)
    panels = 3 if with_diagnostics else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    acc, lab = axes[0], axes[1]
    for key, colour in (("top1", "green"), ("mAP", "red")):
        points = _points(start + history, key)
        if points:
            acc.plot(*zip(*points), marker="o", color=colour, label="top-1" if key == "top1" else key)
    acc.set_xlabel("epoch"), acc.set_ylabel("%"), acc.set_title("accuracy"), acc.grid(alpha=0.3)
    if acc.lines:
        acc.legend()
    lab.plot(epochs, [row["clusters"] for row in history], marker="o", color="black", label="clusters")
    lab.plot(epochs, [row["outliers"] for row in history], marker="s", color="grey", label="outliers")
    lab.set_xlabel("epoch"), lab.set_title("pseudo labels"), lab.grid(alpha=0.3), lab.legend()
    if with_diagnostics:
        diag, lowest = axes[2], 0.0
        for key, label, colour in DIAGNOSTICS:
            points = _points(history, key)
            if points:
                diag.plot(*zip(*points), marker=".", color=colour, label=label)
                lowest = min(lowest, *(v for _, v in points))  # the ARI can be negative
        warned = [row["epoch"] for row in history if row.get("collapse_warning")]
        if warned:
            diag.scatter(warned, [1.02] * len(warned), marker="v", color="red", label="collapse warning", zorder=3)
        diag.set_ylim(lowest - 0.05, 1.08), diag.set_xlabel("epoch"), diag.set_title("pseudo-label diagnostics")
        diag.grid(alpha=0.3), diag.legend(fontsize=7)
    if epochs:  # one epoch axis for all panels, from the start (epoch 0) when it was scored
        first = min(epochs + [row["epoch"] for row in start])
        for ax in axes:
            ax.set_xlim(first - 0.5, max(epochs) + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    out = Path(out_path) if out_path else run_dir / "curves.png"
    atomic_save_figure(out, fig, dpi=110)
    plt.close(fig)
    return out
