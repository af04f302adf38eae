"""ACFL ablation rows at one budget: train every config row on one data set, then one table.

    python benchmarks/acfl_ablation.py --rows configs/acfl/t2_base.yaml configs/acfl/t2_full.yaml \\
        --data-root ~/data/market --epochs 20 --iters 200 --output benchmarks/results/acfl_ablation

Each row is trained from the same seed in its own run directory (OUTPUT/runs/NAME)
with the same budget (``--epochs``, ``--iters``, ``--weights`` and any ``--set
key=value`` overrides applied on top of the row's YAML). Writes OUTPUT/results.json
(machine description, settings, one entry per row) and OUTPUT/results.md: row,
mAP, top-1, top-5 (last evaluated epoch), wall time of the run, time per training
step (``seconds_per_step`` of the trainer: batch loading, forward, backward and
update only; no extraction, clustering or evaluation) and its ratio to the first
(baseline) row. ``--dry-run`` lists what would run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, repo_src_on_path, write_json

repo_src_on_path()

from hardreid.config import Config, load_config  # noqa: E402 - after repo_src_on_path()
from hardreid.errors import UserError, clean_message  # noqa: E402 - after repo_src_on_path()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n"
                                       "  python benchmarks/acfl_ablation.py --rows configs/acfl/t2_base.yaml configs/acfl/t2_full.yaml \\\n"
                                       "      --data-root ../shared/data/cuhk03 --weights ../shared/weights/resnet50.pth --epochs 20 --iters 200\n"
                                       "  python benchmarks/acfl_ablation.py --rows configs/acfl/*.yaml --data-root ~/data/market \\\n"
                                       "      --epochs 2 --iters 10 --set data.workers=2 --set train.eval_every=0 --dry-run")
    p.add_argument("--rows", nargs="+", required=True, metavar="YAML", help="config files, the first is the baseline")
    p.add_argument("--data-root", required=True, metavar="DIR", help="data set folder")
    p.add_argument("--format", default=None, help="data set layout (default: the rows' data.format, else auto-detect)")
    p.add_argument("--weights", default=None, metavar="FILE", help="backbone weights for every row (model.weights)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs for every row (default: each row's own)")
    p.add_argument("--iters", type=int, default=None, help="train.iters for every row (default: each row's own)")
    p.add_argument("--device", default=None, help="train.device for every row")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config override for every row, e.g. --set data.workers=2 (repeatable, or several after one --set)")
    p.add_argument("--output", default="benchmarks/results/acfl_ablation", metavar="DIR",
                   help="results.json, results.md and runs/NAME/ go here")
    p.add_argument("--dry-run", action="store_true", help="list the rows, run directories and overrides, run nothing")
    p.add_argument("--quiet", action="store_true", help="no training log on stderr (train.log is still written)")
    return p.parse_args(argv)


def row_names(rows: list[str]) -> list[str]:
    """A short unique name per row: the file stem, with its folder when two stems collide."""
    stems = [Path(r).stem for r in rows]
    names = [s if stems.count(s) == 1 else f"{Path(r).parent.name}_{s}" for r, s in zip(rows, stems)]
    if len(set(names)) != len(names):
        raise UserError(f"--rows lists the same config twice: {rows}")
    return names


def common_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if args.epochs is not None:
        out.append(f"train.epochs={args.epochs}")
    if args.iters is not None:
        out.append(f"train.iters={args.iters}")
    if args.weights:
        out.append(f"model.weights={args.weights}")
    if args.device:
        out.append(f"train.device={args.device}")
    return out + list(args.overrides)


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per row: name, config file, run directory and the resolved config (loading checks every key)."""
    overrides = common_overrides(args)
    out = Path(args.output)
    entries = []
    for name, row in zip(row_names(args.rows), args.rows):
        cfg = load_config(row, overrides)
        if args.format:
            cfg.data.format = args.format
        entries.append({"name": name, "config": row, "run_dir": out / "runs" / name, "overrides": overrides, "cfg": cfg})
    return entries


def describe(cfg: Config) -> str:
    hard = "+".join(cfg.method.hard_samples) or "-"
    return (f"base {cfg.method.base}, hard samples {hard}, {cfg.model.backbone}, {cfg.data.height}x{cfg.data.width}, "
            f"{cfg.train.epochs} epochs x {cfg.train.iters or 'one pass'} steps")


def load_data(root: str, cfg: Config):
    from hardreid.data.datasets import detect_format, load_dataset

    fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(root)
    options: dict[str, Any] = {}
    if fmt == "cuhk03np":
        options["subset"] = cfg.data.subset
    if fmt == "folder" and cfg.data.camera_pattern:
        options["camera_pattern"] = cfg.data.camera_pattern
    return load_dataset(fmt, root, **options)


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of the last evaluated epoch; training-step time over all epochs (trainer's train_seconds);
    the last epoch's pseudo labels (clusters, outliers, ARI against the true ids when the data set has them)."""
    evaluated = [r for r in history if "mAP" in r]
    final = evaluated[-1] if evaluated else {}
    last = history[-1] if history else {}
    train_seconds = sum(r.get("train_seconds", 0.0) for r in history)
    steps = sum(round(r["train_seconds"] / r["seconds_per_step"]) for r in history if r.get("seconds_per_step"))
    return {"mAP": final.get("mAP"), "top1": final.get("top1"), "top5": final.get("top5"),
            "evaluated_epoch": final.get("epoch"), "epochs": len(history), "train_steps": steps,
            "train_seconds": train_seconds, "seconds_per_step": train_seconds / steps if steps else None,
            "clusters": last.get("clusters"), "outliers": last.get("outliers"), "label_ari": last.get("label_ari")}


def run_row(entry: dict[str, Any], data_root: str, datasets: dict[str, Any], quiet: bool) -> dict[str, Any]:
    from hardreid.runs import train

    cfg: Config = entry["cfg"]
    key = cfg.data.format + "|" + cfg.data.subset + "|" + cfg.data.camera_pattern
    if key not in datasets:
        datasets[key] = load_data(data_root, cfg)
    start = time.perf_counter()
    result = train(cfg, datasets[key], entry["run_dir"], log_to_stderr=not quiet)
    wall = time.perf_counter() - start
    return {"row": entry["name"], "config": entry["config"], "run_dir": str(entry["run_dir"]), "method": describe(cfg),
            "wall_seconds": wall, **summarize(result.history)}


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results table; the step-time ratio is relative to the first row."""
    base = rows[0].get("seconds_per_step") if rows else None
    lines = ["| row | mAP | top-1 | top-5 | clusters | outliers | label ARI | wall time (s) | s / training step "
             "| step time vs first row |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["seconds_per_step"] / base if base and r.get("seconds_per_step") else None
        lines.append(f"| {r['row']} | {_num(r['mAP'], '.1f')} | {_num(r['top1'], '.1f')} | {_num(r['top5'], '.1f')} | "
                     f"{_num(r.get('clusters'), 'd')} | {_num(r.get('outliers'), 'd')} | {_num(r.get('label_ari'), '.3f')} | "
                     f"{r['wall_seconds']:.0f} | {_num(r['seconds_per_step'], '.3f')} | {_num(ratio, '.2f')}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        entries = plan(args)
        if args.dry_run:
            print(f"would train {len(entries)} rows on {args.data_root} (overrides: {' '.join(entries[0]['overrides']) or 'none'}):")
            for e in entries:
                print(f"  {e['name']}: {e['config']} -> {e['run_dir']}\n      {describe(e['cfg'])}")
            print(f"and write {Path(args.output) / 'results.json'} and {Path(args.output) / 'results.md'}")
            return 0
        datasets: dict[str, Any] = {}
        results = []
        for e in entries:
            print(f"[{len(results) + 1}/{len(entries)}] {e['name']}: {describe(e['cfg'])}", flush=True)
            results.append(run_row(e, args.data_root, datasets, args.quiet))
            for r in results:
                r["step_ratio"] = (r["seconds_per_step"] / results[0]["seconds_per_step"]
                                   if r.get("seconds_per_step") and results[0].get("seconds_per_step") else None)
            out = Path(args.output)
            settings = {"data_root": args.data_root, "format": args.format, "epochs": args.epochs, "iters": args.iters,
                        "weights": args.weights, "overrides": common_overrides(args), "rows": args.rows}
            write_json(out / "results.json", {"machine": machine_description(), "settings": settings, "rows": results})
            (out / "results.md").write_text(markdown(results))  # rewritten after every row: partial results survive
        print(markdown(results))
        print(f"wrote {Path(args.output) / 'results.json'} and {Path(args.output) / 'results.md'}")
        return 0
    except UserError as exc:
        print(f"acfl_ablation: error: {clean_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
