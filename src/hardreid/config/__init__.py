"""Typed configuration: pydantic models with the papers' defaults, YAML files that inherit (``_base_``), and dotted
``key=value`` overrides from the command line.

* :mod:`.schema` and :mod:`.method_sections`: the sections (``cfg.train.epochs``), each key with its type, bounds
  (``Field(ge=...)``), choices (``Literal[...]``) and default; the rules between keys (``Config.rules_between_keys``).
* :mod:`.fields`: the strict value types (an integer key refuses ``1.9`` and ``true``, a number key ``nan``, a text
  key numbers) and the rules bounds and choices cannot say.
* :mod:`.choices`: the names that registries above the config hold (``method.base``, ``model.backbone``, ...).
* :mod:`.validation`: ``apply_dict``, ``validate_config``, ``check_section``; :mod:`.messages`: pydantic's errors
  as one-line UserErrors naming the key, the source, the value and what is allowed (did you mean ...).
* :mod:`.loading`: YAML with ``_base_``, overrides, packaged config names, ``load_config``, ``config_from_dict``,
  ``dump_config``.
"""

from __future__ import annotations

from .choices import CHOICES, register_choices, registered
from .loading import (CONFIG_DIR, config_from_dict, dump_config, load_config, packaged_configs, parse_overrides,
                      read_yaml, resolve_config)
from .method_sections import AcflConfig, HngConfig, IceConfig, SpclConfig, StrongBaselineConfig
from .schema import (ClusterConfig, Config, DataConfig, EvalConfig, MemoryConfig, MethodConfig, ModelConfig,
                     OptimConfig, TrainConfig, choices_of)
from .validation import apply_dict, check_section, validate_config

load = load_config

__all__ = [
    "CHOICES", "CONFIG_DIR", "AcflConfig", "ClusterConfig", "Config", "DataConfig", "EvalConfig", "HngConfig",
    "IceConfig", "MemoryConfig", "MethodConfig", "ModelConfig", "OptimConfig", "SpclConfig", "StrongBaselineConfig",
    "TrainConfig", "apply_dict", "check_section", "choices_of", "config_from_dict", "dump_config", "load", "load_config",
    "packaged_configs", "parse_overrides", "read_yaml", "register_choices", "registered", "resolve_config",
    "validate_config",
]
