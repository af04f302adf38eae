"""Golden runs: a tiny run of every method, its final metrics and a hash of its weights, to prove that a change
(a restructuring, a refactor) changes no number.

    # before the change: generate the data once, record
    python benchmarks/golden_runs.py --data runs/golden/data --output runs/golden/before.json
    # after it, on the same machine, with the same data folder: compare
    python benchmarks/golden_runs.py --data runs/golden/data --output runs/golden/after.json \\
        --compare runs/golden/before.json

Every method of the toolkit (Cluster Contrast, SpCL, ICE, the strong baseline, full ACFL, ACFL-C, ACFL with a
mean teacher, hard negative generation) trains 2 epochs x 2 steps of MobileNetV2 at 64x32 from random
initialisation, on one thread, on a generated data set (written to ``--data`` once and read from there
afterwards, so that a change of the generator cannot hide in the comparison). Recorded per method: every
metrics row (pseudo labels, losses, mAP, ...) except timings, and SHA-256 of the final weights, of the method's
shared state (memories, teachers) and of the optimiser state. ``--compare`` exits 1 and names each method and
value that differs. Float results are bit-exact only on the same machine and library versions: this is a
script to run by hand around a change, not a CI assertion.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, repo_src_on_path, write_json  # noqa: E402

repo_src_on_path()

import torch  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = {  # name -> the method's own CPU config
    "cluster_contrast": "cluster_contrast/cpu_official.yaml",
    "spcl": "spcl/cpu_mobilenet.yaml",
    "ice": "ice/cpu_mobilenet.yaml",
    "strong_baseline": "strong_baseline/cpu_mobilenet.yaml",
    "acfl": "acfl/cpu_mobilenet.yaml",
    "acfl_c": "acfl/t6_acfl_c.yaml",
    "acfl_st": "acfl/t9_acfl_st.yaml",
    "hng": "hng/cpu_mobilenet.yaml",
}
TINY = {
    "data": {"format": "market", "height": 64, "width": 32, "workers": 0, "batch_size": 16, "num_instances": 4},
    "model": {"backbone": "mobilenet_v2", "last_stride": 2, "weights": "", "pretrained": False},
    "cluster": {"k1": 6, "k2": 2, "eps": 0.6, "min_samples": 2},
    "train": {"epochs": 2, "iters": 2, "eval_every": 1, "device": "cpu", "seed": 0},
    "eval": {"batch_size": 32},
}
EXTRA = {"hng": {"hng": {"warmup_epochs": 1, "ngf": 8, "ndf": 8}}}
TIMINGS = ("seconds", "train_seconds", "seconds_per_step")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n"
                                       "  python benchmarks/golden_runs.py --data runs/golden/data --output runs/golden/before.json\n"
                                       "  python benchmarks/golden_runs.py --data runs/golden/data --output runs/golden/after.json "
                                       "--compare runs/golden/before.json\n"
                                       "  python benchmarks/golden_runs.py --data runs/golden/data --output x.json --only cluster_contrast")
    p.add_argument("--data", required=True, metavar="DIR", help="the generated data set (written here if absent)")
    p.add_argument("--output", required=True, metavar="JSON", help="where the record goes")
    p.add_argument("--compare", metavar="JSON", help="an earlier record: exit 1 when anything differs")
    p.add_argument("--only", nargs="+", choices=sorted(METHODS), metavar="METHOD", help=f"a subset of {', '.join(METHODS)}")
    return p.parse_args(argv)


def digest(tensors: Any) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) in nested dicts / lists, in sorted key order."""
    h = hashlib.sha256()

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key], f"{name}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}[{i}]")

    walk(tensors, "")
    return h.hexdigest()


def ensure_data(folder: Path) -> Path:
    from hardreid.data.synthetic import SyntheticConfig, generate_synthetic

    if (folder / "bounding_box_train").is_dir():
        return folder
    return generate_synthetic(folder, SyntheticConfig(num_train_ids=10, num_test_ids=6, num_cameras=2,
                                                      images_per_camera=3, num_distractors=2, seed=3))


def golden_run(method: str, data_root: Path) -> dict[str, Any]:
    from hardreid.config import apply_dict, load_config
    from hardreid.data.datasets import load_dataset
    from hardreid.training.trainer import Trainer

    cfg = load_config(CONFIGS / METHODS[method])
    apply_dict(cfg, TINY, "golden settings")
    apply_dict(cfg, EXTRA.get(method, {}), "golden settings")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, load_dataset("market", data_root), Path(tmp) / method)
        trainer.fit()
        rows = [{k: v for k, v in row.items() if k not in TIMINGS} for row in trainer.history]
        return {"metrics": rows, "weights": digest(trainer.model.state_dict()),
                "shared": digest(trainer.method.shared_state()), "optimizer": digest(trainer.optimizer.state_dict()["state"])}


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for method, old in before.items():
        new = after.get(method)
        if new is None:
            continue
        for key in ("weights", "shared", "optimizer"):
            if old[key] != new[key]:
                out.append(f"{method}: {key} hash differs")
        for old_row, new_row in zip(old["metrics"], new["metrics"]):
            for key in sorted(set(old_row) | set(new_row)):
                if old_row.get(key) != new_row.get(key):
                    out.append(f"{method} epoch {old_row.get('epoch')}: {key} {old_row.get(key)!r} -> {new_row.get(key)!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hardreid.training.run_files import setup_logging

    torch.set_num_threads(1)
    setup_logging(None, verbose=False)
    data_root = ensure_data(Path(args.data))
    runs = {}
    for method in args.only or METHODS:
        print(f"{method} ...", flush=True)
        runs[method] = golden_run(method, data_root)
        print(f"  weights {runs[method]['weights'][:16]}  final {runs[method]['metrics'][-1].get('mAP')}", flush=True)
    write_json(args.output, {"machine": machine_description(), "data": str(data_root), "runs": runs})
    print(f"wrote {args.output}")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())["runs"]
        found = differences(before, runs)
        print("\n".join(found) if found else f"identical to {args.compare}: {', '.join(runs)}")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
