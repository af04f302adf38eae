"""Packaging: configs shipped as package data and found by name, py.typed, LICENSE, one version, ruff-clean code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hardreid
from hardreid.cli import main
from hardreid.config import CONFIG_DIR, load_config, packaged_configs, resolve_config
from hardreid.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_configs_are_found_by_name_and_files_still_work(tmp_path, monkeypatch):
    assert CONFIG_DIR == ROOT / "src" / "hardreid" / "configs"
    assert (ROOT / "configs").resolve() == CONFIG_DIR  # the checkout's configs/ is the packaged folder
    names = packaged_configs()
    assert {"base", "acfl/market1501", "cluster_contrast/cpu_mobilenet", "hng/cpu_mobilenet"} <= set(names)
    assert len(names) == len(list(CONFIG_DIR.rglob("*.yaml")))
    by_file = load_config(CONFIG_DIR / "acfl" / "market1501.yaml")
    assert by_file.method.hard_samples == ["hpf", "hpi"]
    monkeypatch.chdir(tmp_path)  # no configs/ here: names (and the checkout's paths) resolve to the package's files
    for name in ("acfl/market1501", "acfl/market1501.yaml", "configs/acfl/market1501.yaml"):
        assert load_config(name) == by_file
    (tmp_path / "mine.yaml").write_text("_base_: " + str(CONFIG_DIR / "acfl" / "market1501.yaml") + "\ntrain:\n  epochs: 3\n")
    assert load_config("mine.yaml").train.epochs == 3 and resolve_config("mine.yaml") == Path("mine.yaml")
    with pytest.raises(UserError, match="acfl/markt1501 does not exist.*Did you mean acfl/market1501"):
        load_config("acfl/markt1501")
    with pytest.raises(UserError, match="is a folder"):
        load_config(str(tmp_path))


def test_configs_command_and_version(capsys):
    assert main(["configs", "acfl/t2_"]) == 0
    out = capsys.readouterr().out.split()
    assert "acfl/t2_full" in out and all(name.startswith("acfl/t2_") for name in out)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"hardreid {hardreid.__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion =" not in pyproject.split("[tool.setuptools.dynamic]")[0]


def test_license_matches_pyproject():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (pip wheel, no network: the installed setuptools builds it)."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = (tmp / "dist").glob("hardreid-*.whl")
    return found


def test_wheel_ships_configs_py_typed_and_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {n for n in names if n.startswith("hardreid/configs/") and n.endswith(".yaml")}
    assert len(configs) == len(packaged_configs()) and "hardreid/configs/acfl/market1501.yaml" in configs
    assert "hardreid/py.typed" in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert any(n.startswith(dist_info) and n.endswith("LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert f"Version: {hardreid.__version__}\n" in metadata and "License-Expression: MIT" in metadata
    assert f"hardreid-{hardreid.__version__}-" in wheel.name


def test_installed_wheel_finds_configs_by_name_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import hardreid, hardreid.config as c; cfg = c.load_config('acfl/market1501'); "
            "print(hardreid.__file__); print(cfg.method.hard_samples, cfg.memory.kind)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [str(site / "hardreid" / "__init__.py"), "['hpf', 'hpi'] instance"]


def test_code_is_clean_under_the_projects_ruff_config():
    ruff = shutil.which("ruff") or (Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install 'hardreid[dev]')")
    done = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
