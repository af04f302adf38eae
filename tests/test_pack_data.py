"""benchmarks/pack_data.py: a Market-layout set packed under a size cap reads back with the normal loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hardreid.data.datasets import load_dataset

from conftest import load_benchmark


def test_packed_copy_loads_unchanged_under_the_cap(tiny_root, tmp_path):
    pack_data = load_benchmark("pack_data")
    files = pack_data.image_files(tiny_root)
    original = sum((tiny_root / f).stat().st_size for f in files)
    cap_mb = 0.5 * original / 2**20  # half the original bytes: the quality (and maybe the size) must go down
    info = pack_data.main([str(tiny_root), str(tmp_path / "packed"), "--cap-mb", str(cap_mb), "--size", "128x64",
                           "--quality", "90", "--min-quality", "50", "--min-height", "16", "--workers", "1"])
    packed = tmp_path / "packed"
    assert info["bytes"] <= cap_mb * 2**20 and info["images"] == len(files)
    assert (info["height"], info["width"]) != (128, 64) or info["quality"] < 90  # the originals' size: it had to give
    assert json.loads((packed / "PACKED.json").read_text())["bytes"] == info["bytes"]
    assert sum((packed / f).stat().st_size for f in files) == info["bytes"]
    a, b = load_dataset("market", tiny_root), load_dataset("market", packed)
    for split in ("train", "query", "gallery"):
        ours, theirs = getattr(a, split), getattr(b, split)
        assert [(s.pid, s.camid) for s in ours] == [(s.pid, s.camid) for s in theirs]
        assert [Path(s.path).name for s in ours] == [Path(s.path).name for s in theirs]
    with Image.open(b.train[0].path) as image:
        assert image.format == "JPEG" and image.size == (info["width"], info["height"])
    with pytest.raises(SystemExit, match="exists"):
        pack_data.main([str(tiny_root), str(packed)])
    with pytest.raises(SystemExit, match="do not fit"):
        pack_data.main([str(tiny_root), str(tmp_path / "tiny"), "--cap-mb", "0.0001", "--size", "64x32",
                        "--min-height", "48", "--workers", "1"])
    assert not (tmp_path / "tiny").exists()
