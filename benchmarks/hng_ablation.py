"""SHNG ablation on one data set at one budget: Table 2 (generation strategies) and Table 1 (base vs base+ours).

Rows (each one training run from the same config, the same seed, the same epochs and re-ID lr schedule):

* Table 2 (on ``--table2-base``, default cluster_contrast; the paper's Table 2 is on its "baseline", OpenUnReID's
  strong baseline: ``--config configs/hng/baseline_cpu_mobilenet.yaml --table2-base strong_baseline``):
  ``baseline`` (method.hard_samples = []),
  ``mixup``, ``random noise``, ``concatenation``, ``global-fusion``, ``part-fusion`` (hng.fusion).
* Table 1: for each of ``--bases``: ``<base>`` and ``<base>+Ours`` (part fusion). Rows already run for
  Table 2 are reused.

The baseline rows keep the config's whole budget (train.epochs, optim.lr_schedule) so both sides of a
comparison train equally long.

``--shared-warmup`` (for small budgets): the warm-up stage (``hng.warmup_epochs``: the base trains the re-ID
network, G learns L_rec only) runs once per base, and every row of that base continues from its last
checkpoint, so rows differ only in the joint stage (the baseline: the base alone for the same joint epochs).
The concatenation row has a wider decoder, so it gets its own warm-up run. A warm-up run already in
OUTPUT is reused when its checkpoint was trained with the same config, refused otherwise. Results: JSON (every metric of every row, the config and the machine) and a
Markdown table next to it.

Example (CPU, MobileNetV2 128x64)::

    python benchmarks/hng_ablation.py --data ../shared/data/cuhk03 --format market \\
        --config configs/hng/cpu_mobilenet.yaml --weights ../shared/weights/mobilenet_v2_imagenet.pth \\
        --output runs/hng_ablation --out results/hng_ablation_cuhk03.json

``--synthetic`` trains on a generated tiny data set instead (a smoke test of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.repo_src_on_path()

from hardreid.config import Config, apply_dict, load_config  # noqa: E402 - after repo_src_on_path()

TABLE2 = [("baseline", None), ("mixup", "mixup"), ("random noise", "noise"), ("concatenation", "concat"),
          ("global-fusion", "global"), ("part-fusion", "part")]
METRICS = ("mAP", "top1", "top5", "top10")


def row_config(base_cfg: Config, base: str, fusion: str | None) -> Config:
    """The config of one row: ``fusion`` None = the base alone, otherwise base + hng with that fusion."""
    cfg = Config()
    apply_dict(cfg, base_cfg.to_dict(), "benchmark config")
    cfg.method.base = base
    others = [g for g in cfg.method.hard_samples if g != "hng"]
    cfg.method.hard_samples = others + (["hng"] if fusion else [])
    if fusion:
        cfg.hng.fusion = fusion
    return cfg


def warmup_run(cfg: Config, dataset: Any, output: Path) -> Path:
    """Train (or reuse) the warm-up stage of ``cfg`` alone in ``output``; return its last checkpoint."""
    from hardreid.runs import train
    from hardreid.training.checkpoint import load_checkpoint

    if cfg.hng.warmup_epochs < 1:
        raise SystemExit("--shared-warmup needs hng.warmup_epochs >= 1")
    wcfg = Config()
    apply_dict(wcfg, cfg.to_dict(), "warm-up config")
    wcfg.train.epochs = cfg.hng.warmup_epochs
    last = output / "checkpoints" / "last.pth"
    if last.is_file():
        saved = load_checkpoint(last)
        if saved["config"] != wcfg.to_dict() or saved["epoch"] != wcfg.train.epochs:
            raise SystemExit(f"{output} holds a warm-up run with other settings; delete it or choose another --output")
        print(f"reusing the warm-up run {output}", flush=True)
        return last
    start = time.time()
    result = train(wcfg, dataset, output, log_to_stderr=False)
    final = result.final
    print(f"{'warm-up ' + output.name:<28} " + "  ".join(f"{k} {final.get(k, float('nan')):.1f}" for k in METRICS)
          + f"  ({time.time() - start:.0f}s)", flush=True)
    return last


def run_row(name: str, cfg: Config, dataset: Any, output: Path, start_from: Path | None = None) -> dict[str, Any]:
    """Train one row; ``start_from``: a warm-up checkpoint the row continues from (a new stage of that run)."""
    from hardreid.runs import train

    start = time.time()
    result = train(cfg, dataset, output, start_from=start_from, log_to_stderr=False)
    final = result.final
    row = {"row": name, "base": cfg.method.base, "hard_samples": cfg.method.hard_samples,
           "fusion": cfg.hng.fusion if "hng" in cfg.method.hard_samples else None,
           "seconds": round(time.time() - start, 1), "run_dir": str(output),
           "seconds_per_step": final.get("seconds_per_step"), "warmup_from": str(start_from) if start_from else None}
    row.update({k: float(final[k]) for k in METRICS if k in final})
    print(f"{name:<28} " + "  ".join(f"{k} {row.get(k, float('nan')):.1f}" for k in METRICS) + f"  ({row['seconds']:.0f}s)",
          flush=True)
    return row


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# SHNG ablation on {results['data']} ({results['config']})", ""]
    for table, title in (("table2", "Table 2: generation strategies"), ("table1", "Table 1: base vs base+Ours")):
        if not results[table]:
            continue
        lines += [f"## {title}", "", "| row | mAP | top-1 | top-5 | top-10 | seconds | s / step |",
                  "|---|---|---|---|---|---|---|"]
        for row in results[table]:
            values = " | ".join(f"{row[k]:.1f}" if k in row else "-" for k in METRICS)
            step = row.get("seconds_per_step")
            lines.append(f"| {row['row']} | {values} | {row['seconds']:.0f} | {f'{step:.2f}' if step else '-'} |")
        lines.append("")
    lines.append(f"Budget: {results['epochs']} epochs ({results['warmup_epochs']} warm-up) x {results['iters']} steps, "
                 f"seed {results['seed']}"
                 + ("; one shared warm-up per base, rows differ in the joint stage only" if results["shared_warmup"] else "")
                 + f"; machine: {results['machine'].get('cpu')}, GPU {results['machine'].get('gpu')}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data set root")
    ap.add_argument("--format", default="auto")
    ap.add_argument("--synthetic", action="store_true", help="a generated tiny data set (smoke test)")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "hng" / "cpu_mobilenet.yaml"))
    ap.add_argument("--weights", default="", help="ImageNet weights of the backbone (model.weights)")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. --set train.epochs=6 hng.ngf=32 (repeatable)")
    ap.add_argument("--table2-base", default="cluster_contrast")
    ap.add_argument("--bases", nargs="*", default=["cluster_contrast"], help="Table 1 bases, e.g. cluster_contrast spcl ice")
    ap.add_argument("--skip-table2", action="store_true")
    ap.add_argument("--shared-warmup", action="store_true",
                    help="run the warm-up stage once per base; every row continues from it (see above)")
    ap.add_argument("--output", default="runs/hng_ablation", help="folder of the training runs")
    ap.add_argument("--out", default="results/hng_ablation.json", help="JSON results (Markdown next to it)")
    args = ap.parse_args(argv)

    from hardreid.data.datasets import load_dataset

    overrides = list(args.set) + ([f"model.weights={args.weights}"] if args.weights else [])
    cfg = load_config(args.config, overrides)
    if args.synthetic:
        from hardreid.data.synthetic import SyntheticConfig, generate_synthetic

        root = generate_synthetic(Path(args.output) / "synthetic_data", SyntheticConfig(num_train_ids=10, num_test_ids=6,
                                  num_cameras=2, images_per_camera=3, num_distractors=2, seed=3))
        dataset, data_name = load_dataset("market", root), "synthetic"
    else:
        if not args.data:
            ap.error("--data ROOT (or --synthetic) is required")
        dataset, data_name = load_dataset(args.format, args.data), args.data
    out_dir = Path(args.output)
    done: dict[tuple[str, str | None], dict[str, Any]] = {}

    warmups: dict[tuple[str, bool], Path] = {}

    def warmup_for(base: str, fusion: str | None) -> Path | None:
        if not args.shared_warmup:
            return None
        wide = fusion == "concat"  # the only fusion whose decoder (and so its warm-up) differs
        if (base, wide) not in warmups:
            warm_cfg = row_config(cfg, base, "concat" if wide else "part")
            warmups[base, wide] = warmup_run(warm_cfg, dataset, out_dir / f"{base}_warmup{'_concat' if wide else ''}")
        return warmups[base, wide]

    def row(name: str, base: str, fusion: str | None) -> dict[str, Any]:
        key = (base, fusion)
        if key not in done:
            tag = f"{base}_{fusion or 'baseline'}"
            done[key] = run_row(name, row_config(cfg, base, fusion), dataset, out_dir / tag, warmup_for(base, fusion))
        return {**done[key], "row": name}

    table2 = [] if args.skip_table2 else [row(name, args.table2_base, fusion) for name, fusion in TABLE2]
    table1 = []
    for base in args.bases:
        table1 += [row(base, base, None), row(f"{base}+Ours", base, "part")]
    results = {"data": data_name, "config": args.config, "overrides": overrides, "epochs": cfg.train.epochs,
               "warmup_epochs": cfg.hng.warmup_epochs, "shared_warmup": args.shared_warmup, "iters": cfg.train.iters, "seed": cfg.train.seed,
               "table2": table2, "table1": table1, "machine": common.machine_description(), "config_values": cfg.to_dict()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
