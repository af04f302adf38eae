"""Every script of benchmarks/ run as users run it: ``python benchmarks/NAME.py ...`` in a subprocess, from the
repository root, through the command line that benchmarks/README.md and the script's docstring document, at toy size.

Nothing else runs the benchmarks, so an argument or signature that drifts (e.g. ``pseudo_labels.py`` once passed its
clusterers in ``run_hardreid``'s ``device`` position and died at once) goes unnoticed without these. Each case asserts
exit status 0 and the output the script documents (its JSON parses and has the documented top-level keys, its
Markdown table, its run directories); no timing is asserted. The data is conftest's ``tiny_root`` (or the script's own
synthetic option), the settings conftest's ``tiny_config`` as ``--set`` overrides of the documented configs.

The scripts that need torchrun or several training processes run their cheapest path here (``distributed.py
--dry-run``, ``pseudo_label_robustness.py --dry-run``, ``device_run.py --smoke`` with one stage), the scripts that
put every stage in a fresh process (``pseudo_labels.py``, ``evaluation.py``) a subset of their stages; the full toy
runs, every variant and the extraction timing of ``search.py`` are ``slow`` (``-m slow``, ~5 minutes). Cost of the
default cases: ~85 CPU seconds, nearly all of it ~20 interpreters importing torch (~4 CPU s each), i.e. about
1.5 minutes on an idle 2-core machine and about 3 at load 8-9.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# every script of benchmarks/ and the test below that runs it (test_<name>); common.py is the scripts' library
SCRIPTS = ("acfl_ablation", "compile", "device_run", "distributed", "eps_sweep", "evaluation", "golden_runs",
           "hard_sample_study", "hng_ablation",
           "pack_data", "pseudo_label_robustness", "pseudo_labels", "search", "step_profile", "study_verdict",
           "warning_calibration")
LIBRARY = "common"

# conftest.tiny_config's settings, as overrides of a packaged config (MobileNetV2 at 64x32, batch 8 = 2 x 4, CPU)
TINY = ["data.format=market", "data.height=64", "data.width=32", "data.workers=0", "data.batch_size=8",
        "data.num_instances=4", "model.backbone=mobilenet_v2", "model.last_stride=2", "cluster.k1=6", "cluster.k2=2",
        "cluster.eps=0.6", "cluster.min_samples=2", "train.device=cpu", "train.seed=0", "eval.batch_size=32",
        # CA-Jaccard's neighbour lists at the same tiny scale (the CPU configs are camera-aware; with its 5 + 20
        # neighbours the tiny set's 60 images form one cluster)
        "cluster.k1_intra=3", "cluster.k1_inter=6"]
HEADER = {"benchmark", "command", "date", "machine"}  # common.result_header


def script(name: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python benchmarks/NAME.py ARGS`` from the repository root; fails the test with its output unless it exits 0."""
    command = [sys.executable, str(Path("benchmarks") / f"{name}.py"), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # toy tensors: one thread each
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(command[1:])} exited with {result.returncode}\n--- stdout\n"
                                    f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result


def read_json(path: Path, keys: set[str]) -> dict:
    assert path.is_file(), f"{path} was not written"
    data = json.loads(path.read_text())
    assert keys <= set(data), f"{path.name}: missing {keys - set(data)}"
    return data


# ---------------------------------------------------------------------------------------------- the set of scripts


def test_every_script_has_a_smoke_test():
    found = {p.stem for p in BENCHMARKS.glob("*.py")}
    assert found == {*SCRIPTS, LIBRARY}, "a script of benchmarks/ without a smoke test here (or one that is gone)"
    missing = [name for name in SCRIPTS if not callable(globals().get(f"test_{name}"))]
    assert not missing, f"no test_<name> for {missing}"


def test_common_is_the_scripts_library():
    for name in SCRIPTS:
        tree = ast.parse((BENCHMARKS / f"{name}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert LIBRARY in imported, f"benchmarks/{name}.py does not import {LIBRARY}"
    tree = ast.parse((BENCHMARKS / f"{LIBRARY}.py").read_text())
    assert not any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body), "a library, no script"


# Runs each script as ``python benchmarks/NAME.py --help`` would (``runpy.run_path`` as ``__main__``, sys.argv set), all
# in one fresh interpreter: six scripts import torch before they parse their arguments, ~4 CPU seconds each, once
# here. Each script's own process (its import of common, of the package) is what its smoke run below checks.
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
results = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            code = f"{type(exc).__name__}: {exc}"
    results[path] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(results))
"""


def test_every_script_has_help():
    paths = [f"benchmarks/{name}.py" for name in SCRIPTS]
    done = subprocess.run([sys.executable, "-c", HELP_DRIVER, *paths], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    for name, path in zip(SCRIPTS, paths):
        r = results[path]
        assert r["code"] in (0, None), f"{name}.py --help: exit {r['code']}\n{r['stderr'][-3000:]}"
        assert r["stdout"].startswith(f"usage: {name}.py"), f"{name}.py --help:\n{r['stdout'][:500]}"
        assert "--" in r["stdout"] and not r["stderr"].strip(), f"{name}.py --help:\n{r['stderr'][-1000:]}"


# ---------------------------------------------------------------------------------------------- one test per script


def test_pseudo_labels(tmp_path):
    # README: python benchmarks/pseudo_labels.py --n 100000 --out ...; a mode (with --clusterers) and a --camera
    # variant, each in its own process (the two lines of the run plan); test_pseudo_labels_every_variant: all (slow)
    out = tmp_path / "pseudo_labels.json"
    script("pseudo_labels", "--n", 300, "--dim", 64, "--modes", "exact", "--clusterers", "eps-auto", "hdbscan",
           "--camera", "penalty", "camera_aware", "--out", out)
    data = read_json(out, HEADER | {"params", "features", "runs"})
    assert data["benchmark"] == "pseudo_labels" and data["features"]["n"] == 300
    runs = data["runs"]
    assert list(runs) == ["exact", "camera-penalty", "camera_aware"]
    assert data["params"]["ca_k"] == [5, 20, 2, 4] and runs["camera_aware"]["seconds"]["knn"] > 0  # the CA searches
    for name, run in runs.items():
        assert run["device"] == "cpu" and run["seconds"]["total"] > 0 and run["peak_rss_mb"] > 0, name
        assert set(run["ari_vs_identities"]) >= {"0.5", "0.6"}, name
    assert set(runs["exact"]["clusterers"]) == {"eps-auto", "hdbscan"} and not runs["camera-penalty"]["clusterers"]
    assert set(runs["camera-penalty"]["ari_vs_exact"]) == {"0.5", "0.6"}
    assert runs["camera-penalty"]["seconds"]["camera_normalize"] is None
    assert data["params"]["camera"] == ["penalty", "camera_aware"]


# A stand-in for the user's copy of faiss_rerank.py that --reference imports (dense 1 - cosine; its kNN through the
# script's faiss_utils stand-in, as the real file's CPU branch does)
REFERENCE = """
import numpy as np

from .faiss_utils import index_init_cpu


def compute_jaccard_distance(target_features, k1=20, k2=6, print_flag=True, search_option=0, use_float16=False):
    x = target_features.numpy()
    index = index_init_cpu(x.shape[1])
    index.add(x)
    index.search(x, k1)
    dist = np.clip(1.0 - x @ x.T, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    return dist
"""


@pytest.mark.slow  # seven processes that import torch: ~60 s on 2 loaded cores
def test_pseudo_labels_every_variant(tmp_path):
    pytest.importorskip("faiss")  # the reference's kNN stand-in
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "faiss_rerank.py").write_text(REFERENCE)
    out = tmp_path / "pseudo_labels.json"
    script("pseudo_labels", "--n", 300, "--dim", 64, "--modes", "exact", "fast", "--clusterers", "eps-auto", "hdbscan",
           "--camera", "mean", "standardize", "penalty", "camera_aware", "camera_aware_fast", "--penalty", 0.2,
           "--reference", tmp_path / "reference" / "faiss_rerank.py", "--out", out)
    runs = read_json(out, HEADER | {"params", "features", "runs"})["runs"]
    assert list(runs) == ["exact", "fast", "camera-mean", "camera-standardize", "camera-penalty", "camera_aware",
                          "camera_aware-fast", "reference"]
    assert all("0.5" in run["ari_vs_identities"] for run in runs.values())
    assert all(run["device"] == "cpu" and "total" in run["speedup_vs_reference"] for run in list(runs.values())[:-1])
    assert "hdbscan" in runs["fast"]["ari_vs_exact"] and runs["camera-mean"]["seconds"]["camera_normalize"] is not None
    assert runs["reference"]["seconds"]["knn"] > 0  # faiss add + search, timed through the stand-in's index


def test_evaluation(tmp_path):
    # README: python benchmarks/evaluation.py --out ...; without the dense re-ranking check (one process less),
    # which test_evaluation_with_rerank_check adds (slow)
    out = tmp_path / "evaluation.json"
    script("evaluation", "--num-query", 40, "--num-gallery", 200, "--ids", 20, "--dim", 32, "--check-queries", 20,
           "--rerank-check", 0, 0, "--rounds", 2, "--out", out)
    data = read_json(out, HEADER | {"params", "data", "runs"})
    assert (data["data"]["num_query"], data["data"]["num_gallery"]) == (40, 200)
    runs = data["runs"]
    assert set(runs) == {"evaluate_ranking", "re_ranking", "re_ranking_traced"}
    assert runs["evaluate_ranking"]["check"]["identical"] and runs["evaluate_ranking"]["check"]["queries"] == 20
    assert 0 < runs["evaluate_ranking"]["result"]["mAP"] <= 100 and 0 < runs["re_ranking"]["result"]["mAP"] <= 100
    # the references timed beside it: a full stable sort (bit for bit the same numbers), torchreid where installed,
    # in alternating rounds (ours: the pipeline's distances, the very matrix ranked above)
    ev = runs["evaluate_ranking"]
    assert ev["full_sort"]["identical"] and ev["full_sort"]["seconds"] > 0 and ev["distance_seconds"] > 0
    assert ev["ours_distance_identical_to_input"] and ev["ours_identical_across_rounds"]
    assert ev["rounds"]["n"] == 2 and len(ev["rounds"]["cpu_s"]["ours_ranking"]["all"]) == 2
    assert ev["kernels"]["torch_cpu_capability"] and "available" in ev["torchreid"]
    if ev["torchreid"]["available"]:  # a built torchreid on PYTHONPATH (benchmarks/README.md)
        assert ev["torchreid"]["identical"] and len(ev["rounds"]["wall_s"]["torchreid_ranking"]["all"]) == 2
    assert runs["re_ranking_traced"]["traced_numpy_peak_mb"] > 0


@pytest.mark.slow  # one process more than test_evaluation
def test_evaluation_with_rerank_check(tmp_path):
    out = tmp_path / "evaluation.json"
    script("evaluation", "--num-query", 40, "--num-gallery", 200, "--ids", 20, "--dim", 32, "--check-queries", 20,
           "--no-rerank", "--rerank-check", 20, 80, "--no-references", "--out", out)
    runs = read_json(out, HEADER | {"params", "data", "runs"})["runs"]
    assert set(runs) == {"evaluate_ranking", "re_ranking_check"} and runs["re_ranking_check"]["max_abs_diff"] < 1e-4
    assert "full_sort" not in runs["evaluate_ranking"]  # --no-references


def test_acfl_ablation(tiny_root, tmp_path):
    # README: --rows configs/acfl/t2_base.yaml ... --data-root DIR --epochs 20 --iters 200 --set ... --output DIR
    out = tmp_path / "acfl"
    script("acfl_ablation", "--rows", "configs/acfl/t2_base.yaml", "--data-root", tiny_root, "--epochs", 1, "--iters", 1,
           "--set", *TINY, "--output", out, "--quiet")
    data = read_json(out / "results.json", {"machine", "settings", "rows"})
    (row,) = data["rows"]
    assert row["row"] == "t2_base" and row["train_steps"] == 1 and row["step_ratio"] == 1.0 and row["mAP"] is not None
    assert (out / "runs" / "t2_base" / "metrics.json").is_file()
    assert (out / "results.md").read_text().startswith("| row | mAP |")


def test_step_profile(tmp_path):
    # README: python benchmarks/step_profile.py --parts full,hng; toy size: every phase of both steps is found
    out = tmp_path / "profile.json"
    result = script("step_profile", "--smoke", "--steps", 1, "--warmup", 1, "--output", out)
    data = read_json(out, HEADER | {"full", "hng"})
    full, hng = data["full"]["phases_median_cpu_s"], data["hng"]["phases_median_cpu_s"]
    assert {"step/base forward", "step/hpi.losses/ascent/ascent backward", "backward", "re-ID adam"} <= set(full)
    assert any(k.startswith("step/hpi.losses/ascent/batch statistics/") for k in full)
    assert {"step/hng.before_step/generator forward", "step/hng.before_step/G step/backward",
            "step/hng.before_step/D step/D forward"} <= set(hng)
    for part in (data["full"], data["hng"]):  # exclusive times: the phases add up to (at most) the step
        assert sum(v for k, v in part["phases_median_cpu_s"].items()) <= part["cpu_seconds_per_step"] * 1.0001
    assert "| phase (exclusive) | CPU s | share |" in result.stdout


def test_compile(tmp_path):
    # README: python benchmarks/compile.py --parts floor,cc ...; backend "eager" (dynamo without inductor: no C++
    # compilation) at toy size checks the script's plumbing: groups, alternating rounds, ratios, the JSON
    out = tmp_path / "compile.json"
    script("compile", "--smoke", "--parts", "floor,cc,extract", "--backend", "eager", "--rounds", 2, "--steps", 1, "--warmup", 1,
           "--cache-dir", tmp_path / "cache", "--output", out)
    data = read_json(out, HEADER | {"settings", "groups"})
    groups = data["groups"]
    assert list(groups) == ["floor", "cc", "extract"]
    assert list(groups["cc"]["variants"]) == ["floor eager", "floor compiled", "cc eager", "cc compiled"]
    for group in groups.values():
        for name, v in group["variants"].items():
            assert len(v["rounds_s"]) == 2 and len(v["rounds_cpu_s"]) == 2 and v["seconds_per_call"] > 0, name
            assert len(v["warmup_calls_s"]) == 1
    assert groups["cc"]["variants"]["cc compiled"]["compiled_via"] in ("train.compile", "fallback: torch.compile("
                                                                       "model.embed_chunk) in the benchmark")
    assert set(groups["cc"]["ratios"]) == {"floor compiled / floor eager", "cc compiled / cc eager",
                                           "cc eager / floor eager", "cc compiled / floor compiled"}
    assert groups["extract"]["variants"]["extract ours eager"]["seconds_per_1000_images"] > 0
    assert data["settings"]["backend"] == "eager" and data["settings"]["threads"] == 1


def test_hard_sample_study(tiny_root, tmp_path):
    # README: --study benchmarks/studies/hard_samples_cuhk03.yaml --data-root DIR ... --only ROW --max-seeds 1
    out = tmp_path / "study"
    script("hard_sample_study", "--study", "benchmarks/studies/hard_samples_cuhk03.yaml", "--data-root", tiny_root,
           "--only", "mom_base", "--max-seeds", 1, "--epochs", 1, "--iters", 1, "--set", *TINY, "--output", out, "--quiet")
    data = read_json(out / "results.json", {"machine", "settings", "rows"})
    (row,) = data["rows"]
    assert row["row"] == "mom_base" and [r["seed"] for r in row["runs"]] == [1]
    assert (out / "runs" / "mom_base" / "seed1" / "metrics.json").is_file()
    assert "mom_base" in (out / "results.md").read_text()


def test_hng_ablation(tmp_path):
    # README: --data DIR --config configs/hng/cpu_mobilenet.yaml --bases ... --output DIR --out FILE.json;
    # --synthetic is its smoke test. Table 1 of one base: two rows.
    out = tmp_path / "results" / "hng.json"
    script("hng_ablation", "--synthetic", "--skip-table2", "--bases", "cluster_contrast", "--set", *TINY,
           "train.epochs=1", "train.iters=1", "hng.warmup_epochs=0", "hng.ngf=4", "hng.ndf=4",
           "--output", tmp_path / "runs", "--out", out)
    data = read_json(out, {"data", "config", "epochs", "table1", "table2", "machine", "config_values"})
    assert data["data"] == "synthetic" and data["table2"] == []
    assert [r["row"] for r in data["table1"]] == ["cluster_contrast", "cluster_contrast+Ours"]
    assert all(0 <= r["mAP"] <= 100 for r in data["table1"])
    assert "base vs base+Ours" in out.with_suffix(".md").read_text()


def test_pack_data(tiny_root, tmp_path):
    # README: python benchmarks/pack_data.py SRC DEST [--size 256x128] [--workers N]
    dest = tmp_path / "packed"
    script("pack_data", tiny_root, dest, "--size", "64x32", "--workers", 1)  # 64 < the default --min-height 96
    info = read_json(dest / "PACKED.json", {"bytes", "images", "height", "width", "quality"})
    images = sorted(p.relative_to(tiny_root) for p in tiny_root.rglob("*.jpg"))
    assert info["images"] == len(images) and sorted(p.relative_to(dest) for p in dest.rglob("*.jpg")) == images
    assert (info["height"], info["width"]) == (64, 32)


def test_pseudo_label_robustness(tmp_path):
    # README: --cuhk03 DIR --weights FILE --output DIR [--dry-run]; every row trains in two more processes, so the
    # default run checks the plan (every config loads); test_pseudo_label_robustness_toy_run trains (slow)
    result = script("pseudo_label_robustness", "--datasets", "synth2", "--options", "default", "cpu_mobilenet",
                    "--epochs", 1, "--iters", 1, "--set", *TINY, "--output", tmp_path / "out", "--dry-run")
    assert "2 rows (0 done)" in result.stdout and "synth2     cpu_mobilenet" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # three processes that import torch and train: ~40-60 s on 2 loaded cores
def test_pseudo_label_robustness_toy_run(tmp_path):
    out = tmp_path / "out"
    script("pseudo_label_robustness", "--datasets", "synth2", "--options", "default", "--synthetic-ids", 10, 4,
           "--epochs", 1, "--iters", 1, "--set", *TINY, "--output", out)
    data = read_json(out / "results.json", {"machine", "settings", "start_map", "rows"})
    assert [(r["dataset"], r["option"]) for r in data["rows"]] == [("synth2", "default")]
    assert data["rows"][0]["final_mAP"] is not None and 0 < data["start_map"]["synth2"]["mAP"] <= 100
    assert (out / "results.md").read_text().startswith("| data set | option |")


def test_search(tmp_path):
    # README: python benchmarks/search.py --sizes 100000 1000000 --out ...
    pytest.importorskip("faiss")  # the `search` extra
    out = tmp_path / "search.json"
    script("search", "--sizes", 2000, "--dim", 64, "--queries", 20, "--latency-queries", 3, "--nprobe-sweep", 4, 8,
           "--ef-sweep", 16, "--out", out)
    data = read_json(out, HEADER | {"faiss_threads", "search"})
    (size,) = data["search"]
    assert size["num_gallery"] == 2000 and set(size["kinds"]) == {"flat", "ivf", "hnsw"}
    assert size["kinds"]["flat"]["results"][0]["recall_at_10"] == 1.0
    assert [r["nprobe"] for r in size["kinds"]["ivf"]["results"]] == [4, 8]


@pytest.mark.slow  # three backbones (ResNet-50 at 256x128 among them), each extracted twice: ~20 s
def test_search_extraction(tiny_root, tmp_path):
    # README: python benchmarks/search.py --sizes --extract-images DIR --extract-count 256 --out ...
    pytest.importorskip("faiss")
    out = tmp_path / "extract.json"
    script("search", "--sizes", "--extract-images", tiny_root / "bounding_box_test", "--extract-count", 4,
           "--extract-batch", 4, "--extract-workers", 0, "--out", out)
    data = read_json(out, HEADER | {"search", "extract"})
    assert data["search"] == [] and [r["backbone"] for r in data["extract"]] == ["resnet50", "mobilenet_v2", "resnet50"]
    assert all(r["images"] == 4 and r["images_per_second"] > 0 for r in data["extract"])


def test_device_run(tmp_path):
    # README: python benchmarks/device_run.py --smoke --out DIR (the CPU check of the GPU run); here one stage of it,
    # tests/test_device_run.py runs the whole smoke run (slow)
    # --cap-scale: the smoke stage's 15 s limit is for the device; a busy 2-core CI machine took 18 s once
    script("device_run", "--smoke", "--stages", "evaluation", "--cap-scale", 8, "--out", tmp_path)
    report = read_json(tmp_path / "device_run.json", HEADER | {"smoke", "device", "budget_s", "notes", "stages"})
    assert report["smoke"] and report["device"] == "cpu" and list(report["stages"]) == ["evaluation"]
    assert report["stages"]["evaluation"]["status"] == "ok", report["stages"]
    assert "not GPU numbers" in (tmp_path / "device_run.md").read_text()
    assert "===== evaluation: ok" in (tmp_path / "device_run.log").read_text()


def tiny_yaml(tmp_path: Path) -> Path:
    """distributed.py's default config (cluster_contrast/cpu_official) at conftest's tiny settings, as a YAML."""
    config = tmp_path / "tiny.yaml"
    config.write_text(f"_base_: [{ROOT / 'configs' / 'cluster_contrast' / 'cpu_official.yaml'}]\n"
                      "data: {height: 64, width: 32, num_instances: 4}\n"
                      "cluster: {k1: 6, k2: 2, eps: 0.6, min_samples: 2}\n"
                      "eval: {batch_size: 32}\n")
    return config


def test_distributed(tiny_root, tmp_path):
    # README: --data DIR --weights FILE --epochs 3 --iters 20 --out DIR; the rows need torchrun (two processes):
    # the default run checks the config with every row's settings and the commands (--dry-run)
    out = tmp_path / "bench"
    result = script("distributed", "--data", tiny_root, "--config", tiny_yaml(tmp_path), "--epochs", 1, "--iters", 1,
                    "--batch-size", 8, "--workers", 0, "--out", out, "--dry-run")
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == f"and write {out / 'distributed.json'}"
    assert "-m hardreid train" in lines[0] and "torch.distributed.run --standalone --nproc_per_node 2" in lines[1]
    assert all("train.bn_chunk=4" in line and "data.batch_size=8" in line for line in lines[:2])
    assert not out.exists()


@pytest.mark.slow  # one process, then two under torchrun: ~40 s on 2 loaded cores
def test_distributed_toy_run(tiny_root, tmp_path):
    out = tmp_path / "bench"
    script("distributed", "--data", tiny_root, "--config", tiny_yaml(tmp_path), "--epochs", 1, "--iters", 1,
           "--batch-size", 8, "--workers", 0, "--out", out)
    data = read_json(out / "distributed.json", HEADER | {"settings", "rows"})
    assert [(r["processes"], r["world_size"]) for r in data["rows"]] == [(1, 1), (2, 2)]
    assert data["rows"][0]["epochs"][0]["clusters"] == data["rows"][1]["epochs"][0]["clusters"]


def test_golden_runs(tmp_path):
    """One method recorded, then recorded again and compared: the same code on the same machine is identical."""
    data, first = tmp_path / "data", tmp_path / "before.json"
    script("golden_runs", "--data", data, "--output", first, "--only", "cluster_contrast")
    record = read_json(first, {"machine", "data", "runs"})
    assert set(record["runs"]) == {"cluster_contrast"} and len(record["runs"]["cluster_contrast"]["weights"]) == 64
    again = script("golden_runs", "--data", data, "--output", tmp_path / "after.json", "--only", "cluster_contrast",
                   "--compare", first)
    assert "identical to" in again.stdout


def test_warning_calibration(tmp_path):
    """On the verdict study's committed set A runs (finished, all healthy): the one-camera clusters' share fires in
    each. (A copy of set A alone: the folder gains runs as the study goes on.)"""
    import shutil

    runs = tmp_path / "runs"
    for row in ("mom_base", "mom_hpf"):
        shutil.copytree(BENCHMARKS / "studies" / "verdict_cuhk03" / "runs" / row, runs / row)
    out = tmp_path / "calibration.json"
    script("warning_calibration", "--runs", runs, "--output", out)
    result = read_json(out, {"runs", "table", "from_epoch"})
    assert len(result["runs"]) == 6 and not any(r["harmed"] or r["in_flight"] for r in result["runs"])
    row = next(t for t in result["table"] if t["signal"] == "single_camera_share" and t["threshold"] == 0.9)
    assert row["false_alarm"] == 6 and row["fired_harmed"] == row["missed"] == 0 and not row["separates"]


def test_study_verdict(tmp_path):
    """The committed study's tables and curves rendered from its results into a copy (the repository is not written)."""
    source = BENCHMARKS / "studies" / "verdict_cuhk03"
    study = tmp_path / "verdict_cuhk03" / "study.yaml"
    study.parent.mkdir()
    study.write_text((source / "study.yaml").read_text())
    (study.parent / "results.json").write_text((source / "results.json").read_text())
    script("study_verdict", "--study", study, "--render-only")
    assert read_json(study.parent / "results.json", {"runs", "rows"})["rows"].keys() >= {"mom_base", "mom_hpf"}
    assert (study.parent / "results.md").read_text().startswith("| generator row | base |")
    assert (study.parent / "curves.png").stat().st_size > 0


def test_eps_sweep(tmp_path, tiny_root, tiny_checkpoint):
    """README: --checkpoint FILE --data-root DIR --eps ... --output JSON. Every row is what the trainer's clustering
    gives for that distance and radius (cluster_epoch on the same features), with the trainer's label ARI."""
    import numpy as np
    import torch

    from hardreid.data.datasets import load_dataset
    from hardreid.data.transforms import eval_transform
    from hardreid.evaluation.camera_bn import extract_model_features
    from hardreid.pseudo_labels import cluster_epoch
    from hardreid.retrieval.model import load_feature_model
    from hardreid.training.trainer import label_agreement

    out = tmp_path / "eps.json"
    result = script("eps_sweep", "--checkpoint", tiny_checkpoint, "--data-root", tiny_root, "--eps", 0.5, 0.7,
                    "--output", out)
    data = read_json(out, HEADER | {"rows", "images", "cameras", "seconds"})
    assert [(r["jaccard"], r["eps"]) for r in data["rows"]] == [("standard", 0.5), ("standard", 0.7),
                                                                  ("camera_aware", 0.5), ("camera_aware", 0.7)]
    assert "| camera_aware | 0.7 |" in result.stdout
    fm = load_feature_model(tiny_checkpoint)
    dataset = load_dataset("market", tiny_root)
    features = extract_model_features(fm.model, dataset.train, eval_transform(fm.cfg.data), 128, 0, "cpu")
    camids = np.array([s.camid for s in dataset.train])
    for row in data["rows"]:
        cfg = fm.cfg.cluster.model_copy(update={"eps": row["eps"], "jaccard": row["jaccard"]})
        want = cluster_epoch(features, camids, cfg)
        assert row["clusters"] == want.stats.num_clusters
        assert row["outlier_fraction"] == float((want.labels < 0).mean())
        assert row["label_ari"] == label_agreement(torch.from_numpy(np.asarray(want.labels)), dataset)["label_ari"]
    # --set: the clustering keys of the whole sweep, as cluster_epoch takes them
    keys = {"k1_intra": 2, "k1_inter": 4, "min_samples": 3}
    script("eps_sweep", "--checkpoint", tiny_checkpoint, "--data-root", tiny_root, "--eps", 0.6, "--jaccard",
           "camera_aware", "--set", *[f"cluster.{k}={v}" for k, v in keys.items()], "--output", out)
    data = read_json(out, HEADER | {"rows", "images", "cameras", "seconds"})
    assert data["set"] == [f"cluster.{k}={v}" for k, v in keys.items()] and data["min_samples"] == 3
    (row,) = data["rows"]
    want = cluster_epoch(features, camids, fm.cfg.cluster.model_copy(update={**keys, "eps": 0.6,
                                                                             "jaccard": "camera_aware"}))
    default = cluster_epoch(features, camids, fm.cfg.cluster.model_copy(update={"eps": 0.6, "jaccard": "camera_aware"}))
    assert not np.array_equal(want.labels, default.labels)  # the keys matter on this set
    assert (row["clusters"], row["outlier_fraction"]) == (want.stats.num_clusters, float((want.labels < 0).mean()))
    for args, message in ((["--eps", "1.5"], "--eps must lie in (0, 1), got 1.5"),
                          (["--set", "train.epochs=3"], "--set changes clustering keys only"),
                          (["--set", "cluster.k1_intra=many"], "k1_intra")):
        bad = subprocess.run([sys.executable, "benchmarks/eps_sweep.py", "--checkpoint", str(tiny_checkpoint),
                              "--data-root", str(tiny_root), *args], cwd=ROOT, capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
