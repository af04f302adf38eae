"""Config: defaults, YAML inheritance, dotted overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardreid.config import Config, config_from_dict, dump_config, load_config, parse_overrides
from hardreid.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_design_values():
    cfg = Config()
    assert (cfg.cluster.k1, cfg.cluster.k2, cfg.cluster.eps, cfg.cluster.min_samples) == (30, 6, 0.5, 4)
    assert (cfg.memory.temperature, cfg.memory.momentum) == (0.05, 0.1)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (3.5e-4, 5e-4)
    assert (cfg.data.batch_size, cfg.data.num_instances, cfg.data.height, cfg.data.width) == (64, 4, 256, 128)


def test_base_yaml_lists_every_key_with_the_default(tmp_path):
    """configs/base.yaml documents every key; loading it changes nothing."""
    import yaml

    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    defaults = Config().to_dict()
    assert {s: set(v) for s, v in base.items()} == {s: set(v) - {"mean", "std"} for s, v in defaults.items()}
    assert load_config(CONFIGS / "base.yaml").to_dict() == defaults


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  epochs: 7\n  iters: 3\nmodel:\n  backbone: resnet18\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\ntrain:\n  iters: 5\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.seed=9", "eval.flip=true", "method.hard_samples=[hpf, hpi]"])
    assert (cfg.train.epochs, cfg.train.iters, cfg.train.seed) == (7, 5, 9)
    assert cfg.model.backbone == "resnet18" and cfg.eval.flip is True
    assert cfg.method.hard_samples == ["hpf", "hpi"]


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    load_config(path)


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    with pytest.raises(UserError, match=r"train\.epoch'.*Did you mean 'train\.epochs'"):
        load_config(None, ["train.epoch=3"])
    (tmp_path / "bad.yaml").write_text("trian:\n  epochs: 3\n")
    with pytest.raises(UserError, match=r"unknown config section 'trian' in .*bad.yaml.*Did you mean 'train'"):
        load_config(tmp_path / "bad.yaml")


def test_bad_values_and_syntax():
    with pytest.raises(UserError, match=r"train\.epochs.*'many'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(UserError, match="section.key=value"):
        parse_overrides(["epochs=3"])
    with pytest.raises(UserError, match="eval.flip"):
        load_config(None, ["eval.flip=maybe"])


def test_base_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(UserError, match="inherits from itself"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "method.hard_samples=[x]"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
