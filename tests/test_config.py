"""Config: defaults, YAML inheritance, dotted overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardreid.config import Config, config_from_dict, dump_config, load_config, parse_overrides, validate_config
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
    cfg = load_config(None, ["train.epochs=3", "method.hard_samples=[hpf]"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_values_are_not_truncated_or_guessed(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  epochs: 1.9\n")
    with pytest.raises(UserError, match=r"'train.epochs' in .*a.yaml must be an integer, got 1.9"):
        load_config(tmp_path / "a.yaml")
    for override, message in [("train.epochs=true", "an integer"), ("eval.flip=2", "true or false"),
                              ("optim.lr=inf", "finite number"), ("data.mean=[0.5, x, 0.5]", "data.mean")]:
        with pytest.raises(UserError, match=message):
            load_config(None, [override])
    (tmp_path / "b.yaml").write_text("model:\n  backbone: [resnet50]\neval:\n  flip: 1\n")
    with pytest.raises(UserError, match="'model.backbone'.*text"):
        load_config(tmp_path / "b.yaml")
    cfg = load_config(None, ["eval.flip=yes", "optim.lr=1e-4", "train.epochs=+3", "method.hard_samples=hpf"])
    assert (cfg.eval.flip, cfg.optim.lr, cfg.train.epochs, cfg.method.hard_samples) == (True, 1e-4, 3, ["hpf"])


def test_every_key_says_what_it_accepts_and_every_default_is_accepted():
    from hardreid.config import validate_config
    from hardreid.config.messages import describe

    for section in Config.model_fields:
        model = type(getattr(Config(), section))
        assert model.section == section
        for key, field in model.model_fields.items():
            text, _ = describe(field)
            assert text and "\n" not in text, f"{section}.{key}"
    validate_config(Config())


def test_packaged_configs_load_as_before_the_move_to_pydantic():
    """The dump of every packaged config (and of the defaults) is what the dataclass config gave (golden hashes)."""
    import hashlib

    import yaml

    from hardreid.config import packaged_configs

    golden = dict(reversed(line.split()) for line in (Path(__file__).parent / "golden" / "config_dumps.sha256")
                  .read_text().splitlines() if line and not line.startswith("#"))
    assert sorted(golden) == sorted(packaged_configs() + ["__default__"])
    for name in golden:
        cfg = Config() if name == "__default__" else load_config(name)
        dump = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        assert hashlib.sha256(dump.encode()).hexdigest()[:16] == golden[name], f"{name} changed:\n{dump}"


def test_pydantic_errors_never_reach_the_user():
    """Building a section or a config in Python checks the values; every error is one line naming the key."""
    from hardreid.config import ClusterConfig, DataConfig, OptimConfig

    for build, message in [
        (lambda: ClusterConfig(eps=[0.5]), "config key 'cluster.eps' in the config must be a number in (0, 1) or auto, got [0.5]"),
        (lambda: ClusterConfig(algorithm="dbscn"),
         "config key 'cluster.algorithm' must be one of dbscan, hdbscan, got 'dbscn'. Did you mean 'dbscan'?"),
        (lambda: ClusterConfig(epss=0.5), "unknown config key 'cluster.epss' in the config. Did you mean 'cluster.eps'?"),
        (lambda: DataConfig(height=0), "config key 'data.height' must be an integer >= 1, got 0"),
        (lambda: OptimConfig(milestones=[30, 10]), "config key 'optim.milestones' must be increasing epochs, got [30, 10]"),
        (lambda: Config(data={"batch_size": 6}), "config: data.batch_size (6) must be a multiple of data.num_instances (4)"),
        (lambda: Config(data=3), "config section 'data' in the config must be a mapping of keys, got 3"),
        (lambda: Config(trian={}), "unknown config section 'trian' in the config. Did you mean 'train'?"),
    ]:
        with pytest.raises(UserError) as info:
            build()
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_choices_suggest_and_registries_are_asked_when_checking(monkeypatch):
    from hardreid.config import CHOICES

    with pytest.raises(UserError, match=r"'memory.kind' in command-line overrides must be one of momentum, instance, "
                                        r"queue, got 'instanse'. Did you mean 'instance'\?"):
        load_config(None, ["memory.kind=instanse"])
    with pytest.raises(UserError, match=r"'method.hard_samples' .* distinct names from: .*, got \['hpf', 'mean_teachr'\]. "
                                        r"Did you mean 'mean_teacher'\?"):
        load_config(None, ["method.hard_samples=[hpf, mean_teachr]"])
    backbones = CHOICES["model.backbone"]
    monkeypatch.setitem(CHOICES, "model.backbone", lambda: [*backbones(), "tiny_net"])
    assert load_config(None, ["model.backbone=tiny_net"]).model.backbone == "tiny_net"


def test_rules_give_one_line_with_key_value_and_range():
    with pytest.raises(UserError) as info:
        load_config(None, ["cluster.eps=1.2"])
    assert str(info.value) == "config key 'cluster.eps' in command-line overrides must be a number in (0, 1) or auto, got 1.2"
    with pytest.raises(UserError, match=r"'method.base' .* one of cluster_contrast, ice, spcl, strong_baseline, got 'foo'"):
        load_config(None, ["method.base=foo"])


def test_configs_rebuilt_from_checkpoints_and_set_in_python_are_validated():
    from hardreid.config import validate_config

    values = Config().to_dict()
    values["data"]["batch_size"] = 0
    with pytest.raises(UserError, match="'data.batch_size' in checkpoint config must be an integer >= 1"):
        config_from_dict(values)
    cfg = Config()
    cfg.train.epochs = 2.5
    with pytest.raises(UserError, match="'train.epochs' in the config must be an integer, got 2.5"):
        validate_config(cfg)
    cfg = Config()
    cfg.data.num_instances = 3
    with pytest.raises(UserError, match="multiple of data.num_instances"):
        validate_config(cfg)


def test_config_files_that_are_not_configs(tmp_path):
    (tmp_path / "latin.yaml").write_bytes("train:\n  seed: 1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_config(tmp_path / "latin.yaml")
    (tmp_path / "base5.yaml").write_text("_base_: 5\n")
    with pytest.raises(UserError, match="_base_ in .* must be a file name or a list of file names, got 5"):
        load_config(tmp_path / "base5.yaml")
    with pytest.raises(UserError, match="is a folder, expected a YAML file"):
        load_config(tmp_path)
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    with pytest.raises(UserError, match="loop.yaml"):
        load_config(tmp_path / "loop.yaml")


def _flat(tree: dict, prefix: str = "") -> dict:
    return {k: v for key, value in tree.items()
            for k, v in (_flat(value, f"{prefix}{key}.").items() if isinstance(value, dict) else [(prefix + key, value)])}


def test_the_cpu_config_for_own_data_is_the_official_one_with_its_changes():
    """cluster_contrast/cpu_mobilenet.yaml (what a new user starts from) = cpu_official.yaml (Cluster Contrast as
    published, at CPU size) + min_samples 2 + the camera_proxy loss + the camera-aware pseudo labels of
    camera_aware.yaml (auto); SHNG's CPU configs keep the official base with camera_aware.yaml."""
    official = _flat(load_config(CONFIGS / "cluster_contrast" / "cpu_official.yaml").to_dict())
    own = _flat(load_config(CONFIGS / "cluster_contrast" / "cpu_mobilenet.yaml").to_dict())
    assert {k for k in own if own[k] != official[k]} == {"cluster.min_samples", "method.hard_samples",
                                                         "model.camera_bn", "cluster.jaccard"}
    assert (official["cluster.min_samples"], official["cluster.eps"], official["method.hard_samples"]) == (4, 0.6, [])
    assert (own["cluster.min_samples"], own["method.hard_samples"]) == (2, ["camera_proxy"])
    for name in ("cpu_mobilenet.yaml", "cpu_20_epochs.yaml"):
        hng = _flat(load_config(CONFIGS / "hng" / name).to_dict())
        assert (hng["cluster.min_samples"], hng["method.hard_samples"]) == (4, ["hng"])
        assert (hng["model.camera_bn"], hng["cluster.jaccard"]) == ("auto", "auto")
        assert all(hng[k] == official[k] for k in official if k.startswith(("cluster.", "model.", "memory.", "data."))
                   and k not in ("model.camera_bn", "cluster.jaccard")), name


def test_code_takes_the_names_of_a_choice_from_the_config():
    from hardreid.config import choices_of
    from hardreid.losses import ALIGNMENTS
    from hardreid.methods.bases.cluster_contrast import MEMORY_KINDS

    assert MEMORY_KINDS == choices_of("memory.kind") == ("momentum", "instance", "queue")
    assert ALIGNMENTS == ("re", "distance")
    with pytest.raises(UserError, match=r"strong_baseline.triplet_margin must be in \[0, 1\] with "
                                        r"method.base=strong_baseline, got 1.5"):
        load_config(None, ["method.base=strong_baseline", "strong_baseline.triplet_margin=1.5"])
    assert load_config(None, ["strong_baseline.triplet_margin=1.5"]).strong_baseline.triplet_margin == 1.5


# -- property test: any value given on the command line ---------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, derandomize=True)  # the same examples on every run (CI)
@given(key=st.sampled_from(["train.epochs", "cluster.eps", "cluster.k1", "optim.lr", "data.height", "method.base",
                            "memory.kind", "optim.milestones", "acfl.hpf_steps", "train.seed"]),
       value=st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                       st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n\r"), max_size=20)))
def test_any_override_loads_or_fails_in_one_line_naming_its_key(key, value):
    """Hypothesis: every value for these keys either gives a config that validates again, or a UserError of one line
    that names the key (never a traceback from pydantic or YAML)."""
    from hardreid.errors import UserError

    try:
        cfg = load_config(None, [f"{key}={value}"])
    except UserError as err:
        message = str(err)
        assert "\n" not in message and key in message, message
        return
    validate_config(cfg)
