"""`hardreid demo`: the pipeline on a tiny set (fast) and the real demo's promise (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hardreid.data.synthetic import SyntheticConfig
from hardreid.demo import DEMO_DATA, demo_config, run_demo
from hardreid.errors import UserError

# The demo's data set, shrunk: same camera styles and options, about 100 training images.
TINY_DATA = SyntheticConfig(**{**DEMO_DATA, "num_train_ids": 10, "num_test_ids": 6, "num_distractors": 2, "seed": 3})
# The demo's settings with a tiny amount of work (clustering kept permissive so that a random network
# always finds some clusters in so few images).
TINY_SETTINGS = {
    "cluster": {"k1": 10, "k2": 3, "eps": 0.6, "min_samples": 2},
    "train": {"iters": 2, "eval_every": 1},
    "eval": {"batch_size": 64},
}


def _scores(entry: dict) -> tuple[float, float]:
    return entry["mAP"], entry["cmc"]["1"]


def test_demo_pipeline_writes_pictures_run_and_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    summary = run_demo(out, epochs=1, settings=TINY_SETTINGS, synthetic=TINY_DATA)
    for name in ("demo_result.json", "ranked_results.png", "training_curves.png", "demo.log",
                 "run/checkpoints/last.pth", "run/metrics.json", "run/train.log", "data/README.txt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "demo_result.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("untrained", "trained"):
        m_ap, top1 = _scores(saved[key])
        assert 0.0 <= m_ap <= 100.0 and 0.0 <= top1 <= 100.0
        assert saved[key]["num_valid_query"] > 0
    assert saved["epochs"] == 1 and saved["iters"] == 2 and saved["seconds"] > 0
    printed = capsys.readouterr().out
    assert "untrained" in printed and "trained" in printed and "ranked_results.png" in printed
    with pytest.raises(UserError, match="earlier demo run"):
        run_demo(out, epochs=1, settings=TINY_SETTINGS, synthetic=TINY_DATA)


def test_demo_config_and_weights_backbone(tmp_path: Path) -> None:
    cfg = demo_config()
    assert cfg.model.backbone == "resnet18" and not cfg.model.weights and cfg.train.device == "cpu"
    assert demo_config(epochs=3).train.epochs == 3
    assert demo_config(settings={"cluster": {"eps": 0.5}}).cluster.eps == 0.5
    # --weights picks the architecture of the file (the CLI documents MobileNetV2 weights)
    for keys, backbone in ((["features.0.0.weight"], "mobilenet_v2"),
                           (["conv1.weight", "layer1.0.conv1.weight", "layer3.1.conv1.weight"], "resnet18"),
                           (["conv1.weight", "layer1.0.conv1.weight", "layer3.5.conv1.weight"], "resnet34"),
                           (["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv3.weight"], "resnet50")):
        path = tmp_path / f"{backbone}.pth"
        torch.save({k: torch.zeros(1) for k in keys}, path)
        cfg = demo_config(weights=str(path))
        assert cfg.model.backbone == backbone and cfg.model.weights == str(path)


@pytest.mark.slow  # three demos, about 8 minutes on 2 cores
def test_real_demo_training_beats_the_untrained_model_over_three_seeds(tmp_path: Path) -> None:
    """15 short epochs from random init vary by about +-5 mAP with the seed (measured at seeds 1 / 2 / 3: 23.0 /
    31.8 / 27.5 from 21.6 at seed 1), so one seed cannot carry a margin: every seed must end above its untrained
    score and the mean gain must be clear."""
    gains = []
    for seed in (1, 2, 3):
        summary = run_demo(tmp_path / f"demo{seed}", settings={"train": {"seed": seed}})
        before, after = _scores(summary["untrained"]), _scores(summary["trained"])
        assert after[0] > before[0], (seed, before, after)
        gains.append(after[0] - before[0])
    assert sum(gains) / len(gains) > 3.0, gains


def _edge_stats(root: Path) -> tuple[float, float]:
    """(spread of the per-camera mean edge colour, mean distance of the central rows to the edge colour)."""
    import numpy as np
    from PIL import Image

    per_cam: dict[str, list[np.ndarray]] = {}
    away = []
    for path in sorted((root / "bounding_box_train").glob("*.jpg")):
        x = np.asarray(Image.open(path).convert("RGB"), float)
        edge = np.concatenate([x[:, :3], x[:, -3:]], axis=1).reshape(-1, 3)
        per_cam.setdefault(path.name.split("_")[1][:2], []).append(edge.mean(0))
        middle = x[x.shape[0] // 5: x.shape[0] * 4 // 5]
        away.append(np.abs(middle - np.median(edge, axis=0)).sum(axis=2).mean())
    means = np.stack([np.mean(v, axis=0) for v in per_cam.values()])
    return float(means.std(axis=0).sum()), float(np.mean(away))


def test_demo_data_options_calm_backgrounds_and_broaden_people(tmp_path: Path) -> None:
    from dataclasses import replace

    from hardreid.data.synthetic import generate_synthetic

    small = SyntheticConfig(num_train_ids=6, num_test_ids=2, num_distractors=0, images_per_camera=2, seed=5)
    plain = _edge_stats(generate_synthetic(tmp_path / "plain", small))
    calm = _edge_stats(generate_synthetic(tmp_path / "calm", replace(small, background_strength=0.35)))
    broad = _edge_stats(generate_synthetic(tmp_path / "broad", replace(small, person_width=1.4)))
    assert calm[0] < 0.75 * plain[0], (calm, plain)  # cameras' scenes differ less ...
    assert calm[0] > 0.0  # ... but still differ
    assert broad[1] > 1.1 * plain[1], (broad, plain)  # more of each row is person
    for bad in ({"background_strength": 1.5}, {"background_strength": -0.1}, {"person_width": 0.2}, {"person_width": 3.0}):
        with pytest.raises(UserError):
            replace(small, **bad).validate()
