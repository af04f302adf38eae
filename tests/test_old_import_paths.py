"""The import paths of before the methods package (issue 23) work for one release, each with a DeprecationWarning
that names the new path; an old module is the new module (the same classes, registries and monkeypatch targets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = r'''
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import hardreid.hard_samples.hpi as old_hpi
    from hardreid.hard_samples.hng import fusion as old_fusion
    from hardreid.training import methods as old_methods
    from hardreid.training.bases.ice import ICE as OldICE
    from hardreid.training import model_from_config as old_model_from_config
    from hardreid.training.trainer import resolve_device as old_resolve_device
import hardreid.methods as M
import hardreid.methods.generators.hng.fusion as fusion
import hardreid.methods.generators.hpi as hpi
from hardreid.config import Config
from hardreid.methods.bases.cluster_contrast import ClusterContrast
from hardreid.methods.bases.ice import ICE
from hardreid.models import model_from_config
from hardreid.runtime import resolve_device

assert old_hpi is hpi and old_fusion is fusion and OldICE is ICE
assert old_methods.ClusterContrast is ClusterContrast and old_methods.BASES is M.BASES
assert old_methods.build_method is M.build_method and old_model_from_config is model_from_config
assert old_resolve_device is resolve_device
method = old_methods.build_method(Config(), resolve_device("cpu"))  # still works through the old path
assert isinstance(method.base, ClusterContrast)
messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
for old, new in (("hardreid.hard_samples.hpi", "hardreid.methods.generators.hpi"),
                 ("hardreid.hard_samples.hng.fusion", "hardreid.methods.generators.hng.fusion"),
                 ("hardreid.training.methods", "hardreid.methods"),
                 ("hardreid.training.bases.ice", "hardreid.methods.bases.ice"),
                 ("hardreid.training.model_from_config", "hardreid.models.model_from_config"),
                 ("hardreid.training.trainer.resolve_device", "hardreid.runtime.resolve_device")):
    assert any(m.startswith(f"{old} is deprecated: use {new} ") for m in messages), (old, messages)
print("ok")
'''


def test_old_paths_warn_and_still_work():
    # a fresh interpreter: the old modules warn when first imported, which the test session may have done already
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_new_paths_do_not_warn():
    """hardreid itself uses no old path: importing every package of it gives none of the warnings above."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import hardreid, hardreid.cli, hardreid.runs, hardreid.demo, hardreid.viz.figures, hardreid.export\n"
            "    import hardreid.retrieval, hardreid.methods.bases, hardreid.methods.generators, hardreid.methods.addons\n"
            "print([str(w.message) for w in caught if 'is deprecated: use hardreid' in str(w.message)])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-3000:]
