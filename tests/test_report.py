"""HTML reports: one self-contained file, rendered in headless Chromium, rows and frame colours where expected."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardreid.viz.report import BLUE, COLOURS, Cell, Row, choose_by_ap, evaluation_rows, write_report

SOLID = (120, 120, 160)  # the test images: one colour that no frame uses
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--force-device-scale-factor=1", "--hide-scrollbars"]


def _chromium() -> str:
    """The chromium binary; installed with apt-get (Debian's 'chromium') when missing and possible, else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                        ["sh", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium"]):
            subprocess.run(command, capture_output=True, timeout=900, env=env)
            found = shutil.which("chromium")
            if found:
                return found
    pytest.skip("headless Chromium is not installed and could not be installed here (Debian: apt-get install "
                "chromium, as root): the HTML report was not rendered in a browser")


def _screenshot(html: Path, out: Path, fragment: str = "", size: str = "1000,900") -> np.ndarray:
    profile = out.parent / f"profile-{out.stem}"
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size}",
           html.resolve().as_uri() + fragment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.is_file(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _frame_rows(pixels: np.ndarray) -> list[list[str]]:
    """Per rendered row (top to bottom): the frame colours left to right, read along the row's middle line."""
    names = {tuple(v): k for k, v in COLOURS.items()}
    blue = (np.abs(pixels - np.array(BLUE)).max(axis=2) <= 8).any(axis=1)
    starts = np.flatnonzero(blue & ~np.r_[False, blue[:-1]])
    ends = np.flatnonzero(blue & ~np.r_[blue[1:], False])
    rows = []
    for top, bottom in zip(starts, ends):
        line = pixels[(top + bottom) // 2]
        seen, previous = [], None
        for colour in line:
            name = next((n for c, n in names.items() if np.abs(colour - np.array(c)).max() <= 8), None)
            if name and name != previous:
                seen.append(name)
            previous = name
        rows.append(seen[::2])  # a frame is crossed twice: its left and right border
    return rows


def _rows(tmp_path: Path) -> list[Row]:
    image = tmp_path / "solid.png"
    Image.new("RGB", (32, 64), SOLID).save(image)
    def cells(*status):
        return [Cell(str(image), f"{i + 1}: 0.5", s) for i, s in enumerate(status)]
    return [Row(Cell(str(image), "q0", "query"), cells("match", "wrong", "wrong"), ap=20.0),
            Row(Cell(str(image), "q1", "query"), cells("wrong", "match", "match"), ap=90.0),
            Row(Cell(str(image), "q2", "query"), cells("unknown", "wrong", "match"), ap=50.0)]


def test_report_is_one_self_contained_file(tmp_path):
    path = write_report(_rows(tmp_path), tmp_path / "r.html", "title <&>", ["mAP 53.3"])
    text = path.read_text()
    assert text.count('class="row"') == 3 and "title &lt;&amp;&gt;" in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 12 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert "http" not in text.replace("http-equiv", "") and not re.search(r"<link|<script src", text)
    assert 'data-ap="90.0000"' in text and 'data-sort="worst"' in text


def test_report_rows_render_in_chromium_and_sort_by_ap(tmp_path):
    path = write_report(_rows(tmp_path), tmp_path / "r.html", "report", ["three queries"])
    given = _frame_rows(_screenshot(path, tmp_path / "given.png"))
    assert given == [["query", "match", "wrong", "wrong"], ["query", "wrong", "match", "match"],
                     ["query", "unknown", "wrong", "match"]]
    best = _frame_rows(_screenshot(path, tmp_path / "best.png", "#sort=best"))
    assert best == [given[1], given[2], given[0]]  # AP 90, 50, 20
    worst = _frame_rows(_screenshot(path, tmp_path / "worst.png", "#sort=worst"))
    assert worst == best[::-1]


def test_evaluation_rows_spread_along_the_ap_ranking(tiny_root):
    import torch

    from hardreid.data.datasets import load_dataset
    from hardreid.evaluation.pipeline import score_distances

    dataset = load_dataset("market", tiny_root)
    rng = np.random.default_rng(0)
    dist = torch.as_tensor(rng.random((len(dataset.query), len(dataset.gallery))), dtype=torch.float32)
    result = score_distances(dist, dataset)
    rows = evaluation_rows(dist, dataset, result.all_ap, result.valid_query, topk=5, max_queries=3)
    aps = sorted(r.ap for r in rows)
    assert len(rows) == 3 and aps[0] == result.all_ap.min() and aps[-1] == result.all_ap.max()
    for row in rows:  # hits follow the protocol: never the query's own identity and camera, never junk
        q = next(s for s in dataset.query if s.path == row.query.path)
        for cell in row.hits:
            g = next(s for s in dataset.gallery if s.path == cell.path)
            assert g.pid >= 0 and not (g.pid == q.pid and g.camid == q.camid)
            assert cell.status == ("match" if g.pid == q.pid else "wrong")
    assert choose_by_ap(np.array([5.0, 1.0, 9.0, 3.0]), 2) == [1, 2] and choose_by_ap(np.array([1.0]), 5) == [0]
