"""Pseudo labels on small or camera-biased data (issue 11): today's clustering against each new option.

    python benchmarks/pseudo_label_robustness.py --cuhk03 ../shared/data/cuhk03 \\
        --weights ../shared/weights/mobilenet_v2_imagenet.pth --output benchmarks/results/robustness

Rows = data sets x options, all with the Cluster Contrast CPU config (``--config``, default
configs/cluster_contrast/cpu_official.yaml: the official settings, MobileNetV2, 128x64) and the same budget:

* data sets (``--datasets``): ``synth2`` / ``synth4``: synthetic few-shot sets, 2 / 4 images per
  training identity over 2 cameras with strong colour casts (``camera_colour_strength`` 3), generated
  into OUTPUT/data; ``cuhk03``, ``cuhk03_k4``, ``cuhk03_k2``: ``--cuhk03`` with all / at most 4 / at
  most 2 training images per identity (``hardreid datasets subsample``, hard links in OUTPUT/data);
* options (``--options``): ``default`` (the config's DBSCAN: eps 0.6, min_samples 4), ``eps_auto``,
  ``hdbscan``, ``camera_mean``, ``camera_standardize``, ``camera_penalty`` (``cluster.same_camera_penalty``
  ``--penalty``), ``combined`` (camera_normalize mean + HDBSCAN), ``camera_proxy`` (a camera-aware training
  loss instead of camera-aware clustering: ICE's inter-camera proxy loss as the ``camera_proxy`` add-on),
  ``min_samples2`` (``cluster.min_samples`` 2), ``cpu_mobilenet`` (both: the settings of
  configs/cluster_contrast/cpu_mobilenet.yaml); ``--option NAME=KEY=VALUE,...`` adds one.

Every row trains in its own process (``python -m hardreid train``) into OUTPUT/runs/DATASET/OPTION.
A finished row is skipped when the script runs again, an unfinished one is resumed (``--resume``),
so it can be stopped and restarted; a row trained with other settings is an error. The start mAP
(epoch 0: the ImageNet model, before any training) is measured once per data set, in its own process
(OUTPUT/start_map.json). Writes OUTPUT/results.json (per row: start and final mAP, and per epoch:
mAP when evaluated, pseudo-label ARI against the true identities, clusters, outliers, cluster sizes,
the label-free diagnostics and whether the collapse warning fired) and OUTPUT/results.md (one table),
rewritten after every row. ``--dry-run`` lists the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, repo_src_on_path, write_json  # noqa: E402

repo_src_on_path()

from hardreid.config import Config, load_config  # noqa: E402
from hardreid.errors import UserError, clean_message  # noqa: E402
from hardreid.training.resume import RESUMABLE_KEYS, config_changes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "cluster_contrast" / "cpu_official.yaml"
DATASETS = ("synth2", "synth4", "cuhk03", "cuhk03_k4", "cuhk03_k2")
SUBSAMPLE = {"cuhk03": None, "cuhk03_k4": 4, "cuhk03_k2": 2}


def option_overrides(penalty: float) -> dict[str, list[str]]:
    """The options of the table, as config overrides."""
    return {
        "default": [],
        "eps_auto": ["cluster.eps=auto"],
        "hdbscan": ["cluster.algorithm=hdbscan"],
        "camera_mean": ["cluster.camera_normalize=mean"],
        "camera_standardize": ["cluster.camera_normalize=standardize"],
        "camera_penalty": [f"cluster.same_camera_penalty={penalty:g}"],
        "combined": ["cluster.camera_normalize=mean", "cluster.algorithm=hdbscan"],
        "camera_proxy": ["method.hard_samples=[camera_proxy]"],
        "min_samples2": ["cluster.min_samples=2"],
        # = configs/cluster_contrast/cpu_mobilenet.yaml, the CPU config for a user's own data, as it was before issue 26
        # made it camera-aware (configs/camera_aware.yaml; today's: --option NAME=cluster.min_samples=2,...,model.camera_bn=auto,
        # cluster.jaccard=auto)
        "cpu_mobilenet": ["cluster.min_samples=2", "method.hard_samples=[camera_proxy]"],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n"
                                       "  python benchmarks/pseudo_label_robustness.py --cuhk03 ../shared/data/cuhk03 \\\n"
                                       "      --weights ../shared/weights/mobilenet_v2_imagenet.pth --dry-run\n"
                                       "  python benchmarks/pseudo_label_robustness.py --datasets synth2 synth4 --options default hdbscan \\\n"
                                       "      --weights ../shared/weights/mobilenet_v2_imagenet.pth --epochs 6 --threads 2")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="YAML", help="base config of every row")
    p.add_argument("--weights", default=None, metavar="FILE", help="ImageNet backbone weights (model.weights)")
    p.add_argument("--cuhk03", default=None, metavar="DIR", help="CUHK03 in Market layout (rows cuhk03*)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--options", nargs="+", default=None, metavar="NAME",
                   help=f"options to run (default: all: {', '.join(option_overrides(0.1))} and every --option)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                   help="an extra option, e.g. --option ms2=cluster.min_samples=2 (repeatable)")
    p.add_argument("--penalty", type=float, default=0.1, help="cluster.same_camera_penalty of camera_penalty (default 0.1)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs of every row (default: the config's)")
    p.add_argument("--iters", type=int, default=None, help="train.iters of every row (default: the config's)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config override for every row (repeatable)")
    p.add_argument("--synthetic-ids", type=int, nargs=2, default=[485, 100], metavar=("TRAIN", "TEST"),
                   help="identities of the synthetic sets (default 485 train, as the issue's 1,940 images at 4 each; 100 test)")
    p.add_argument("--seed", type=int, default=0, help="subsample and synthetic seed")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every row's process (default 1)")
    p.add_argument("--output", default="benchmarks/results/pseudo_label_robustness", metavar="DIR")
    p.add_argument("--dry-run", action="store_true", help="list the rows and their state, train nothing")
    p.add_argument("--start-map-of", default=None, help=argparse.SUPPRESS)  # internal: one start mAP, as JSON
    return p.parse_args(argv)


# --------------------------------------------------------------------------- plan


def all_options(args: argparse.Namespace) -> dict[str, list[str]]:
    options = option_overrides(args.penalty)
    for spec in args.option:
        name, _, sets = spec.partition("=")
        if not name or not sets:
            raise UserError(f"--option {spec!r} must look like NAME=KEY=VALUE[,KEY=VALUE...]")
        options[name] = sets.split(",")
    chosen = args.options or list(options)
    unknown = [o for o in chosen if o not in options]
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(options)}")
    return {name: options[name] for name in chosen}


def common_overrides(args: argparse.Namespace) -> list[str]:
    out = ["data.format=market", "train.eval_at_start=false"]  # the start is scored once per data set (start_map.json)
    if args.epochs is not None:
        out.append(f"train.epochs={args.epochs}")
    if args.iters is not None:
        out.append(f"train.iters={args.iters}")
    if args.weights:
        out.append(f"model.weights={Path(args.weights).expanduser().resolve()}")
    return out + list(args.overrides)


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per row; loading each config checks every key."""
    if any(d.startswith("cuhk03") for d in args.datasets) and not args.cuhk03:
        raise UserError("the cuhk03 rows need --cuhk03 DIR (or choose --datasets synth2 synth4)")
    out = Path(args.output)
    rows = []
    for dataset in args.datasets:
        for option, sets in all_options(args).items():
            overrides = common_overrides(args) + sets
            cfg = load_config(args.config, overrides)
            rows.append({"dataset": dataset, "option": option, "overrides": overrides, "cfg": cfg,
                         "run_dir": out / "runs" / dataset / option})
    return rows


def row_state(row: dict[str, Any]) -> str:
    """``todo``, ``partial`` (resume) or ``done``; UserError when the run directory holds other settings."""
    run = row["run_dir"]
    if not (run / "config.yaml").is_file():
        return "todo"
    saved, cfg = load_config(run / "config.yaml"), row["cfg"]
    # the keys a resume may change (evaluation, resources) do not make another row; the number of epochs does
    ignored = RESUMABLE_KEYS - {"train.epochs"}
    changed = [key for key in config_changes(saved, cfg) if key not in ignored]
    for section in ("cluster", "train", "optim", "data", "memory"):
        if any(key.startswith(section + ".") for key in changed):
            raise UserError(f"{run} was trained with other {section} settings; delete it or choose another --output")
    history = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else []
    if len(history) >= cfg.train.epochs:
        return "done"
    return "partial" if (run / "checkpoints" / "last.pth").is_file() else "todo"


# --------------------------------------------------------------------------- data


def prepare_data(dataset: str, args: argparse.Namespace) -> Path:
    """The data set's folder: generated (synthetic), linked (subsample) or ``--cuhk03`` itself."""
    data = Path(args.output) / "data"
    if dataset.startswith("synth"):
        from hardreid.data.synthetic import SyntheticConfig, generate_synthetic

        train_ids, test_ids = args.synthetic_ids
        cfg = SyntheticConfig(num_train_ids=train_ids, num_test_ids=test_ids, num_cameras=2, min_cameras=2,
                              images_per_camera=2, train_images_per_id=int(dataset[len("synth"):]),
                              camera_colour_strength=3.0, num_distractors=test_ids // 4, seed=args.seed)
        return generate_synthetic(data / dataset, cfg, progress=True)
    k = SUBSAMPLE[dataset]
    if k is None:
        return Path(args.cuhk03)
    from hardreid.data.subsample import subsample_dataset

    return Path(subsample_dataset(args.cuhk03, data / dataset, k, seed=args.seed).output)


def start_map(cfg: Config, root: str) -> dict[str, float]:
    """mAP / top-1 of the untrained model (epoch 0: what the first epoch starts from), on the CPU."""
    import torch

    from hardreid.data.datasets import load_dataset
    from hardreid.evaluation.pipeline import evaluate_model
    from hardreid.models import model_from_config

    result = evaluate_model(model_from_config(cfg), load_dataset("market", root), cfg.data, cfg.eval, torch.device("cpu"))
    return {"mAP": result.mAP, "top1": result.cmc[0]}


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads),
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def start_maps(rows: list[dict[str, Any]], roots: dict[str, Path], args: argparse.Namespace) -> dict[str, dict]:
    """Start mAP per data set, each in its own process, cached in OUTPUT/start_map.json (keyed by model and input)."""
    path = Path(args.output) / "start_map.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        cfg = next(r["cfg"] for r in rows if r["dataset"] == dataset)
        key = f"{dataset}|{cfg.model.backbone}|{cfg.model.weights}|{cfg.model.last_stride}|{cfg.data.height}x{cfg.data.width}"
        if key not in cache:
            print(f"start mAP of {dataset} (epoch 0, untrained model) ...", flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--start-map-of", str(roots[dataset]),
                   "--config", str(args.config), "--datasets", dataset, "--output", str(args.output),
                   *(["--weights", args.weights] if args.weights else []),
                   *(["--set", *args.overrides] if args.overrides else [])]
            done = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(args), cwd=REPO)
            if done.returncode != 0:
                raise UserError(f"start mAP of {dataset} failed: {done.stderr.strip().splitlines()[-1:]}")
            cache[key] = {"dataset": dataset, **json.loads(done.stdout.strip().splitlines()[-1])}
            write_json(path, cache)
    return {v["dataset"]: v for v in cache.values() if v["dataset"] in roots}


# --------------------------------------------------------------------------- run and summarise


def train_row(row: dict[str, Any], root: Path, args: argparse.Namespace, resume: bool) -> None:
    """``python -m hardreid train`` for one row, in its own process; its output goes to RUN_DIR/driver.log."""
    row["run_dir"].mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "hardreid", "train", "--config", str(args.config), "--data-root", str(root),
           "--output", str(row["run_dir"]), *row["overrides"]] + (["--resume"] if resume else [])
    env = _child_env(args)
    with open(row["run_dir"] / "driver.log", "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code != 0:
        tail = (row["run_dir"] / "driver.log").read_text().strip().splitlines()[-3:]
        raise UserError(f"row {row['dataset']}/{row['option']} failed (exit {code}): " + " | ".join(tail))


EPOCH_KEYS = ("mAP", "top1", "label_ari", "clusters", "outliers", "eps", "largest_to_median", "single_camera_share",
              "large_cluster_share", "partition_ari", "collapse_warning", "seconds")


def summarize(history: list[dict[str, Any]], start: dict[str, float] | None) -> dict[str, Any]:
    """Start / final mAP, the pseudo-label ARI of the first and last epoch, and every epoch's numbers."""
    epochs = []
    for row in history:
        entry = {"epoch": row["epoch"], **{k: row[k] for k in EPOCH_KEYS if k in row}}
        sizes = row.get("cluster_sizes", {})
        entry["size_max"], entry["size_median"] = sizes.get("size_max"), sizes.get("size_median")
        epochs.append(entry)
    evaluated = [e for e in epochs if "mAP" in e]
    final = evaluated[-1]["mAP"] if evaluated else None
    first_map = start["mAP"] if start else None
    warned = [e["epoch"] for e in epochs if e.get("collapse_warning")]
    return {"start_mAP": first_map, "final_mAP": final, "evaluated_epoch": evaluated[-1]["epoch"] if evaluated else None,
            "change": None if final is None or first_map is None else final - first_map,
            "label_ari_first": epochs[0].get("label_ari") if epochs else None,
            "label_ari_last": epochs[-1].get("label_ari") if epochs else None,
            "clusters_last": epochs[-1].get("clusters") if epochs else None,
            "size_max_last": epochs[-1].get("size_max") if epochs else None,
            "warning_epochs": warned, "epochs_run": len(epochs),
            "seconds_per_epoch": sum(e.get("seconds", 0.0) for e in epochs) / len(epochs) if epochs else None,
            "epochs": epochs}


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| data set | option | start mAP | final mAP | change | label ARI first -> last | clusters (last) "
             "| largest cluster (last) | collapse warning (epochs) | worse and warned | s / epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        worse = r["change"] is not None and r["change"] < 0
        warned = bool(r["warning_epochs"])
        flag = "-" if r["change"] is None else ("yes" if worse and warned else "NO: silent" if worse else
                                                 "(warned, not worse)" if warned else "")
        epochs = ",".join(map(str, r["warning_epochs"])) or "none"
        lines.append(f"| {r['dataset']} | {r['option']} | {_num(r['start_mAP'], '.1f')} | {_num(r['final_mAP'], '.1f')} | "
                     f"{_num(r['change'], '+.1f')} | {_num(r['label_ari_first'], '.3f')} -> {_num(r['label_ari_last'], '.3f')} | "
                     f"{_num(r['clusters_last'], 'd')} | {_num(r['size_max_last'], 'd')} | {epochs} | {flag} | "
                     f"{_num(r['seconds_per_epoch'], '.0f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.start_map_of:  # internal: the child process of start_maps
            print(json.dumps(start_map(load_config(args.config, common_overrides(args)), args.start_map_of)))
            return 0
        rows = plan(args)
        states = [row_state(r) for r in rows]
        if args.dry_run:
            print(f"{len(rows)} rows ({sum(s == 'done' for s in states)} done) -> {args.output}; common overrides: "
                  f"{' '.join(common_overrides(args))}")
            for r, s in zip(rows, states):
                print(f"  {r['dataset']:10s} {r['option']:20s} {s:8s} {' '.join(r['overrides'][len(common_overrides(args)):]) or '-'}")
            return 0
        out = Path(args.output)
        roots = {d: prepare_data(d, args) for d in dict.fromkeys(r["dataset"] for r in rows)}
        starts = start_maps(rows, roots, args)
        results = []
        for i, (row, state) in enumerate(zip(rows, states), start=1):
            name = f"{row['dataset']}/{row['option']}"
            if state != "done":
                print(f"[{i}/{len(rows)}] {name}: {'resuming' if state == 'partial' else 'training'}", flush=True)
                t = time.perf_counter()
                train_row(row, roots[row["dataset"]], args, resume=state == "partial")
                print(f"[{i}/{len(rows)}] {name}: {time.perf_counter() - t:.0f}s", flush=True)
            else:
                print(f"[{i}/{len(rows)}] {name}: done, skipped", flush=True)
            history = json.loads((row["run_dir"] / "metrics.json").read_text())
            results.append({"dataset": row["dataset"], "option": row["option"], "run_dir": str(row["run_dir"]),
                            "overrides": row["overrides"], **summarize(history, starts.get(row["dataset"]))})
            settings = {"config": args.config, "weights": args.weights, "cuhk03": args.cuhk03, "epochs": args.epochs,
                        "iters": args.iters, "threads": args.threads, "penalty": args.penalty, "seed": args.seed,
                        "synthetic_ids": args.synthetic_ids, "overrides": args.overrides}
            write_json(out / "results.json", {"machine": machine_description(), "settings": settings,
                                              "start_map": starts, "rows": results})
            (out / "results.md").write_text(markdown(results))
        print(markdown(results))
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
        return 0
    except UserError as exc:
        print(f"pseudo_label_robustness: error: {clean_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
