"""`hardreid demo`: synthetic data -> untrained score -> Cluster Contrast on CPU -> trained score."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .config import Config, apply_dict
from .data.datasets import load_dataset
from .data.synthetic import SyntheticConfig, generate_synthetic
from .errors import UserError
from .serialization import load_pth
from .evaluation.pipeline import query_gallery_distances, score_distances
from .models import model_from_config
from .runs import train
from .runtime import resolve_device
from .training.run_files import LOG, setup_logging
from .viz.curves import plot_training_curves
from .viz.ranked import save_ranked_results

# The demo's settings: the Cluster Contrast baseline from random init, small enough for 2 CPU cores in a
# few minutes. Chosen so that training from scratch clearly beats the untrained network:
# - ResNet-18 at 64x32: learns from random init much faster than MobileNetV2 (whose features collapse after
#   the first epoch), and 64x32 steps are ~4x cheaper than 128x64, so 15 epochs fit;
# - pad 3 / no random erasing: the paper's pad 10 and erasing are meant for 256x128 crops; at 64x32 they
#   shift or blank a third of the person and slow learning from scratch a lot;
# - cluster.eps 0.4: tighter clusters (about 35 for the 60 training identities instead of about 25);
# - train.calibrate_bn never: BatchNorm calibration of a random network makes its first features (and so
#   the first pseudo labels) worse here (label ARI 0.07 instead of 0.21);
# - train.eval_at_start false: step 2/4 scores the untrained model already (the same weights: no calibration);
# - workers 0: decoding 64x32 JPEGs is cheap; loader processes would only compete for the 2 cores;
# - sampler pk: the plain P x K sampler the demo was set up and measured with (the base's official
#   multi_camera sampler ended at mAP 26.9 instead of 31.0 from random init in one run, before the per-image augmentation seeds; seeds move the demo by +-5 mAP).
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {"format": "market", "height": 64, "width": 32, "workers": 0, "batch_size": 32, "num_instances": 4,
             "pad": 3, "erasing_p": 0.0, "sampler": "pk"},
    "model": {"backbone": "resnet18", "last_stride": 2},
    "cluster": {"eps": 0.4},
    "optim": {"lr": 3.5e-4, "step_size": 100},
    "train": {"epochs": 15, "iters": 40, "eval_every": 5, "device": "cpu", "seed": 1, "calibrate_bn": "never",
              "eval_at_start": False},
}

# The demo's synthetic data set: the default generator (4 cameras with their own illumination, viewpoint,
# framing, blur and noise; look-alike groups) with calmer camera scenes and broader people, as in real
# detector crops where the person fills most of the box. With the default, very colourful per-camera
# backgrounds a randomly initialised network clusters by camera and cannot learn identities in minutes.
DEMO_DATA: dict[str, Any] = {"background_strength": 0.35, "person_width": 1.4}


def _weights_backbone(path: str) -> str:
    """Architecture of a torchvision-layout state dict (the demo's --weights may be MobileNetV2 or ResNet)."""
    try:
        state = load_pth(path, "weights file")
    except UserError:  # the model loader reports unreadable files with a clear message
        return "mobilenet_v2"
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    keys = set(state) if isinstance(state, dict) else set()
    if "layer1.0.conv3.weight" in keys:
        return "resnet50"
    if "layer1.0.conv1.weight" in keys:
        return "resnet34" if "layer3.5.conv1.weight" in keys else "resnet18"
    return "mobilenet_v2"


def demo_config(epochs: int | None = None, weights: str | None = None,
                settings: dict[str, dict[str, Any]] | None = None) -> Config:
    """DEMO_SETTINGS, then ``settings`` (same nested layout), then ``epochs`` and ``weights``."""
    cfg = apply_dict(Config(), DEMO_SETTINGS, "demo settings")
    if settings:
        apply_dict(cfg, settings, "demo overrides")
    if epochs is not None:
        cfg.train.epochs = epochs
    if weights:
        cfg.model.weights = weights
        cfg.model.backbone = _weights_backbone(weights)
    return cfg


def run_demo(output: Path, epochs: int | None = None, weights: str | None = None,
             settings: dict[str, dict[str, Any]] | None = None, synthetic: SyntheticConfig | None = None) -> dict:
    """Run the whole demo in ``output``; returns and prints the before / after numbers.

    ``settings`` overrides config keys of DEMO_SETTINGS and ``synthetic`` replaces the demo's data set
    (both for tests and experiments; the command line uses the defaults).
    """
    start = time.time()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    setup_logging(output / "demo.log")
    run_dir = output / "run"
    if (run_dir / "checkpoints" / "last.pth").exists():
        raise UserError(f"{run_dir} holds an earlier demo run; remove {output} or pass another --output")
    LOG.info("1/4 generating the synthetic data set in %s", output / "data")
    data_root = generate_synthetic(output / "data", synthetic or SyntheticConfig(**DEMO_DATA), progress=True)
    dataset = load_dataset("market", data_root)
    cfg = demo_config(epochs, weights, settings)
    device = resolve_device(cfg.train.device)
    LOG.info("%s", dataset.summary())
    LOG.info("2/4 scoring the untrained model (%s, %s)", cfg.model.backbone, "weights " + weights if weights else "random init")
    torch.manual_seed(cfg.train.seed)  # the same random init every run
    model = model_from_config(cfg)
    before = score_distances(query_gallery_distances(model, dataset, cfg.data, cfg.eval, device), dataset)
    LOG.info("untrained: mAP %.1f top-1 %.1f", before.mAP, before.rank(1))
    LOG.info("3/4 training Cluster Contrast for %d epochs x %d steps on CPU", cfg.train.epochs, cfg.train.iters)
    result = train(cfg, dataset, run_dir, model=model)
    setup_logging(output / "demo.log")
    LOG.info("4/4 scoring the trained model")
    dist = query_gallery_distances(result.model, dataset, cfg.data, cfg.eval, device)
    after = score_distances(dist, dataset)
    ranked = save_ranked_results(dist, dataset, output / "ranked_results.png")
    curves = plot_training_curves(run_dir, output / "training_curves.png")
    summary = {"untrained": before.to_dict(), "trained": after.to_dict(),
               "seconds": round(time.time() - start, 1), "epochs": cfg.train.epochs, "iters": cfg.train.iters}
    (output / "demo_result.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{'':10}{'mAP':>8}{'top-1':>8}{'top-5':>8}")
    for name, res in (("untrained", before), ("trained", after)):
        print(f"{name:10}{res.mAP:8.1f}{res.rank(1):8.1f}{res.rank(5):8.1f}")
    print(f"\ndone in {summary['seconds']:.0f}s. Pictures: {ranked}, {curves}; run: {run_dir}")
    print(f"evaluate again: hardreid evaluate --checkpoint {run_dir / 'checkpoints' / 'last.pth'} --data-root {data_root}")
    return summary
