"""Merge a study's finished runs into its committed results, apply its pre-registered verdict rule, draw its curves.

    python benchmarks/study_verdict.py --study benchmarks/studies/verdict_cuhk03/study.yaml \\
        --runs benchmarks/results/verdict_cuhk03 --commit "$(git rev-parse HEAD)"

``--runs`` is the ``--output`` folder of ``hard_sample_study.py`` (``runs/<row>/seed<N>/``); ``--commit`` the
commit whose code trained them (the lanes run from a worktree checked out at it). Every finished run (its
``metrics.json`` has the budget's epochs) is summarised and merged into ``results.json`` beside the study file:
runs already there are kept (a run is never dropped or silently replaced: the same row and seed from another
commit is refused), so the file accumulates over sessions and machines. Unfinished runs are listed as in flight.
From ``results.json`` alone the script then writes, beside it, ``results.md`` (the verdict table and the rows
table) and ``curves.png`` (mean mAP per row over the evaluated epochs, from the starting weights at epoch 0,
with a band from the lowest to the highest seed), and replaces the block between ``<!-- study:NAME:begin -->``
and ``<!-- study:NAME:end -->`` in every ``--readme`` file with the same tables (never edit them by hand).
A run folder with a ``commit.txt`` (one 40-digit hash) was trained by that commit whatever ``--commit`` says (a
run copied in from another study as a pre-registered stand-in). ``--render-only`` skips the merge (no ``--runs`` needed). A study file's ``columns`` adds figures to the rows table
(of start_mAP, start_top1, clusters, largest_cluster, seconds_per_epoch); a run merged before a figure existed gets it
at its next merge from the same runs (added, never replaced).

The verdict rule (written in the study file before the first run): for each generator row G against its base B
and each metric (final mAP, final top-1, last-epoch pseudo-label ARI), over the seeds both have (3 needed):
margin = max(floor, 2 x pooled sd), pooled sd = sqrt((sd_G^2 + sd_B^2) / 2); "helps" if mean_G - mean_B >=
margin and G beats B in at least 2 of the 3 seed pairs, "hurts" by the mirror rule, otherwise "no measurable
effect"; fewer than 3 seed pairs: "pending (n of 3)". A study file may need fewer seeds (``verdict: seeds_needed``;
the majority is then of the seeds there are, e.g. both of 2).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, write_json  # noqa: E402

METRICS = {  # key -> (label, format)
    "mAP": ("mAP", ".1f"), "best_mAP": ("best mAP", ".1f"), "top1": ("top-1", ".1f"), "top5": ("top-5", ".1f"),
    "label_ari": ("label ARI", ".3f"), "single_camera_share": ("one-camera clusters", ".2f"),
    "seconds_per_step": ("s / step", ".2f"),
}
EXTRA_COLUMNS = {  # a study file's ``columns``: more per-row figures after the standard ones
    "start_mAP": ("start mAP", ".1f"), "start_top1": ("start top-1", ".1f"), "clusters": ("clusters", ".0f"),
    "largest_cluster": ("largest cluster", ".0f"), "seconds_per_epoch": ("s / epoch", ".0f"),
}
VERDICT_METRICS = ("mAP", "top1", "label_ari")
SEEDS_NEEDED = 3


class StudyError(Exception):
    """A problem with the study's files: printed as one line."""


def part_name(text: str) -> str:
    if not text.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits and _ only (it names files and a README block)")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n"
                                       "  python benchmarks/study_verdict.py --study benchmarks/studies/verdict_cuhk03/study.yaml \\\n"
                                       "      --runs benchmarks/results/verdict_cuhk03 --commit $(git rev-parse HEAD) \\\n"
                                       "      --readme benchmarks/README.md README.md\n"
                                       "  python benchmarks/study_verdict.py --study benchmarks/studies/verdict_cuhk03/study.yaml --render-only")
    p.add_argument("--study", required=True, metavar="YAML", help="the study file (rows, budget, verdict)")
    p.add_argument("--runs", metavar="DIR", help="hard_sample_study.py's --output folder (runs/<row>/seed<N>/)")
    p.add_argument("--commit", metavar="SHA", help="the commit whose code trained the runs in --runs")
    p.add_argument("--results", metavar="JSON", help="default: results.json beside the study file")
    p.add_argument("--part", metavar="NAME", type=part_name, default=None,
                   help="the study's rows on other data (e.g. k4, a few-shot subset): their own results_NAME.json, "
                        "results_NAME.md and curves_NAME.png beside the study file, README block <study>_NAME")
    p.add_argument("--readme", nargs="*", default=[], metavar="MD", help="files whose study block is rewritten")
    p.add_argument("--render-only", action="store_true", help="no merge: tables and curves from results.json")
    args = p.parse_args(argv)
    if not args.render_only and not (args.runs and args.commit):
        p.error("--runs and --commit are needed to merge runs (or pass --render-only)")
    return args


# -- reading runs --------------------------------------------------------------------------------------------
def run_summary(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """The summary of a finished run (None when unfinished): final / best scores, labels, cost, curve."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None
    history = json.loads(metrics.read_text())
    if len(history) < epochs:
        return None
    evaluated = [r for r in history if "mAP" in r]
    if not evaluated:
        raise StudyError(f"{run_dir} finished without an evaluated epoch: the study needs train.eval_every > 0")
    final, last = evaluated[-1], history[-1]
    curve = {int(r["epoch"]): r["mAP"] for r in evaluated}
    start_file = run_dir / "start_scores.json"
    start = json.loads(start_file.read_text()) if start_file.is_file() else {}
    if "mAP" in start:
        curve = {0: start["mAP"], **curve}
    steps = [r["seconds_per_step"] for r in history if r.get("seconds_per_step")]
    epoch_seconds = [r["seconds"] for r in history if r.get("seconds")]
    return {"mAP": final["mAP"], "top1": final["top1"], "top5": final["top5"], "evaluated_epoch": final["epoch"],
            "best_mAP": max(r["mAP"] for r in evaluated), "start_mAP": start.get("mAP"), "start_top1": start.get("top1"),
            "label_ari": last.get("label_ari"), "single_camera_share": last.get("single_camera_share"),
            "clusters": last.get("clusters"), "outliers": last.get("outliers"),
            "largest_cluster": (last.get("cluster_sizes") or {}).get("size_max"),
            "seconds_per_epoch": statistics.fmean(epoch_seconds) if epoch_seconds else None,
            "seconds_per_step": statistics.fmean(steps) if steps else None, "epochs": len(history),
            "curve": {str(k): v for k, v in sorted(curve.items())}}


def merge(results: dict[str, Any], study: dict[str, Any], runs: Path, commit: str) -> tuple[list[str], list[str]]:
    """Add the finished runs under ``runs`` to ``results``; the names added and those in flight."""
    epochs = study["budget"]["epochs"]
    added, in_flight = [], []
    for row in study["rows"]:
        for seed in row.get("seeds", [1]):
            key = f"{row['name']}/seed{seed}"
            run_dir = runs / "runs" / row["name"] / f"seed{seed}"
            summary = run_summary(run_dir, epochs)
            if summary is None:
                if (run_dir / "metrics.json").is_file():
                    done = len(json.loads((run_dir / "metrics.json").read_text()))
                    in_flight.append(f"{key} (epoch {done}/{epochs})")
                continue
            run_commit = own_commit(run_dir) or commit
            old = results["runs"].get(key)
            if old is not None:
                if old["commit"] != run_commit:
                    raise StudyError(f"{key} is in the results from commit {old['commit'][:10]}, and {run_dir} "
                                     f"says {run_commit[:10]}: a row's runs come from one commit; remove one of them")
                for field, value in summary.items():  # figures a newer summary has: added, nothing replaced
                    old.setdefault(field, value)
                continue
            results["runs"][key] = {"row": row["name"], "seed": seed, "commit": run_commit, **summary}
            added.append(key)
    results["in_flight"] = in_flight
    return added, in_flight


def own_commit(run_dir: Path) -> str | None:
    """The commit a run folder names in ``commit.txt`` (a run copied from another study as a pre-registered stand-in,
    e.g. the camera study's m_ca_cbn for the verdict study's cam_base), or None: the ``--commit`` of the merge."""
    path = run_dir / "commit.txt"
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{40}", text):
        raise StudyError(f"{path} must hold one full 40-digit commit hash, got {text[:60]!r}")
    return text


# -- statistics and the verdict ------------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def verdict(generator: dict[int, float], base: dict[int, float], floor: float, needed: int = SEEDS_NEEDED) -> dict[str, Any]:
    """The pre-registered rule on one metric, over the seeds both rows have (values by seed)."""
    seeds = sorted(set(generator) & set(base))
    if len(seeds) < needed:
        return {"verdict": f"pending ({len(seeds)} of {needed} seeds)", "seeds": seeds}
    g, b = [generator[s] for s in seeds], [base[s] for s in seeds]
    difference = statistics.fmean(g) - statistics.fmean(b)
    pooled = math.sqrt((statistics.variance(g) + statistics.variance(b)) / 2)
    margin = max(floor, 2 * pooled)
    wins = sum(x > y for x, y in zip(g, b))
    losses = sum(x < y for x, y in zip(g, b))
    majority = len(seeds) // 2 + 1  # 2 of 3, 2 of 2
    if difference >= margin and wins >= majority:
        word = "helps"
    elif -difference >= margin and losses >= majority:
        word = "hurts"
    else:
        word = "no measurable effect"
    return {"verdict": word, "difference": difference, "margin": margin, "pooled_sd": pooled, "wins": wins,
            "losses": losses, "seeds": seeds}


def aggregate(results: dict[str, Any], study: dict[str, Any]) -> dict[str, Any]:
    """Per row: n and the spread of every metric, the mean curve and its band; per generator row: the verdicts."""
    rows = {}
    for row in study["rows"]:
        runs = sorted((r for r in results["runs"].values() if r["row"] == row["name"]), key=lambda r: r["seed"])
        entry = {"row": row["name"], "set": row.get("set_name", ""), "runs": len(runs),
                 "commits": sorted({r["commit"] for r in runs})}
        for metric in (*METRICS, *EXTRA_COLUMNS):
            entry[metric] = spread([r.get(metric) for r in runs])
        epochs = sorted({int(e) for r in runs for e in r["curve"]})
        entry["curve"] = {str(e): spread([r["curve"].get(str(e)) for r in runs]) for e in epochs}
        rows[row["name"]] = entry
    bases = study.get("verdict", {}).get("base", {})
    floors = study.get("verdict", {}).get("floors", {"mAP": 1.0, "top1": 1.0, "label_ari": 0.01})
    needed = int(study.get("verdict", {}).get("seeds_needed", SEEDS_NEEDED))  # the study file may ask for fewer
    for row in study["rows"]:
        base = bases.get(row.get("set_name", ""))
        if base is None or base == row["name"] or base not in rows:
            continue
        by_seed = {name: {r["seed"]: r for r in results["runs"].values() if r["row"] == name} for name in (row["name"], base)}
        rows[row["name"]]["verdict"] = {"base": base, **{
            metric: verdict({s: r[metric] for s, r in by_seed[row["name"]].items() if r.get(metric) is not None},
                            {s: r[metric] for s, r in by_seed[base].items() if r.get(metric) is not None},
                            floors[metric], needed) for metric in VERDICT_METRICS}}
    return rows


# -- tables and the picture -----------------------------------------------------------------------------------
def _cell(s: dict[str, Any], fmt: str, extremes: bool = False) -> str:
    if s["mean"] is None:
        return "-"
    text = format(s["mean"], fmt) + (f" ± {format(s['sd'], fmt)}" if s["n"] > 1 else "")
    if extremes and s["n"] > 1:
        text += f" ({format(s['min'], fmt)}-{format(s['max'], fmt)})"
    return text


def _verdict_cell(v: dict[str, Any], fmt: str) -> str:
    if "difference" not in v:
        return v["verdict"]
    return f"**{v['verdict']}** ({format(v['difference'], '+' + fmt)}, margin {format(v['margin'], fmt)}, {v['wins']}/{len(v['seeds'])} seeds better)"


def markdown(rows: dict[str, Any], results: dict[str, Any], columns: list[str] | None = None) -> str:
    """The verdict table and the rows table (the standard figures, then the study's ``columns``)."""
    shown = {**METRICS, **{c: EXTRA_COLUMNS[c] for c in columns or []}}
    lines = ["| generator row | base | mAP | top-1 | pseudo-label ARI |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        if "verdict" in row:
            v = row["verdict"]
            lines.append(f"| {name} | {v['base']} | {_verdict_cell(v['mAP'], '.1f')} | {_verdict_cell(v['top1'], '.1f')} "
                         f"| {_verdict_cell(v['label_ari'], '.3f')} |")
    lines += ["", "| row | set | seeds | " + " | ".join(label for label, _ in shown.values()) + " |",
              "|---|---|---|" + "---|" * len(shown)]
    for name, row in rows.items():
        cells = [_cell(row[m], fmt, extremes=m in ("mAP", "best_mAP")) for m, (_, fmt) in shown.items()]
        lines.append(f"| {name} | {row['set'] or '-'} | {row['runs']} | " + " | ".join(cells) + " |")
    commits = sorted({c for row in rows.values() for c in row["commits"]})
    lines += ["", f"Final = the last evaluated epoch; best = the best evaluated epoch (not a model one could pick without "
                  f"labels); mean ± sample sd over seeds (lowest-highest). Runs from commit(s) "
                  f"{', '.join(c[:10] for c in commits) or '-'}; in flight when last merged: "
                  f"{', '.join(results.get('in_flight', [])) or 'none'}."]
    return "\n".join(lines) + "\n"


def draw_curves(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, row in rows.items():
        if not row["curve"]:
            continue
        epochs = [int(e) for e in row["curve"]]
        mean = [row["curve"][str(e)]["mean"] for e in epochs]
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=f"{name} ({row['runs']} seed{'s' * (row['runs'] != 1)})")
        ax.fill_between(epochs, [row["curve"][str(e)]["min"] for e in epochs],
                        [row["curve"][str(e)]["max"] for e in epochs], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch (0 = the starting weights)")
    ax.set_ylabel("mAP (%)")
    ax.set_title("mean over seeds, band = lowest to highest seed")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replace_block(path: Path, name: str, text: str, source: str | None = None) -> None:
    """Rewrite the block ``<!-- study:NAME:begin/end -->`` of ``path`` with ``text`` (``source``: the results
    file it came from, default NAME/results.json)."""
    begin, end = f"<!-- study:{name}:begin -->", f"<!-- study:{name}:end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        raise StudyError(f"{path} has no block {begin} ... {end} to fill; add the two lines where the tables go")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n<!-- written by benchmarks/study_verdict.py from {source or name + '/results.json'}: "
                    f"do not edit by hand -->\n{text}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study_path = Path(args.study)
        try:
            study = yaml.safe_load(study_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise StudyError(f"cannot read the study file {study_path}: {exc}") from None
        suffix = f"_{args.part}" if args.part else ""
        results_path = Path(args.results) if args.results else study_path.parent / f"results{suffix}.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
        results.setdefault("study", str(study_path))
        results.setdefault("budget", study.get("budget"))
        if not args.render_only:
            runs = Path(args.runs)
            if not (runs / "runs").is_dir():
                raise StudyError(f"{runs} holds no runs/ folder: pass hard_sample_study.py's --output")
            added, in_flight = merge(results, study, runs, args.commit)
            if added:  # where and when they were merged (the runs' own logs say where they trained)
                results.setdefault("machines", []).append({"merged": added, **machine_description()})
            print(f"merged {len(added)} finished run(s): {', '.join(added) or '-'}; in flight: {', '.join(in_flight) or '-'}")
        columns = study.get("columns") or []
        unknown = [c for c in columns if c not in EXTRA_COLUMNS]
        if unknown:
            raise StudyError(f"{study_path}: unknown columns {unknown}; choose from {', '.join(EXTRA_COLUMNS)}")
        rows = aggregate(results, study)
        results["rows"] = rows
        write_json(results_path, results)
        table = markdown(rows, results, columns)
        (results_path.parent / f"results{suffix}.md").write_text(table)
        draw_curves(rows, results_path.parent / f"curves{suffix}.png")
        for readme in args.readme:
            replace_block(Path(readme), study_path.parent.name + suffix, table,
                          f"{study_path.parent.name}/{results_path.name}")
        print(table)
        print(f"wrote {results_path}, results{suffix}.md and curves{suffix}.png beside it"
              + (f"; updated {', '.join(args.readme)}" if args.readme else ""))
        return 0
    except StudyError as exc:
        print(f"study_verdict: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
