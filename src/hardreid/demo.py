"""`hardreid demo`: synthetic data -> untrained score -> Cluster Contrast on CPU -> trained score."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import Config, apply_dict
from .data.datasets import load_dataset
from .data.synthetic import SyntheticConfig, generate_synthetic
from .errors import UserError
from .evaluation.pipeline import query_gallery_distances, score_distances
from .training import model_from_config, resolve_device, train
from .training.run_files import LOG, setup_logging
from .viz.curves import plot_training_curves
from .viz.ranked import save_ranked_results

# The demo's settings: the Cluster Contrast baseline, small enough for 2 CPU cores in a few minutes.
DEMO_SETTINGS = {
    "data": {"format": "market", "height": 128, "width": 64, "workers": 2, "batch_size": 32, "num_instances": 4},
    "model": {"backbone": "mobilenet_v2", "last_stride": 2},
    "cluster": {"eps": 0.5},
    "optim": {"lr": 3.5e-4, "step_size": 100},
    "train": {"epochs": 10, "iters": 40, "eval_every": 0, "device": "cpu", "seed": 1},
}


def demo_config(epochs: int | None = None, weights: str | None = None) -> Config:
    cfg = apply_dict(Config(), DEMO_SETTINGS, "demo settings")
    if epochs is not None:
        cfg.train.epochs = epochs
    if weights:
        cfg.model.weights = weights
    return cfg


def run_demo(output: Path, epochs: int | None = None, weights: str | None = None) -> dict:
    """Run the whole demo in ``output``; returns and prints the before / after numbers."""
    start = time.time()
    output.mkdir(parents=True, exist_ok=True)
    setup_logging(output / "demo.log")
    run_dir = output / "run"
    if (run_dir / "checkpoints" / "last.pth").exists():
        raise UserError(f"{run_dir} holds an earlier demo run; remove {output} or pass another --output")
    LOG.info("1/4 generating the synthetic data set in %s", output / "data")
    data_root = generate_synthetic(output / "data", SyntheticConfig(), progress=True)
    dataset = load_dataset("market", data_root)
    cfg = demo_config(epochs, weights)
    device = resolve_device(cfg.train.device)
    LOG.info("%s", dataset.summary())
    LOG.info("2/4 scoring the untrained model (%s, %s)", cfg.model.backbone, "weights " + weights if weights else "random init")
    model = model_from_config(cfg)
    before = score_distances(query_gallery_distances(model, dataset, cfg.data, cfg.eval, device), dataset)
    LOG.info("untrained: mAP %.1f top-1 %.1f", 100 * before.mAP, 100 * before.cmc[0])
    LOG.info("3/4 training Cluster Contrast for %d epochs x %d steps on CPU", cfg.train.epochs, cfg.train.iters)
    result = train(cfg, dataset, run_dir, model=model)
    setup_logging(output / "demo.log")
    LOG.info("4/4 scoring the trained model")
    dist = query_gallery_distances(result.model, dataset, cfg.data, cfg.eval, device)
    after = score_distances(dist, dataset)
    ranked = save_ranked_results(dist, dataset, output / "ranked_results.png")
    curves = plot_training_curves(run_dir, output / "training_curves.png")
    summary = {"untrained": before.to_dict(percent=True), "trained": after.to_dict(percent=True),
               "seconds": round(time.time() - start, 1), "epochs": cfg.train.epochs, "iters": cfg.train.iters}
    (output / "demo_result.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{'':10}{'mAP':>8}{'top-1':>8}{'top-5':>8}")
    for name, res in (("untrained", before), ("trained", after)):
        print(f"{name:10}{100 * res.mAP:8.1f}{100 * res.cmc[0]:8.1f}{100 * res.cmc[4]:8.1f}")
    print(f"\ndone in {summary['seconds']:.0f}s. Pictures: {ranked}, {curves}; run: {run_dir}")
    print(f"evaluate again: hardreid evaluate --checkpoint {run_dir / 'checkpoints' / 'last.pth'} --data-root {data_root}")
    return summary
