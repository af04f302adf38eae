"""``hardreid figures``: the ACFL paper's pictures of a training run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .common import add_data_args, add_overwrite_arg, count, formatter, load_data, path_arg

#: the figures run() makes (--which): fig4 and fig5b with viz.figures, fig5a with viz.curves
FIGURES = ["fig4", "fig5a", "fig5b"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the figures command to ``sub`` (the subparsers of ``hardreid``)."""
    p = sub.add_parser("figures", help="the ACFL paper's pictures (Fig. 4, 5a, 5b) from a run", formatter_class=formatter,
                       description="Pictures of a training run, as in the ACFL paper: fig4 = query, easy positive and "
                                   "generated hard positive (with the change magnified); fig5a = top-1, mAP, clusters "
                                   "and outliers per epoch; fig5b = t-SNE of the training features of 15 random "
                                   "identities. fig4 and fig5b re-extract and re-cluster the training set with the "
                                   "checkpoint's model and the run's config.",
                       epilog="examples:\n"
                              "  hardreid figures --run runs/acfl --data-root ~/data/market\n"
                              "  hardreid figures --run runs/acfl --which fig5a                 # curves only, no data needed\n"
                              "  hardreid figures --run runs/acfl --data-root ~/data/market --which fig4 fig5b \\\n"
                              "      --checkpoint runs/acfl/checkpoints/best.pth --output figures/acfl --queries 6")
    p.add_argument("--run", required=True, metavar="RUN_DIR", type=path_arg, help="run directory of 'hardreid train' (config.yaml, metrics.json, checkpoints/)")
    add_data_args(p, required=False)
    p.add_argument("--which", nargs="+", choices=FIGURES, default=FIGURES, help="figures to make (default: all)")
    p.add_argument("--output", default=None, metavar="DIR", type=path_arg, help="where the PNG files go (default: RUN_DIR/figures)")
    p.add_argument("--checkpoint", default=None, metavar="FILE", type=path_arg, help="checkpoint for fig4 / fig5b (default: RUN_DIR/checkpoints/last.pth)")
    p.add_argument("--queries", type=count(1), default=4, help="fig4: rows (queries from distinct clusters)")
    p.add_argument("--identities", type=count(1), default=15, help="fig5b: identities shown (the paper: 15)")
    p.add_argument("--seed", type=count(0), default=0, help="random choice of queries and identities")
    p.add_argument("--workers", type=count(0), default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")
    add_overwrite_arg(p, "the pictures of a folder hardreid figures did not write")
    p.set_defaults(func=run)


def _earlier_figures(folder: Path) -> list[str]:
    """The pictures of an earlier 'hardreid figures' (before output markers): only fig*.png files."""
    entries = sorted(p.name for p in folder.iterdir())
    return entries if entries and all(name.startswith("fig") and name.endswith(".png") for name in entries) else []


def run(args: argparse.Namespace) -> int:
    from ..outputs import claim_folder

    run_dir = Path(args.run)
    out_dir = Path(args.output) if args.output else run_dir / "figures"
    claim_folder(out_dir, "figures", "--output", inputs={"--checkpoint": args.checkpoint, "--data-root": args.data_root},
                 overwrite=args.overwrite, earlier_version=_earlier_figures)
    which = list(dict.fromkeys(args.which))
    if "fig5a" in which:
        from ..viz.curves import plot_training_curves

        if not (run_dir / "metrics.json").is_file():
            raise UserError(f"{run_dir} has no metrics.json; pass the --output folder of 'hardreid train'")
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"wrote {plot_training_curves(run_dir, out_dir / 'fig5a_curves.png', diagnostics=False)}")
    needs_model = [w for w in which if w != "fig5a"]
    if needs_model:
        from ..runtime import resolve_device
        from ..viz.figures import hard_positive_figure, load_run_model, run_state, tsne_of_run

        if not args.data_root:
            raise UserError(f"{' and '.join(needs_model)} need the training images: pass --data-root DIR "
                            "(the data set the run was trained on)")
        cfg, model = load_run_model(run_dir, args.checkpoint)
        cfg.data.workers = args.workers
        if args.format:
            cfg.data.format = args.format
        dataset = load_data(args, cfg)
        device = resolve_device(args.device or "auto")
        state = run_state(cfg, model, dataset, device)
        if "fig4" in which:
            path = hard_positive_figure(state, dataset, out_dir / "fig4_hard_positives.png", args.queries, args.seed,
                                        device=device)
            print(f"wrote {path}")
        if "fig5b" in which:
            result = tsne_of_run(state, dataset, out_dir / "fig5b_tsne.png", args.identities, args.seed)
            print(f"wrote {result.path} ({len(result.identities)} identities, colour = {result.labelled_by})")
    return 0
