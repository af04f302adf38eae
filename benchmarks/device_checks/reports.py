"""The reports of ``benchmarks/device_run.py``: ``device_run.json`` and ``device_run.md`` (every stage's status as
a table, then one section a stage, drawn by its renderer in ``RENDERERS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import common


def write_reports(report: dict[str, Any], out: Path) -> None:
    common.write_json(out / "device_run.json", report)
    (out / "device_run.md").write_text(markdown(report))


def _f(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# hardreid device run ({report['date']})", "",
             f"Machine: {m.get('gpu') or 'no GPU'} ({m.get('nvidia_smi') or '-'}), CUDA {m.get('cuda')}, "
             f"{m.get('cpu')}, {m.get('usable_cores')} cores, {m.get('ram_gb')} GB RAM; torch {m.get('torch')}, "
             f"Python {m.get('python')}.", "",
             f"Command: `{report['command']}`. Budget {report['budget_s']:.0f}s, used {report.get('elapsed_s', 0):.0f}s.", "",
             *[f"- {note}" for note in report["notes"]], "",
             *_table(["stage", "status", "seconds", "limit"],
                     [[name, s["status"], s.get("seconds"), s.get("limit_s")] for name, s in report["stages"].items()])]
    for name, s in report["stages"].items():
        lines += ["", f"## {name}", ""]
        if s.get("note"):
            lines.append(s["note"])
        if s.get("error"):
            lines.append(f"Error: `{s['error'][:300]}`")
        if s.get("skipped"):
            lines.append(f"Skipped: {s['skipped']}")
        render = RENDERERS.get(name)
        if render is not None and s["status"] != "skipped":
            try:
                lines += render(s)
            except Exception as exc:  # noqa: BLE001 - a partial result must not lose the report
                lines.append(f"(could not render: {type(exc).__name__}: {exc})")
    return "\n".join(lines) + "\n"


def _render_tests(s: dict[str, Any]) -> list[str]:
    out = []
    if "summary" in s:
        out.append(", ".join(f"{k} {v}" for k, v in s["summary"].items()))
    if s.get("tests"):
        out += ["", *_table(["test", "outcome", "s", "detail"],
                            [[t["test"], t["outcome"], t["seconds"], t["detail"][:80]] for t in s["tests"]])]
    return out


def _render_methods(s: dict[str, Any]) -> list[str]:
    setup = s.get("setup", {})
    out = [", ".join(f"{k} {v}" for k, v in setup.items()), ""]
    rows = [[name, {True: "pass", False: "FAIL", None: "skipped"}[r.get("ok")], r.get("loss"), r.get("seconds_per_step"),
             r.get("amp_skipped_steps"), r.get("clusters"), r.get("peak_gpu_mb"),
             (r.get("error") or ", ".join(r.get("nonfinite", [])) or r.get("skipped") or "")[:100]]
            for name, r in s.get("methods", {}).items()]
    return out + _table(["method", "result", "loss", "s / step", "scaler-skipped steps", "clusters", "peak GPU MB",
                         "note"], rows)


def _render_throughput(s: dict[str, Any]) -> list[str]:
    out = [", ".join(f"{k} {v}" for k, v in s.get("setup", {}).items()), ""]
    rows = []
    for backbone, results in s.get("backbones", {}).items():
        for name, r in results.items():
            rows.append([backbone, name, r.get("images_per_s"), r.get("seconds_per_step"), r.get("vs_floor"),
                         r.get("peak_gpu_mb"), r.get("error") or r.get("skipped") or ""])
    return out + _table(["backbone", "step", "images / s", "s / step", "x floor", "peak GPU MB", "note"], rows)


def _render_pseudo(s: dict[str, Any]) -> list[str]:
    out = [", ".join(f"{k} {v}" for k, v in s.get("setup", {}).items()),
           f"Feature generation (s): {s.get('generate_s', {})}; largest N run: {s.get('largest_n')}", ""]
    rows = [[r.get("n"), r.get("device"), r.get("mode"), r.get("knn_s"), r.get("jaccard_rest_s"), r.get("dbscan_s"),
             r.get("total_s"), r.get("peak_gpu_mb"), r.get("peak_rss_mb"),
             f"{r['ari']} ({r['ari_vs']})" if "ari" in r else "-", (r.get("error") or r.get("clusters") or "")[:60]]
            for r in s.get("runs", {}).values()]
    return out + _table(["N", "device", "mode", "kNN s", "rest s", "DBSCAN s", "total s", "GPU MB", "RSS MB",
                         "ARI (vs)", "clusters / error"], rows)


def _render_evaluation(s: dict[str, Any]) -> list[str]:
    rows = [[name, r.get("queries"), r.get("gallery"), r.get("device"), r.get("distance_s"), r.get("total_s"),
             r.get("mAP"), r.get("top1"), r.get("peak_gpu_mb"), r.get("error") or r.get("skipped") or ""]
            for name, r in s.get("runs", {}).items()]
    return _table(["run", "queries", "gallery", "device", "distances s", "total s", "mAP", "top-1", "peak GPU MB",
                   "note"], rows)


def _render_real(s: dict[str, Any]) -> list[str]:
    out = [", ".join(f"{k} {v}" for k, v in s.get("setup", {}).items() if k != "overrides"), ""]
    if s.get("stopped"):
        out += [f"Stopped {s['stopped']}.", ""]
    rows = [[name, e.get("epoch"), e.get("mAP"), e.get("top1"), e.get("clusters"), e.get("label_ari"), e.get("loss"),
             e.get("seconds_per_step"), e.get("seconds")]
            for name, epochs in s.get("epochs", {}).items() for e in epochs]
    return out + _table(["method", "epoch", "mAP", "top-1", "clusters", "label ARI", "loss", "s / step",
                         "epoch s"], rows)


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "cuda_tests": _render_tests, "methods_amp": _render_methods, "throughput": _render_throughput,
    "pseudo_labels": _render_pseudo, "evaluation": _render_evaluation, "real_data": _render_real,
}
