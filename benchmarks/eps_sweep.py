"""Pseudo labels of one trained model at several DBSCAN radii: how eps trades clusters against outliers, per distance.

Issue 26 asked camera-aware pseudo labels for an ARI above 0.40 against the true identities on CUHK03; the
camera-aware run (CA-Jaccard + camera BatchNorm) reached 0.19 with ~75 % of the images outliers at the CPU
configs' eps 0.5, because CA-Jaccard's distances lie on a larger scale than the standard ones (the official
CA-Jaccard code set eps per data set). This script asks whether the radius is what holds the ARI down: it extracts
the training features of a checkpoint as the trainer does before clustering (camera BatchNorm's per-camera
recalibration when the model was trained with it), computes each ``--jaccard`` distance once with the checkpoint's
``cluster`` keys (``pseudo_labels.epoch.jaccard_distance``, as the trainer), and clusters it at every ``--eps`` (DBSCAN, the checkpoint's ``cluster.min_samples``). Per
(distance, eps): clusters, outlier fraction, largest cluster, the share of one-camera clusters, and, when the data
set has identities, ARI / NMI against them (each outlier its own cluster: the trainer's ``label_ari``).

``--set cluster.KEY=VALUE ...`` changes the checkpoint's clustering keys for the whole sweep (CA-Jaccard's
neighbour counts ``k1_intra`` / ``k1_inter``, ``min_samples``, ...): one invocation per setting.

It measures the pseudo labels of one fixed model, not a training run: a radius that labels this model's features
best is a hypothesis for a training run to test, not a result.

    python benchmarks/eps_sweep.py --checkpoint runs/m_ca_cbn/seed1/checkpoints/last.pth \\
        --data-root ../shared/data/cuhk03 --eps 0.4 0.5 0.6 0.7 0.8 --output benchmarks/results/eps_sweep.json
    python benchmarks/eps_sweep.py ... --jaccard camera_aware --set cluster.k1_intra=3 cluster.k1_inter=10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import repo_src_on_path, result_header, write_json  # noqa: E402

repo_src_on_path()

JACCARD = ("standard", "camera_aware")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python benchmarks/eps_sweep.py --checkpoint RUN/checkpoints/last.pth "
                                       "--data-root ../shared/data/cuhk03 --eps 0.4 0.5 0.6 0.7")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a training checkpoint (last.pth / best.pth)")
    p.add_argument("--data-root", required=True, metavar="DIR", help="the data set whose training images it clusters")
    p.add_argument("--eps", nargs="+", type=float, default=[0.4, 0.5, 0.6, 0.7, 0.8], metavar="EPS",
                   help="DBSCAN radii in (0, 1) (default 0.4 0.5 0.6 0.7 0.8)")
    p.add_argument("--jaccard", nargs="+", choices=JACCARD, default=list(JACCARD),
                   help="distances to compute (default both)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="cluster.KEY=VALUE",
                   help="clustering keys to change for the whole sweep (cluster.k1_intra=3 cluster.min_samples=2)")
    p.add_argument("--batch-size", type=int, default=128, help="extraction batch (default 128)")
    p.add_argument("--output", metavar="JSON", help="also write the table here (with the machine)")
    args = p.parse_args(argv)
    others = [o for o in args.overrides if not o.startswith("cluster.")]
    if others:
        p.error(f"--set changes clustering keys only (cluster.KEY=VALUE), not {', '.join(others)}")
    bad = [e for e in args.eps if not 0 < e < 1]
    if bad:
        p.error(f"--eps must lie in (0, 1), got {', '.join(map(str, bad))}")
    for name, path, kind in (("--checkpoint", args.checkpoint, "file"), ("--data-root", args.data_root, "folder")):
        if not (Path(path).is_file() if kind == "file" else Path(path).is_dir()):
            p.error(f"{name}: no such {kind}: {path}")
    return args


def sweep(checkpoint: str, data_root: str, eps_values: list[float], jaccard: list[str],
          batch_size: int = 128, overrides: list[str] | None = None) -> dict[str, Any]:
    """The table (rows of distance, eps and the pseudo labels' figures) and what it was made from; ``overrides``:
    ``cluster.KEY=VALUE`` items applied to the checkpoint's config (validated as a run's would be)."""
    import numpy as np
    import torch

    from hardreid.data.datasets import load_dataset
    from hardreid.data.transforms import eval_transform
    from hardreid.evaluation.camera_bn import extract_model_features
    from hardreid.config import load_config
    from hardreid.pseudo_labels.cluster import cluster_statistics, dbscan_labels
    from hardreid.pseudo_labels.diagnostics import cluster_diagnostics
    from hardreid.pseudo_labels.epoch import jaccard_distance
    from hardreid.retrieval.model import load_feature_model
    from hardreid.training.trainer import label_agreement

    fm = load_feature_model(checkpoint)
    cfg = load_config(overrides=list(overrides or []), base=fm.cfg) if overrides else fm.cfg
    c = cfg.cluster
    dataset = load_dataset(cfg.data.format, data_root)
    start = time.perf_counter()
    features = extract_model_features(fm.model, dataset.train, eval_transform(cfg.data), batch_size, 0, "cpu",
                                      desc="training features")
    seconds = {"extract": time.perf_counter() - start}
    camids = np.array([s.camid for s in dataset.train])
    rows = []
    for mode in jaccard:
        start = time.perf_counter()
        distance = jaccard_distance(features, camids, c.model_copy(update={"jaccard": mode}))
        seconds[mode] = time.perf_counter() - start
        for eps in eps_values:
            labels = dbscan_labels(distance, eps=eps, min_samples=c.min_samples)
            stats = cluster_statistics(labels)
            diag = cluster_diagnostics(labels, camids, None, c.large_cluster_factor * c.min_samples)
            rows.append({"jaccard": mode, "eps": eps, "clusters": int(stats.num_clusters),
                         "outlier_fraction": stats.outlier_fraction, "largest_cluster": int(stats.size_max),
                         "single_camera_share": diag.single_camera_share,
                         **label_agreement(torch.from_numpy(labels), dataset)})
    return {"checkpoint": str(Path(checkpoint).resolve()), "data_root": str(Path(data_root).resolve()),
            "images": len(dataset.train), "cameras": int(len(set(camids.tolist()))),
            "camera_bn": fm.model.camera_bn_images is not None, "trained_jaccard": fm.cfg.cluster.jaccard,
            "min_samples": c.min_samples, "set": list(overrides or []), "seconds": {k: round(v, 1) for k, v in seconds.items()}, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = ["| distance | eps | clusters | outliers | largest | one-camera clusters | ARI | NMI |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        one = "-" if r["single_camera_share"] is None else f"{100 * r['single_camera_share']:.0f} %"
        ari = f"{r['label_ari']:.3f}" if "label_ari" in r else "-"
        nmi = f"{r['label_nmi']:.3f}" if "label_nmi" in r else "-"
        lines.append(f"| {r['jaccard']} | {r['eps']:g} | {r['clusters']} | {100 * r['outlier_fraction']:.0f} % | "
                     f"{r['largest_cluster']} | {one} | {ari} | {nmi} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hardreid.errors import UserError

    try:
        result = sweep(args.checkpoint, args.data_root, args.eps, args.jaccard, args.batch_size, args.overrides)
    except UserError as exc:
        print(f"eps_sweep: error: {exc}", file=sys.stderr)
        return 2
    print(f"{result['images']} training images, {result['cameras']} cameras, camera BN {result['camera_bn']}, "
          f"trained with cluster.jaccard={result['trained_jaccard']}, min_samples {result['min_samples']}"
          f"{', set ' + ' '.join(result['set']) if result['set'] else ''}; "
          f"seconds {result['seconds']}")
    print(table(result))
    if args.output:
        write_json(args.output, {**result_header("eps_sweep", argv), **result})
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
