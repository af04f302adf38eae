"""benchmarks/hng_ablation.py on the tiny set: every row, and the shared warm-up that rows continue from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hardreid.training.checkpoint import load_checkpoint

from conftest import load_benchmark, tiny_config


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("hng_ablation")


def test_shared_warmup_rows_continue_from_one_checkpoint(bench, tiny_root, tmp_path, capsys):
    cfg = tiny_config(method={"hard_samples": ["hng"]}, hng={"warmup_epochs": 1, "ngf": 4, "ndf": 4},
                      train={"epochs": 2, "iters": 1, "eval_every": 1})
    config = tmp_path / "hng.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    runs, out = tmp_path / "runs", tmp_path / "results" / "hng.json"
    results = bench.main(["--data", str(tiny_root), "--format", "market", "--config", str(config), "--shared-warmup",
                          "--output", str(runs), "--out", str(out)])
    assert [r["row"] for r in results["table2"]] == [name for name, _ in bench.TABLE2]
    assert [r["row"] for r in results["table1"]] == ["cluster_contrast", "cluster_contrast+Ours"]
    warm, warm_concat = runs / "cluster_contrast_warmup", runs / "cluster_contrast_warmup_concat"
    assert json.loads(out.read_text())["shared_warmup"] and "shared warm-up" in out.with_suffix(".md").read_text()

    warm_state = load_checkpoint(warm / "checkpoints" / "last.pth")
    assert warm_state["epoch"] == 1
    for r in results["table2"]:
        history = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        start = warm_concat if r["fusion"] == "concat" else warm
        assert r["warmup_from"] == str(start / "checkpoints" / "last.pth")
        # the warm-up epoch is the shared run's, the joint epoch is the row's own
        assert history[0] == json.loads((start / "metrics.json").read_text())[0]
        assert [h["epoch"] for h in history] == [1, 2] and r["mAP"] == pytest.approx(history[-1]["mAP"])
        assert ("hng_stage_joint" in history[-1]) == (r["fusion"] is not None)
        assert r["seconds_per_step"] == pytest.approx(history[-1]["seconds_per_step"])
    # Table 1 reuses the Table 2 runs of the same base and fusion
    assert results["table1"][1]["run_dir"] == results["table2"][-1]["run_dir"]

    # a warm-up run with other settings is refused, the same one is reused
    warm_cfg = bench.row_config(bench.load_config(str(config), []), "cluster_contrast", "part")
    assert bench.warmup_run(warm_cfg, None, warm) == warm / "checkpoints" / "last.pth"
    assert "reusing the warm-up run" in capsys.readouterr().out
    warm_cfg.hng.ngf = 8
    with pytest.raises(SystemExit, match="other settings"):
        bench.warmup_run(warm_cfg, None, warm)
