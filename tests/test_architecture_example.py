"""docs/architecture.md's worked example, run as the document shows it: the toy generator's code block registers
``toy_closer_negatives``, its YAML loads, the generator changes the base's cluster logits as the text says, and a
tiny run trains with it."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hardreid.methods as M
from hardreid.config import CONFIG_DIR, Config, load_config
from hardreid.data.datasets import load_dataset
from hardreid.methods.bases.cluster_contrast import ClusterContrast
from hardreid.methods.registry import HARD_SAMPLES
from hardreid.training import train

from conftest import tiny_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
NAME = "toy_closer_negatives"


def doc_blocks(language: str) -> list[str]:
    """The fenced ``language`` blocks after the worked-example marker, in order."""
    text = DOC.read_text()
    after = text[text.index("<!-- worked-example:"):]
    return re.findall(rf"```{language}\n(.*?)```", after, flags=re.S)


@pytest.fixture
def toy():
    """The document's code block executed as a module of its own; the registration is undone afterwards."""
    module = types.ModuleType("toy_generator")
    exec(compile(doc_blocks("python")[0], f"{DOC}:toy_generator", "exec"), module.__dict__)
    assert HARD_SAMPLES[NAME] is module.CloserNegatives
    yield module
    del HARD_SAMPLES[NAME]


def test_the_toy_generator_makes_negatives_closer(toy):
    torch.manual_seed(0)
    n, clusters = 12, 3
    labels = torch.arange(n) % clusters
    data = M.EpochData(0, F.normalize(torch.randn(n, 8), dim=1), labels, torch.zeros(n, dtype=torch.long), clusters)
    plain, hard = ClusterContrast(Config(), torch.device("cpu")), ClusterContrast(Config(), torch.device("cpu"))
    method = M.ComposedMethod(hard, [toy.CloserNegatives(Config(), torch.device("cpu"))])
    for base in (plain, hard):
        base.start_epoch(data, torch.nn.Identity())
    q = F.normalize(torch.randn(4, 8), dim=1)
    own = torch.tensor([0, 1, -1, 2])  # -1: no own prototype, every one is a negative
    before, after = plain.cluster_logits(q, own), hard.cluster_logits(q, own)
    shift = 0.1 * (q * q).sum(1, keepdim=True) / Config().memory.temperature  # step |q|^2 / tau
    expected = before + shift
    for row, label in enumerate(own.tolist()):
        if label >= 0:
            expected[row, label] = before[row, label]  # the query's own prototype does not move
    torch.testing.assert_close(after, expected)
    assert method.end_epoch(0, None)["toy_shift"] == pytest.approx(float(shift.mean()), rel=1e-5)


def test_the_toy_generator_trains_from_its_yaml(toy, tiny_root, tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "market1501.yaml").write_text(doc_blocks("yaml")[0])
    (tmp_path / "cluster_contrast").symlink_to(CONFIG_DIR / "cluster_contrast")
    cfg = load_config(tmp_path / "toy" / "market1501.yaml")
    assert cfg.method.base == "cluster_contrast" and cfg.method.hard_samples == [NAME]
    tiny = tiny_config(method={"hard_samples": [NAME]}, train={"epochs": 1, "iters": 1, "eval_every": 0})
    result = train(tiny, load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
    row = result.final
    assert row["toy_shift"] > 0 and torch.isfinite(torch.tensor(row["loss"]))
