"""A measured study of hard samples: rows x seeds at one budget, aggregated into mean and spread.

    python benchmarks/hard_sample_study.py --study benchmarks/studies/hard_samples_cuhk03.yaml \\
        --data-root ../shared/data/cuhk03 --weights ../shared/weights/mobilenet_v2_imagenet.pth \\
        --output benchmarks/results/hard_sample_study

The study file (YAML) names the budget and the rows::

    budget: {epochs: 20, iters: 100}          # one budget for every row (--epochs / --iters override it)
    set: [data.workers=1]                     # overrides for every row
    rows:
      - name: cc_base                         # unique; its runs go to OUTPUT/runs/<name>/seed<N>
        config: configs/cluster_contrast/cpu_official.yaml
        memory: momentum                      # a label for the table (which memory the row sits on)
        seeds: [1, 2, 3]                      # default: [1]
        set: ["method.hard_samples=[hpf, align]"]   # the row's own overrides

Every run is an ordinary run directory (config, log, metrics, checkpoints). A finished run is read back
instead of trained again, an unfinished one is resumed from its last checkpoint (refused when its saved
config differs from the row's), so a stopped study continues where it stopped, and disjoint ``--only``
subsets may run in separate processes into the same ``--output``. After every run OUTPUT/results.json
(machine, settings, every run, and per row the mean / sample standard deviation / min / max over seeds of
mAP, top-1, top-5, the last epoch's pseudo-label ARI and the training seconds per step, plus the mean mAP
curve over the evaluated epochs) and OUTPUT/results.md are rewritten from all finished runs.
``--dry-run`` lists the runs; ``--aggregate-only`` rebuilds the results from the runs on disk.
``--estimate`` prints the CPU hours each row needs at a budget from the step and per-epoch times of
finished (short) runs: ``epochs x (per-epoch overhead) + evaluations x (evaluation) + epochs x iters x
(seconds per step)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acfl_ablation import describe, load_data, summarize  # noqa: E402
from common import machine_description, repo_src_on_path, write_json  # noqa: E402

repo_src_on_path()

from hardreid.config import Config, load_config  # noqa: E402
from hardreid.errors import UserError, clean_message  # noqa: E402

METRICS = ("mAP", "top1", "top5", "label_ari", "seconds_per_step")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n"
                                       "  python benchmarks/hard_sample_study.py --study benchmarks/studies/hard_samples_cuhk03.yaml \\\n"
                                       "      --data-root ../shared/data/cuhk03 --weights ../shared/weights/mobilenet_v2_imagenet.pth --dry-run\n"
                                       "  # step and epoch times of every row kind (2 epochs x 10 steps, one seed), then an estimate\n"
                                       "  python benchmarks/hard_sample_study.py --study benchmarks/studies/hard_samples_cuhk03.yaml \\\n"
                                       "      --data-root ../shared/data/cuhk03 --weights ../shared/weights/mobilenet_v2_imagenet.pth \\\n"
                                       "      --epochs 2 --iters 10 --max-seeds 1 --set train.eval_every=2 --output runs/timing\n"
                                       "  python benchmarks/hard_sample_study.py --study ... --data-root ... --output runs/timing "
                                       "--aggregate-only --estimate 20 100")
    p.add_argument("--study", required=True, metavar="YAML", help="the study file (budget, set, rows)")
    p.add_argument("--data-root", required=True, metavar="DIR", help="data set folder")
    p.add_argument("--format", default=None, help="data set layout (default: the rows' data.format)")
    p.add_argument("--weights", default=None, metavar="FILE", help="backbone weights for every row (model.weights)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs for every row (default: the study's budget)")
    p.add_argument("--iters", type=int, default=None, help="train.iters for every row (default: the study's budget)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config override for every row, after the study's own")
    p.add_argument("--only", nargs="+", default=None, metavar="ROW", help="run only these rows")
    p.add_argument("--max-seeds", type=int, default=None, help="at most this many seeds per row (timing runs)")
    p.add_argument("--output", default="benchmarks/results/hard_sample_study", metavar="DIR")
    p.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    p.add_argument("--aggregate-only", action="store_true", help="rebuild results.json / results.md from the runs on disk")
    p.add_argument("--estimate", nargs=2, type=int, default=None, metavar=("EPOCHS", "ITERS"),
                   help="print the CPU hours per row at this budget from the finished runs' timings")
    p.add_argument("--quiet", action="store_true", help="no training log on stderr (train.log is still written)")
    return p.parse_args(argv)


def read_study(path: str) -> dict[str, Any]:
    try:
        study = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the study file {path}: {exc}") from None
    if not isinstance(study, dict) or not isinstance(study.get("rows"), list) or not study["rows"]:
        raise UserError(f"study file {path} must hold a mapping with a non-empty 'rows' list")
    names = [r.get("name") for r in study["rows"]]
    if None in names or len(set(names)) != len(names):
        raise UserError(f"every row of {path} needs a unique 'name', got {names}")
    return study


def plan(args: argparse.Namespace, study: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (row, seed): name, seed, run directory, config (every key checked now)."""
    budget = study.get("budget", {})
    epochs = args.epochs if args.epochs is not None else budget.get("epochs")
    iters = args.iters if args.iters is not None else budget.get("iters")
    common = [f"train.epochs={epochs}"] * (epochs is not None) + [f"train.iters={iters}"] * (iters is not None)
    common += [f"model.weights={args.weights}"] * bool(args.weights) + list(study.get("set", [])) + list(args.overrides)
    known = [r["name"] for r in study["rows"]]
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        raise UserError(f"--only names rows that the study does not have: {unknown}; rows: {', '.join(known)}")
    entries = []
    for row in study["rows"]:
        if args.only and row["name"] not in args.only:
            continue
        seeds = list(row.get("seeds", [1]))[: args.max_seeds or None]
        for seed in seeds:
            cfg = load_config(row["config"], common + list(row.get("set", [])) + [f"train.seed={seed}"])
            if args.format:
                cfg.data.format = args.format
            entries.append({"row": row["name"], "memory": row.get("memory", ""), "seed": seed, "config": row["config"],
                            "set": list(row.get("set", [])), "cfg": cfg,
                            "run_dir": Path(args.output) / "runs" / row["name"] / f"seed{seed}"})
    return entries


def finished_history(run_dir: Path, cfg: Config) -> list[dict[str, Any]] | None:
    """The metrics of a finished run of ``cfg`` in ``run_dir``; None when there is none (or it is unfinished)."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None
    history = json.loads(metrics.read_text())
    return history if len(history) >= cfg.train.epochs else None


def run(entry: dict[str, Any], data_root: str, datasets: dict[str, Any], quiet: bool) -> list[dict[str, Any]]:
    """Train (or resume, or read back) one run; its per-epoch history."""
    from hardreid.config.camera_keys import resolve_camera_keys
    from hardreid.runs import train
    from hardreid.training.checkpoint import load_checkpoint

    cfg: Config = entry["cfg"]
    done = finished_history(entry["run_dir"], cfg)
    if done is not None:
        return done
    last = entry["run_dir"] / "checkpoints" / "last.pth"
    key = cfg.data.format + "|" + cfg.data.subset + "|" + cfg.data.camera_pattern
    if key not in datasets:
        datasets[key] = load_data(data_root, cfg)
    # a checkpoint holds the config as the run decided it (model.camera_bn / cluster.jaccard auto: from the cameras)
    decided = resolve_camera_keys(cfg, (s.camid for s in datasets[key].train))[0]
    if last.is_file() and load_checkpoint(last)["config"] != decided.to_dict():
        raise UserError(f"{entry['run_dir']} holds a run with another config; delete it or choose another --output")
    return train(cfg, datasets[key], entry["run_dir"], resume=last.is_file(), log_to_stderr=not quiet).history


def spread(values: list[float]) -> dict[str, float | int | None]:
    """n, mean, sample standard deviation (0 for one value), min, max of the values that exist."""
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def epoch_costs(history: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per-epoch seconds outside the training steps (extraction, clustering, memory), with and without evaluation."""
    plain = [r["seconds"] - r.get("train_seconds", 0.0) for r in history if "mAP" not in r and "seconds" in r]
    evaluated = [r["seconds"] - r.get("train_seconds", 0.0) for r in history if "mAP" in r and "seconds" in r]
    overhead = statistics.fmean(plain) if plain else None
    evaluation = statistics.fmean(evaluated) - overhead if evaluated and overhead is not None else None
    return {"overhead_seconds": overhead, "evaluation_seconds": evaluation}


def aggregate(entries: list[dict[str, Any]], histories: dict[tuple[str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per row: the seeds' summaries, the spread of each metric, the mean mAP curve, timing for estimates."""
    rows: dict[str, dict[str, Any]] = {}
    for e in entries:
        history = histories.get((e["row"], e["seed"]))
        row = rows.setdefault(e["row"], {"row": e["row"], "memory": e["memory"], "config": e["config"], "set": e["set"],
                                         "method": describe(e["cfg"]), "runs": []})
        if history is not None:
            row["runs"].append({"seed": e["seed"], "run_dir": str(e["run_dir"]), **summarize(history),
                                "curve": {r["epoch"]: r["mAP"] for r in history if "mAP" in r}, **epoch_costs(history)})
    for row in rows.values():
        runs = row["runs"]
        for metric in METRICS:
            row[metric] = spread([r.get(metric) for r in runs])
        epochs = sorted({e for r in runs for e in r["curve"]})
        row["curve"] = {e: statistics.fmean(r["curve"][e] for r in runs if e in r["curve"]) for e in epochs}
        for key in ("overhead_seconds", "evaluation_seconds"):
            row[key] = spread([r.get(key) for r in runs])["mean"]
    return list(rows.values())


def estimate_hours(row: dict[str, Any], epochs: int, iters: int, eval_every: int) -> float | None:
    """CPU hours of one run of ``row`` at ``epochs`` x ``iters`` from its measured step and epoch costs."""
    step, overhead = row["seconds_per_step"]["mean"], row["overhead_seconds"]
    if step is None or overhead is None:
        return None
    evaluations = len({e for e in range(1, epochs + 1) if e == epochs or (eval_every > 0 and e % eval_every == 0)})
    return (epochs * overhead + evaluations * (row["evaluation_seconds"] or 0.0) + epochs * iters * step) / 3600


def _cell(s: dict[str, Any], fmt: str) -> str:
    if s["mean"] is None:
        return "-"
    return format(s["mean"], fmt) + (f" ± {format(s['sd'], fmt)}" if s["n"] > 1 else "")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: mean ± sample sd over seeds (n seeds), step time and its ratio to the first row."""
    first = rows[0]["seconds_per_step"]["mean"] if rows else None
    lines = ["| row | memory | seeds | mAP | top-1 | top-5 | label ARI | s / step | vs first row |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step = r["seconds_per_step"]["mean"]
        ratio = f"{step / first:.2f}x" if step and first else "-"
        lines.append(f"| {r['row']} | {r['memory'] or '-'} | {r['mAP']['n']} | {_cell(r['mAP'], '.1f')} | "
                     f"{_cell(r['top1'], '.1f')} | {_cell(r['top5'], '.1f')} | {_cell(r['label_ari'], '.3f')} | "
                     f"{_cell(r['seconds_per_step'], '.3f')} | {ratio} |")
    return "\n".join(lines) + "\n"


def write_results(args: argparse.Namespace, entries: list[dict[str, Any]], histories: dict) -> list[dict[str, Any]]:
    rows = aggregate(entries, histories)
    out = Path(args.output)
    settings = {"study": args.study, "data_root": args.data_root, "format": args.format, "weights": args.weights,
                "epochs": args.epochs, "iters": args.iters, "overrides": args.overrides, "only": args.only}
    write_json(out / "results.json", {"machine": machine_description(), "settings": settings, "rows": rows})
    (out / "results.md").write_text(markdown(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study = read_study(args.study)
        entries = plan(args, study)
        if args.dry_run:
            print(f"would run {len(entries)} runs on {args.data_root}:")
            for e in entries:
                print(f"  {e['row']} seed {e['seed']}: {e['config']} {' '.join(e['set'])} -> {e['run_dir']}\n"
                      f"      {describe(e['cfg'])}")
            return 0
        histories: dict[tuple[str, int], list[dict[str, Any]]] = {}
        datasets: dict[str, Any] = {}
        for i, e in enumerate(entries):
            if args.aggregate_only:
                history = finished_history(e["run_dir"], e["cfg"])
            else:
                print(f"[{i + 1}/{len(entries)}] {e['row']} seed {e['seed']}: {describe(e['cfg'])}", flush=True)
                start = time.perf_counter()
                history = run(e, args.data_root, datasets, args.quiet)
                print(f"    done in {time.perf_counter() - start:.0f}s", flush=True)
            if history is not None:
                histories[e["row"], e["seed"]] = history
                rows = write_results(args, entries, histories)  # after every run: partial results survive
        rows = write_results(args, entries, histories)
        print(markdown(rows))
        if args.estimate:
            epochs, iters = args.estimate
            print(f"estimated CPU hours per run at {epochs} epochs x {iters} steps (evaluation every 2 epochs):")
            for r in rows:
                hours = estimate_hours(r, epochs, iters, 2)
                print(f"  {r['row']}: {'-' if hours is None else f'{hours:.2f} h'}")
        print(f"wrote {Path(args.output) / 'results.json'} and {Path(args.output) / 'results.md'}")
        return 0
    except UserError as exc:
        print(f"hard_sample_study: error: {clean_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
