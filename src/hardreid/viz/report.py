"""Self-contained HTML reports of ranked lists: one row per query, its top-k hits with scores.

One file, nothing beside it: thumbnails are embedded as base64 JPEG (64 x 128).
Frames: blue = query, green = same identity, red = another identity, grey =
unknown. Rows with an average precision (``evaluate --html``) can be sorted
best / worst first with the buttons, or by opening the file with
``#sort=best`` / ``#sort=worst``.
"""

from __future__ import annotations

import base64
import html
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.images import read_image
from ..data.types import ReidDataset
from ..errors import UserError
from .ranked import CELL, GREEN, GREY, RED, ranked_gallery
from ..files import atomic_write_text

BLUE = (40, 90, 200)
COLOURS = {"query": BLUE, "match": GREEN, "wrong": RED, "unknown": GREY}


@dataclass
class Cell:
    path: str  # image file (absolute, or relative to the working directory)
    caption: str
    status: str = "unknown"  # query | match | wrong | unknown


@dataclass
class Row:
    query: Cell
    hits: list[Cell]
    ap: float | None = None  # average precision in percent (evaluate), None for plain search
    note: str = ""


@dataclass
class _Thumbnails:
    """base64 JPEG per path, each image read once; missing images are counted."""

    cache: dict[str, str | None] = field(default_factory=dict)
    missing: int = 0

    def __call__(self, path: str) -> str | None:
        if path not in self.cache:
            try:
                image = read_image(path).resize(CELL, Image.BICUBIC)
            except UserError:
                self.cache[path] = None
                self.missing += 1
            else:
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=85)
                self.cache[path] = base64.b64encode(buffer.getvalue()).decode("ascii")
        return self.cache[path]


STYLE = """
body { font-family: sans-serif; margin: 16px; background: #fff; color: #222; }
h1 { font-size: 20px; margin: 0 0 6px 0; }
.summary { font-size: 13px; margin: 0 0 8px 0; }
#controls { margin: 0 0 12px 0; font-size: 13px; }
#controls button { margin-right: 6px; }
.row { display: flex; align-items: flex-start; margin: 0 0 10px 0; }
.cell { width: 76px; margin-right: 4px; font-size: 10px; text-align: center; overflow-wrap: anywhere; }
.cell.query { margin-right: 16px; }
.thumb { display: block; box-sizing: content-box; width: 64px; height: 128px; border: 4px solid rgb%(unknown)s; }
.query .thumb { border-color: rgb%(query)s; }
.match .thumb { border-color: rgb%(match)s; }
.wrong .thumb { border-color: rgb%(wrong)s; }
.missing { background: #eee; line-height: 128px; }
""" % {k: str(v) for k, v in COLOURS.items()}

SCRIPT = """
function sortRows(how) {
  var box = document.getElementById('rows');
  var rows = Array.prototype.slice.call(box.children);
  rows.sort(function (a, b) {
    if (how === 'best' || how === 'worst') {
      var d = parseFloat(a.dataset.ap) - parseFloat(b.dataset.ap);
      if (d !== 0) return how === 'best' ? -d : d;
    }
    return parseInt(a.dataset.order) - parseInt(b.dataset.order);
  });
  rows.forEach(function (r) { box.appendChild(r); });
}
document.querySelectorAll('[data-sort]').forEach(function (b) {
  b.onclick = function () { sortRows(b.dataset.sort); };
});
var wanted = location.hash.match(/sort=(best|worst|given)/);
if (wanted) sortRows(wanted[1]);
"""


def _cell_html(cell: Cell, thumbs: _Thumbnails) -> str:
    data = thumbs(cell.path)
    title = html.escape(str(cell.path), quote=True)
    image = (f'<img class="thumb" src="data:image/jpeg;base64,{data}" title="{title}" alt="">' if data else
             f'<div class="thumb missing" title="{title}">missing</div>')
    return f'<div class="cell {cell.status}">{image}<div>{html.escape(cell.caption)}</div></div>'


def write_report(rows: Sequence[Row], path: str | Path, title: str, summary: Sequence[str] = ()) -> Path:
    """Write the report (see the module docstring); rows keep their order unless sorted in the page."""
    thumbs = _Thumbnails()
    sortable = any(r.ap is not None for r in rows)
    body = []
    for order, row in enumerate(rows):
        ap = "" if row.ap is None else f' data-ap="{row.ap:.4f}"'
        cells = "".join(_cell_html(c, thumbs) for c in [row.query, *row.hits])
        body.append(f'<div class="row" data-order="{order}"{ap}>{cells}</div>')
    controls = ('<div id="controls">order: <button data-sort="given">as listed</button>'
                '<button data-sort="best">best AP first</button><button data-sort="worst">worst AP first</button></div>'
                if sortable else "")
    text = "".join(f'<p class="summary">{html.escape(line)}</p>' for line in summary)
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{text}{controls}'
            f'<div id="rows">\n' + "\n".join(body) + f'\n</div><script>{SCRIPT}</script></body></html>\n')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    if thumbs.missing:
        print(f"warning: {thumbs.missing} image(s) of the report could not be read; shown as 'missing'", file=sys.stderr)
    return path


def _identity(pid: int | None, camera: int | None) -> str:
    parts = [f"id {pid}" if pid is not None else "", f"cam {camera}" if camera is not None else ""]
    return " ".join(p for p in parts if p)


def search_rows(results, gallery_root: str | Path, query_root: str | Path) -> list[Row]:
    """Report rows of ``retrieval.search.search_gallery`` results (captions: rank and cosine similarity)."""
    rows = []
    for r in results:
        query = Cell(str(Path(query_root) / r.query), f"{Path(r.query).name} {_identity(r.pid, r.camera)}".strip(), "query")
        hits = [Cell(str(Path(gallery_root) / h.path), f"{h.rank}: {h.score:.3f}",
                     {True: "match", False: "wrong", None: "unknown"}[h.match]) for h in r.hits]
        rows.append(Row(query, hits))
    return rows


def choose_by_ap(ap: np.ndarray, num: int) -> list[int]:
    """Positions of ``num`` entries spread evenly along the AP ranking (always the best and the worst)."""
    order = np.argsort(-ap, kind="stable")
    picks = np.linspace(0, len(order) - 1, num=min(num, len(order))).round().astype(int)
    return sorted({int(order[i]) for i in picks})


def evaluation_rows(dist: torch.Tensor, dataset: ReidDataset, all_ap: np.ndarray, valid: np.ndarray, topk: int = 10,
                    max_queries: int = 100, cosine: bool = True) -> list[Row]:
    """Rows of an evaluation: up to ``max_queries`` valid queries spread along the AP ranking (best to worst).

    Hits follow the Market-1501 protocol (the query's own camera and identity, and junk, left
    out). ``cosine``: distances are 2 - 2 cos (captions show the cosine), else re-ranked
    distances (captions show them as they are).
    """
    dist = torch.as_tensor(dist)
    queries = np.flatnonzero(valid)
    rows = []
    for position in choose_by_ap(np.asarray(all_ap), max_queries):
        qi = int(queries[position])
        q = dataset.query[qi]
        ap = float(all_ap[position])
        query = Cell(q.path, f"{Path(q.path).name} AP {ap:.1f}", "query")
        hits = []
        for rank, gi in enumerate(ranked_gallery(dist[qi], dataset, qi, topk), 1):
            g = dataset.gallery[gi]
            d = float(dist[qi, gi])
            score = f"{1 - d / 2:.3f}" if cosine else f"d {d:.3f}"
            hits.append(Cell(g.path, f"{rank}: {score}", "match" if g.pid == q.pid else "wrong"))
        rows.append(Row(query, hits, ap))
    return rows
