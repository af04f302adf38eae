"""Stage 1 of ``benchmarks/device_run.py``, ``cuda_tests``: the tests marked ``cuda`` (``pytest -m cuda``) in a
subprocess, with each test's outcome read from the JUnit XML.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from device_checks.context import REPO, StageContext


def stage_cuda_tests(ctx: StageContext) -> None:
    import importlib.util
    import xml.etree.ElementTree as ET

    if importlib.util.find_spec("pytest") is None:
        ctx.put("skipped", "pytest is not installed")
        return
    junit = ctx.tmp / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "cuda", "-rfEs", f"--junitxml={junit}",
           *files]  # only the files that hold cuda tests: collecting the others costs half a minute
    ctx.put("command", " ".join(cmd[1:]))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(5.0, ctx.left() - 2))
    print(proc.stdout[-5000:], proc.stderr[-2000:], flush=True)
    tests = []
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    detail = (node.get("message") or "")[:300]
                    break
            else:
                detail = ""
            tests.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                          "seconds": round(float(case.get("time", 0.0)), 2), "detail": detail})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    ctx.put("tests", tests)
    ctx.put("summary", {**counts, "exit_code": proc.returncode, "seconds": round(time.perf_counter() - t, 1)})
