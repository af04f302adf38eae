"""Tiny training runs for tests/test_distributed.py: started by torchrun (2 processes, gloo) and, as references,
in the test's own process (1 process). Each run saves what the test compares: weights, the last step's gradients,
the method's shared state (memories, teachers) and the metrics rows, one file per process.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py DATA_ROOT OUT RUN...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hardreid import distributed
from hardreid.config import Config, apply_dict, load_config
from hardreid.data.datasets import load_dataset
from hardreid.training.run_files import setup_logging
from hardreid.training.trainer import Trainer, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = {  # the methods' own CPU configs (ResNet-50 ones moved to MobileNetV2), shrunk to the tiny set below
    "cluster_contrast": "cluster_contrast/cpu_official.yaml",
    "acfl": "acfl/cpu_mobilenet.yaml",  # full ACFL: [hpf, hpi] on the instance memory
    "spcl": "spcl/cpu_mobilenet.yaml",
    "ice": "ice/cpu_mobilenet.yaml",
    "hng": "hng/cpu_mobilenet.yaml",
    "acfl_c": "acfl/t6_acfl_c.yaml",  # + ICE's camera proxies
    "acfl_st": "acfl/t9_acfl_st.yaml",  # + mean teacher
}
MOBILE = {"model": {"backbone": "mobilenet_v2", "last_stride": 2}}
# Global batch 16 = 4 identities x 4 images: 2 processes x 8, BatchNorm over 8 images in both worlds (bn_chunk 8).
# Random initialisation (BatchNorm calibrated on rank 0), 2 epochs x 2 steps, evaluation after each epoch, every
# process's state compared after each epoch (check_ranks).
TINY = {
    "data": {"height": 64, "width": 32, "workers": 0, "batch_size": 16, "num_instances": 4},
    "model": {"weights": ""},
    "cluster": {"k1": 6, "k2": 2, "eps": 0.6, "min_samples": 2},
    "train": {"epochs": 2, "iters": 2, "eval_every": 1, "device": "cpu", "seed": 0, "bn_chunk": 8,
              "check_ranks": True},
    "eval": {"batch_size": 32},
}
# name -> (config, overrides). ACFL: one step (see test_two_processes_step_as_one_process_for_acfl). The others
# (slow test) check that every process holds the same state after each epoch.
RUNS = {
    "cluster_contrast": ("cluster_contrast", {}),
    "spcl": ("spcl", {}),
    "acfl": ("acfl", {"train": {"epochs": 1, "iters": 1}}),
    "ice": ("ice", {}),
    "hng": ("hng", {"hng": {"warmup_epochs": 1, "ngf": 8, "ndf": 8, "pictures": 2}}),  # warm-up, then joint
    "acfl_c": ("acfl_c", MOBILE),
    "acfl_st": ("acfl_st", MOBILE),
}


def tiny_method_config(method: str, **sections: dict) -> Config:
    cfg = load_config(CONFIGS / CONFIG_FILES[method])
    apply_dict(cfg, TINY, "distributed test settings")
    return apply_dict(cfg, sections, "distributed test overrides")


def run(name: str, data_root: Path, out: Path) -> Path:
    """Train run ``name`` on the tiny set; this process's weights, gradients, shared state and history in ``out``."""
    method, overrides = RUNS[name]
    cfg = tiny_method_config(method, **overrides)
    (out / name).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, load_dataset("market", data_root), out / name)
    setup_logging(None, verbose=False)
    trainer.fit()
    path = out / f"{name}.rank{distributed.rank()}.of{distributed.world_size()}.pt"
    grads = {key: p.grad for key, p in trainer.model.named_parameters() if p.grad is not None}  # the last step's
    torch.save({"model": trainer.model.state_dict(), "shared": trainer.method.shared_state(), "grads": grads,
                "history": trainer.history, "lr": cfg.optim.lr}, path)
    return path


def split_run(data_root: Path, out: Path) -> Path:
    """Cluster Contrast's first epoch as a run folder (``train``: config, log, metrics, checkpoints), to resume."""
    cfg = tiny_method_config("cluster_contrast", train={"epochs": 1})
    train(cfg, load_dataset("market", data_root), out / "split", log_to_stderr=False)
    return out / "split"


def main(data_root: str, out: str, *names: str) -> None:
    torch.set_num_threads(1)
    for name in names:
        if name == "split":
            split_run(Path(data_root), Path(out))
        else:
            run(name, Path(data_root), Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
