"""``hardreid train``: train a method on a data set's training images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .common import add_data_args, formatter, load_data, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the train command to ``sub`` (the subparsers of ``hardreid``)."""
    p = sub.add_parser("train", help="train a model on unlabelled training images", formatter_class=formatter,
                       description="Train a method (Cluster Contrast baseline, ...) on the training split; evaluates on "
                                   "query/gallery when the data set has them.",
                       epilog="examples:\n"
                              "  hardreid train --config cluster_contrast/market1501 --data-root ~/data/market --output runs/cc\n"
                              "  hardreid train --config my_configs/cc.yaml --data-root ~/data/market --output runs/mine   # a file\n"
                              "  hardreid train --config cluster_contrast/cpu_mobilenet --data-root ~/data/cuhk03 \\\n"
                              "      --output runs/cuhk03 --weights ~/weights/mobilenet_v2_imagenet.pth train.epochs=20\n"
                              "  hardreid train --output runs/cc --data-root ~/data/market --resume      # continue a run\n"
                              "  hardreid train --output runs/cc --data-root ~/data/market --resume train.epochs=80\n"
                              "  # 4 GPUs of one machine (data.batch_size is the global batch, shared by the processes):\n"
                              "  torchrun --nproc_per_node 4 -m hardreid train --config acfl/market1501 \\\n"
                              "      --data-root ~/data/market --output runs/acfl\n"
                              "  # 2 machines x 4 GPUs (run on each machine, --node_rank 0 and 1):\n"
                              "  torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 --rdzv_backend c10d \\\n"
                              "      --rdzv_endpoint HOST0:29400 -m hardreid train --config ... --data-root ... --output ...\n\n"
                              "--config takes a YAML file or the name of a packaged config ('hardreid configs' lists them).\n"
                              "Any config key can be overridden as section.key=value (every key and its default: the packaged\n"
                              "base.yaml); every value is checked before any work starts. --resume refuses changes to keys\n"
                              "other than train.epochs, train.eval_every, train.save_every, train.device, data.workers,\n"
                              "eval.batch_size, model.weights and model.pretrained.\n"
                              "Ctrl-C (SIGINT, exit code 130) and SIGTERM (exit code 143) stop cleanly: the last\n"
                              "finished checkpoint stays and --resume continues from it.")
    p.add_argument("--config", default=None, metavar="NAME_OR_FILE", type=path_arg,
                   help="packaged config name (acfl/market1501) or YAML file (may inherit with _base_)")
    add_data_args(p)
    p.add_argument("--output", required=True, metavar="RUN_DIR", type=path_arg, help="run directory (config, log, metrics, checkpoints)")
    p.add_argument("--weights", default=None, metavar="FILE", type=path_arg, help="backbone weights: torchvision layout (timm for vit_small; PASS / TransReID-SSL files as published for vit_small_pass / vit_small_ics)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: config, auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from checkpoints/last.pth "
                                                         "(with its config.yaml unless --config is given)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=20")
    p.set_defaults(func=run)


def _resume_config(run_dir: Path, overrides: list[str]):
    """The run's own config.yaml (else the checkpoint's config) plus ``overrides``."""
    from ..config import config_from_dict, load_config
    from ..training.checkpoint import load_checkpoint

    last = run_dir / "checkpoints" / "last.pth"
    if (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml", overrides)
    if last.is_file():
        stored = load_checkpoint(last)["config"]
        return load_config(None, overrides, base=config_from_dict(stored, f"the config stored in {last}"))
    raise UserError(f"nothing to resume in {run_dir}: it holds no checkpoints/last.pth (start a new run "
                    "without --resume, or pass the --output folder of an earlier run)")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..runs import train

    run_dir = Path(args.output)
    overrides = list(args.overrides)
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.resume and args.config is None:
        cfg = _resume_config(run_dir, overrides)  # continue with the run's own resolved config
    elif args.config is None:
        raise UserError("train needs --config NAME_OR_FILE (e.g. --config cluster_contrast/market1501; "
                        "'hardreid configs' lists them)")
    else:
        cfg = load_config(args.config, overrides)
    if cfg.model.weights:  # the run's config.yaml must work from any directory (resume, figures)
        cfg.model.weights = str(Path(cfg.model.weights).expanduser().resolve())
    if args.format:
        cfg.data.format = args.format
    dataset = load_data(args, cfg)
    result = train(cfg, dataset, run_dir, resume=args.resume)
    from .. import distributed

    if not distributed.is_main():  # several processes (torchrun): rank 0 reports
        return 0
    final = result.final
    if "mAP" in final:
        print(f"final: mAP {final['mAP']:.1f}  top-1 {final['top1']:.1f}  top-5 {final['top5']:.1f}  top-10 {final['top10']:.1f}")
    print(f"run saved in {run_dir} (checkpoints/last.pth, metrics.csv, train.log)")
    return 0
