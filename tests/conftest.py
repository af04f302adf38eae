"""Shared fixtures: a tiny synthetic data set generated once per session."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hardreid.config import Config, apply_dict

SHARED = Path(__file__).resolve().parents[2] / "shared"
CUHK03 = SHARED / "data" / "cuhk03"
MOBILENET = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    from hardreid.data.synthetic import SyntheticConfig, generate_synthetic

    cfg = SyntheticConfig(num_train_ids=10, num_test_ids=6, num_cameras=2, images_per_camera=3, num_distractors=2, seed=3)
    return generate_synthetic(tmp_path_factory.mktemp("tiny") / "data", cfg)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_root, tmp_path_factory) -> Path:
    """last.pth of a real (tiny) training run: 1 epoch x 1 step of tiny_config on tiny_root."""
    from hardreid.data.datasets import load_dataset
    from hardreid.runs import train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train(tiny_config(train={"epochs": 1, "iters": 1, "eval_every": 0}), load_dataset("market", tiny_root), run,
          log_to_stderr=False)
    return run / "checkpoints" / "last.pth"


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ (not a package) imported as a module, e.g. ``load_benchmark("acfl_ablation")``."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would (dataclasses and pickling look modules up there)
    spec.loader.exec_module(module)
    return module


def tiny_config(**sections) -> Config:
    """Smallest settings that still run every stage: MobileNetV2 at 64x32, 2 epochs x 2 steps."""
    settings = {
        "data": {"format": "market", "height": 64, "width": 32, "workers": 0, "batch_size": 8, "num_instances": 4},
        "model": {"backbone": "mobilenet_v2", "last_stride": 2},
        "cluster": {"k1": 6, "k2": 2, "eps": 0.6, "min_samples": 2},
        "train": {"epochs": 2, "iters": 2, "eval_every": 1, "device": "cpu", "seed": 0},
        "eval": {"batch_size": 32},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    return apply_dict(Config(), settings, "test settings")
