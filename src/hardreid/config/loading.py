"""Building a config: defaults, YAML files that inherit (``_base_``), dotted ``key=value`` overrides from the
command line, the packaged configs by name; and writing one back (``dump_config``)."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .schema import Config
from .validation import apply_dict, validate_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped with the package (package data)


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and merge it over its ``_base_`` chain (paths relative to the file)."""
    try:
        path = path.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop
        raise UserError(f"config file {path} cannot be resolved: {exc}") from None
    if path in seen:
        raise UserError(f"config {path} inherits from itself through _base_")
    if path.is_dir():
        raise UserError(f"config {path} is a folder, expected a YAML file (e.g. {path}/market1501.yaml)")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
                        f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:  # empty, or comments only: most likely a file that was not saved or the wrong one
        raise UserError(f"config file {path} is empty: give a config with sections (data:, model:, ...); to use every "
                        "default on purpose, leave out --config or write {} into the file")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UserError(f"_base_ in {path} must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        _deep_merge(merged, read_yaml(path.parent / base, seen + (path,)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.epochs=5", "model.backbone=resnet18"]`` -> nested dict of strings."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"override '{item}' must look like section.key=value, e.g. train.epochs=5")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def packaged_configs() -> list[str]:
    """Names of the packaged configs (``acfl/market1501``, ...), for ``--config NAME``."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


def resolve_config(name_or_file: str | Path) -> Path:
    """A YAML file that exists, else the packaged config of that name (``acfl/market1501``, ``.yaml`` optional).

    ``configs/acfl/market1501.yaml`` (the checkout's path) also resolves to the packaged file when there is
    no such file relative to the working directory.
    """
    path = Path(name_or_file).expanduser()
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removeprefix("configs/")
    packaged = CONFIG_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    if path.is_dir():
        raise UserError(f"config {path} is a folder, expected a YAML file or a config name such as acfl/market1501")
    names = packaged_configs()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else " 'hardreid configs' lists the names."
    raise UserError(f"config {name_or_file} does not exist: it is neither a file nor a packaged config name.{hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: Config | None = None) -> Config:
    """Defaults (or a copy of ``base``), then the YAML file or packaged config (with its bases), then command-line
    overrides; validated."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    if path is not None:
        apply_dict(cfg, read_yaml(resolve_config(path)), str(path))
    if overrides:
        apply_dict(cfg, parse_overrides(overrides), "command-line overrides")
    return validate_config(cfg)


def config_from_dict(values: dict[str, Any], source: str = "checkpoint config") -> Config:
    """Rebuild a Config saved in a checkpoint (unknown keys and bad values are an error)."""
    if not isinstance(values, dict):
        raise UserError(f"{source} must be a mapping of sections, got {type(values).__name__}")
    return validate_config(apply_dict(Config(), values, source))


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (a kill never leaves a half-written config.yaml)."""
    from ..files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
