"""Does a label-free warning fire in the runs that went wrong, and only there? (issue 26, item 5)

Reads finished and in-flight training runs (any folder holding ``metrics.json``, searched under every ``--runs``
folder, a copy of a run read once; the start scores from ``start_scores.json`` beside it or the history's epoch 0) and asks, for each
threshold of each label-free signal, in which runs the warning would have fired (the signal above the threshold
at any clustered epoch from ``--from-epoch`` on) against which runs were *harmed*:

* ``below_start``: the last evaluated mAP is below the start (the model before training);
* ``ari_fell``: the last epoch's pseudo-label ARI (against the true identities) is below the first epoch's.

A run is harmed if either holds. An in-flight run is judged on the epochs it has (marked in the table).

Signals (all label-free: the trainer can compute them on a user's unlabelled data):
``single_camera_share`` (the share of one-camera clusters: ``cluster.warn_single_camera_share``),
``large_cluster_share`` (``cluster.warn_large_share``) and ``outlier_fraction`` (DBSCAN outliers / images).
For every threshold: fired-and-harmed, fired-but-healthy (false alarms), silent-but-harmed (misses),
silent-and-healthy. A threshold *separates* the runs when it has neither false alarms nor misses.

    python benchmarks/warning_calibration.py --runs /work/study-runs --output benchmarks/results/warning_calibration.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import result_header, write_json  # noqa: E402

SIGNALS = {
    "single_camera_share": (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99),
    "large_cluster_share": (0.05, 0.1, 0.2, 0.3, 0.5),
    "outlier_fraction": (0.2, 0.3, 0.5, 0.7, 0.8),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python benchmarks/warning_calibration.py --runs /work/study-runs "
                                       "--output benchmarks/results/warning_calibration.json")
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="folders searched for runs (metrics.json)")
    p.add_argument("--epochs", type=int, default=20, help="a run with fewer epochs is in flight (default 20)")
    p.add_argument("--from-epoch", type=int, default=1,
                   help="the warning looks at the epochs from this one on (default 1, as the trainer's; 2 or 3 "
                        "leave out the first clusterings, made from the starting weights' features)")
    p.add_argument("--output", default=None, metavar="JSON", help="also write the table and the runs here")
    args = p.parse_args(argv)
    missing = [d for d in args.runs if not Path(d).is_dir()]
    if missing:
        p.error(f"--runs: not a folder: {', '.join(missing)}")
    return args


def signal_value(row: dict[str, Any], name: str) -> float | None:
    """One epoch's value of a signal (None where the epoch did not record it)."""
    if name == "outlier_fraction":
        sizes = row.get("cluster_sizes") or {}
        return sizes.get("outlier_fraction")
    value = row.get(name)
    return None if value is None else float(value)


def judge_run(run_dir: Path, epochs: int, from_epoch: int = 1) -> dict[str, Any] | None:
    """A run's harm and its signals' per-epoch maxima; None for a folder that is not a run with an evaluation."""
    try:
        history = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(history, list) or not history:
        return None
    start_file = run_dir / "start_scores.json"
    start = json.loads(start_file.read_text()) if start_file.is_file() else next(
        (r for r in history if r.get("epoch") == 0), None)
    trained = [r for r in history if r.get("epoch", 0) > 0]
    scored = [r for r in trained if r.get("mAP") is not None]
    if start is None or start.get("mAP") is None or not scored:
        return None
    aris = [r["label_ari"] for r in trained if r.get("label_ari") is not None]
    below_start = scored[-1]["mAP"] < start["mAP"]
    ari_fell = len(aris) >= 2 and aris[-1] < aris[0]
    maxima = {}
    watched = [r for r in trained if r.get("epoch", 0) >= from_epoch]
    for name in SIGNALS:
        values = [v for v in (signal_value(r, name) for r in watched) if v is not None]
        maxima[name] = max(values) if values else None
    return {"run": str(run_dir), "epochs": len(trained), "in_flight": len(trained) < epochs,
            "start_mAP": start["mAP"], "last_mAP": scored[-1]["mAP"], "first_ari": aris[0] if aris else None,
            "last_ari": aris[-1] if aris else None, "below_start": below_start, "ari_fell": ari_fell,
            "harmed": below_start or ari_fell, "max": maxima,
            "warned_epochs": [r["epoch"] for r in trained if r.get("collapse_warning")]}


def find_runs(roots: list[str], epochs: int, from_epoch: int = 1) -> list[dict[str, Any]]:
    runs, seen = [], set()
    for root in roots:
        for metrics in sorted(Path(root).rglob("metrics.json")):
            content = hashlib.sha256(metrics.read_bytes()).hexdigest()
            if content in seen:  # a copy of a run already read (a row standing for another, a link)
                continue
            seen.add(content)
            judged = judge_run(metrics.parent, epochs, from_epoch)
            if judged is not None:
                runs.append(judged)
    return runs


def confusion(runs: list[dict[str, Any]], name: str, threshold: float) -> dict[str, int]:
    """Counts of the warning "signal > threshold at some epoch" against harm."""
    out = {"fired_harmed": 0, "false_alarm": 0, "missed": 0, "silent_healthy": 0}
    for r in runs:
        value = r["max"].get(name)
        fired = value is not None and value > threshold
        key = ("fired_harmed" if r["harmed"] else "false_alarm") if fired else ("missed" if r["harmed"] else "silent_healthy")
        out[key] += 1
    return out


def calibrate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for name, thresholds in SIGNALS.items():
        for t in thresholds:
            c = confusion(runs, name, t)
            table.append({"signal": name, "threshold": t, **c,
                          "separates": c["false_alarm"] == 0 and c["missed"] == 0 and c["fired_harmed"] > 0})
    return table


def render(runs: list[dict[str, Any]], table: list[dict[str, Any]]) -> str:
    lines = ["| run | epochs | start mAP | last mAP | ARI first -> last | harmed | max one-camera | max large share "
             "| max outliers |", "|---|---|---|---|---|---|---|---|---|"]
    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)
    for r in runs:
        name = "/".join(Path(r["run"]).parts[-4:])
        why = ", ".join(k for k in ("below_start", "ari_fell") if r[k]) or "no"
        lines.append(f"| {name} | {r['epochs']}{' (in flight)' if r['in_flight'] else ''} | {r['start_mAP']:.1f} | "
                     f"{r['last_mAP']:.1f} | {f(r['first_ari'], '.3f')} -> {f(r['last_ari'], '.3f')} | {why} | "
                     f"{f(r['max']['single_camera_share'])} | {f(r['max']['large_cluster_share'])} | "
                     f"{f(r['max']['outlier_fraction'])} |")
    lines += ["", "| signal | fires above | fired, harmed | false alarms | missed | silent, healthy | separates |",
              "|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['signal']} | {t['threshold']:g} | {t['fired_harmed']} | {t['false_alarm']} | {t['missed']} | "
                     f"{t['silent_healthy']} | {'yes' if t['separates'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = find_runs(args.runs, args.epochs, args.from_epoch)
    if not runs:
        print(f"no run with metrics.json and a start score under {', '.join(args.runs)}", file=sys.stderr)
        return 1
    table = calibrate(runs)
    print(render(runs, table))
    if args.output:
        write_json(Path(args.output), {**result_header("warning_calibration", argv), "from_epoch": args.from_epoch,
                                       "runs": runs, "table": table})
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
