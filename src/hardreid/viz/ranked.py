"""Ranked-result pictures: each row a query and its top-k gallery matches, green = same identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.images import read_image
from ..data.types import ReidDataset
from ..files import atomic_save_image

CELL = (64, 128)  # width, height of one thumbnail
BORDER = 4
GREEN, RED, GREY = (40, 170, 60), (210, 40, 40), (150, 150, 150)


def choose_queries(dist: torch.Tensor, dataset: ReidDataset, num: int) -> list[int]:
    """``num`` queries spread over the query list, preferring ones with a valid cross-camera match."""
    valid = [i for i, q in enumerate(dataset.query)
             if any(g.pid == q.pid and g.camid != q.camid for g in dataset.gallery)]
    pool = valid or list(range(len(dataset.query)))
    picks = np.linspace(0, len(pool) - 1, num=min(num, len(pool))).round().astype(int)
    return [pool[i] for i in dict.fromkeys(picks.tolist())]


def ranked_gallery(dist_row: torch.Tensor, dataset: ReidDataset, query_index: int, topk: int) -> list[int]:
    """Top-k gallery indices under the Market-1501 protocol (same id + camera and junk removed)."""
    q = dataset.query[query_index]
    order = torch.argsort(dist_row, stable=True).tolist()
    kept = [g for g in order if not ((dataset.gallery[g].pid == q.pid and dataset.gallery[g].camid == q.camid)
                                     or dataset.gallery[g].pid < 0)]
    return kept[:topk]


def _thumb(path: str, colour: tuple[int, int, int]) -> Image.Image:
    image = read_image(path).resize(CELL, Image.BICUBIC)
    framed = Image.new("RGB", (CELL[0] + 2 * BORDER, CELL[1] + 2 * BORDER), colour)
    framed.paste(image, (BORDER, BORDER))
    return framed


def save_ranked_results(dist: torch.Tensor, dataset: ReidDataset, out_path: str | Path, num_queries: int = 8,
                        topk: int = 10) -> Path:
    """Write a PNG grid: query (grey frame) then its top-k matches (green correct, red wrong)."""
    dist = torch.as_tensor(dist)
    queries = choose_queries(dist, dataset, num_queries)
    cell_w, cell_h = CELL[0] + 2 * BORDER, CELL[1] + 2 * BORDER
    gap, label_h = 12, 14
    canvas = Image.new("RGB", ((topk + 1) * cell_w + gap + 8, len(queries) * (cell_h + label_h) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for row, qi in enumerate(queries):
        y = row * (cell_h + label_h) + label_h
        q = dataset.query[qi]
        canvas.paste(_thumb(q.path, GREY), (4, y))
        draw.text((4, y - label_h + 1), f"query {q.pid}", fill="black")
        for rank, gi in enumerate(ranked_gallery(dist[qi], dataset, qi, topk)):
            g = dataset.gallery[gi]
            x = 4 + gap + (rank + 1) * cell_w
            canvas.paste(_thumb(g.path, GREEN if g.pid == q.pid else RED), (x, y))
            draw.text((x, y - label_h + 1), f"{rank + 1}: {float(dist[qi, gi]):.2f}", fill="black")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(out_path, canvas)
    return out_path
