"""Tiny training runs for tests/test_distributed.py: started by torchrun (2 processes, gloo) and, as references,
in the test's own process (1 process). Each run saves what the test compares: the weights before and after, the
last step's gradients and learning rate, the optimiser state before training, the method's shared state
(memories, teachers) and the metrics rows, one file per process.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py DATA_ROOT OUT RUN[+BUG]...

``RUN+BUG`` trains RUN with a planted bug (``PLANTS``): the negative twins that show that the tests' tolerances
catch real mistakes of a multi-process implementation.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
from pathlib import Path
from typing import Iterator

import torch

from hardreid import distributed
from hardreid.config import Config, apply_dict, load_config
from hardreid.data.datasets import load_dataset
from hardreid.models import compiled
from hardreid.models.compiled import compiled_embed
from hardreid.training.run_files import setup_logging
from hardreid.runs import train
from hardreid.training.trainer import Trainer

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
# Random initialisation (BatchNorm calibrated on rank 0), evaluation after each epoch, every process's state
# compared after each epoch (check_ranks).
TINY = {
    "data": {"height": 64, "width": 32, "workers": 0, "batch_size": 16, "num_instances": 4},
    "model": {"weights": ""},
    "cluster": {"k1": 6, "k2": 2, "eps": 0.6, "min_samples": 2},
    "train": {"epochs": 2, "iters": 2, "eval_every": 1, "device": "cpu", "seed": 0, "bn_chunk": 8,
              "check_ranks": True},
    "eval": {"batch_size": 32},
}
ONE_STEP = {"train": {"epochs": 1, "iters": 1}}
# name -> (config, overrides).
# *_step: one step, compared with one process within float rounding (test_two_processes_step_as_one_process).
# cluster_contrast: 2 epochs x 1 step, the run that "split" (its first epoch) continues (the resume tests).
# The others (slow test) check that every process holds the same state after each epoch.
RUNS = {
    "cc_step": ("cluster_contrast", ONE_STEP),
    "spcl_step": ("spcl", ONE_STEP),
    # full ACFL with margins: at least P = 4 clusters, each of at least K = 4 images (min_samples 4, eps 0.7,
    # k1 10 on the tiny set: 6 clusters of 4-19; the test checks it), so that no batch holds an image twice or a
    # pseudo identity twice. Every hard positive instance then starts from another image than its anchor (an
    # image is its own positive only in a cluster smaller than K), and the normalised image gradient of Eq. 4 is
    # far from zero, its direction not set by rounding; and a positive is always in its anchor's process's share.
    # The standard distance (the ACFL CPU config is camera-aware since issue 26): CA-Jaccard's neighbour counts
    # (k1_intra 5, k1_inter 20) put the 60 tiny images into one cluster, and a batch with fewer pseudo identities
    # than P holds one of them in both processes' shares, where each process searches the positives of its own
    # share only (select_positives): then 2 processes cannot step as one, as designed (a real run has hundreds of
    # clusters; the collapse warning fires).
    "acfl_step": ("acfl", {**ONE_STEP, "cluster": {"min_samples": 4, "eps": 0.7, "k1": 10, "jaccard": "standard"},
                           "model": {"camera_bn": False}}),
    # full ACFL with camera-based BatchNorm. Camera BN's recalibrated features of the tiny set form 3 clusters (of
    # 9-22 images) whatever the radius, so P = 2 identities x K = 4 here (global batch 8, shares and bn_chunk chunks
    # of 4): the margins above. It caught extraction loaders that drew their seeds from torch's global generator,
    # one per camera and process shard, which moved the random positives by the number of processes.
    "acfl_camera_bn_step": ("acfl", {"train": {"epochs": 1, "iters": 1, "bn_chunk": 4}, "data": {"batch_size": 8},
                                     "cluster": {"min_samples": 4, "eps": 0.7, "k1": 10, "jaccard": "standard"},
                                     "model": {"camera_bn": True}}),
    "ice_step": ("ice", ONE_STEP),
    # cc_step with train.compile (tests/test_compile.py: DDP around the compiled inner forward); the backend comes
    # from $HARDREID_TEST_COMPILE_BACKEND ("eager": dynamo's graph run as traced, no C++ compiler)
    "cc_compiled_step": ("cluster_contrast", {"train": {"epochs": 1, "iters": 1, "compile": True}}),
    # camera-based BatchNorm: per camera within each process's share (one process: within each bn_chunk chunk of 8)
    "cc_camera_bn_step": ("cluster_contrast", {**ONE_STEP, "model": {"camera_bn": True}}),
    "cluster_contrast": ("cluster_contrast", {"train": {"iters": 1}}),
    "ice": ("ice", {}),
    "hng": ("hng", {"hng": {"warmup_epochs": 1, "ngf": 8, "ndf": 8, "pictures": 2}}),  # warm-up, then joint
    "acfl_c": ("acfl_c", MOBILE),
    "acfl_st": ("acfl_st", MOBILE),
}


# -- planted bugs (negative twins) ------------------------------------------------------------------------
def _gather_floats_in_reverse(tensor: torch.Tensor, gather=distributed.all_gather_rows) -> torch.Tensor:
    """The global batch's features gathered in reverse rank order, its labels and indices in rank order."""
    rows = gather(tensor)
    if not tensor.is_floating_point() or not distributed.active():
        return rows
    return torch.cat(list(rows.chunk(distributed.world_size()))[::-1])


PLANTS = {
    # DistributedDataParallel left out: each process steps with its own share's gradient
    "no_allreduce": ("data_parallel", lambda model, method="forward":
                     functools.partial(method, model) if callable(method) else getattr(model, method)),
    # the memories updated from this process's share of the batch only
    "own_share": ("all_gather_rows", lambda tensor: tensor),
    # features and their labels gathered in different orders
    "gather_order": ("all_gather_rows", _gather_floats_in_reverse),
}


@contextlib.contextmanager
def planted(bug: str | None) -> Iterator[None]:
    if bug is None:
        yield
        return
    name, replacement = PLANTS[bug]
    original = getattr(distributed, name)
    setattr(distributed, name, replacement)
    try:
        yield
    finally:
        setattr(distributed, name, original)


def tiny_method_config(method: str, **sections: dict) -> Config:
    cfg = load_config(CONFIGS / CONFIG_FILES[method])
    apply_dict(cfg, TINY, "distributed test settings")
    return apply_dict(cfg, sections, "distributed test overrides")


def run_config(name: str) -> Config:
    """The config of run ``name`` (without a planted bug)."""
    method, overrides = RUNS[name.split("+")[0]]
    return tiny_method_config(method, **overrides)


def run(name: str, data_root: Path, out: Path) -> Path:
    """Train run ``name`` on the tiny set; this process's weights, gradients, shared state and history in ``out``."""
    base, _, bug = name.partition("+")
    cfg = run_config(base)
    if bug:
        cfg.train.check_ranks = False  # the processes differ on purpose: the test's comparison must see it
    (out / name).mkdir(parents=True, exist_ok=True)
    with planted(bug or None):  # from the start: the trainer wraps its model for several processes when built
        trainer = Trainer(cfg, load_dataset("market", data_root), out / name)
        before = copy.deepcopy(trainer.model.state_dict())
        optimizer_before = copy.deepcopy(trainer.optimizer.state_dict())
        setup_logging(None, verbose=False)
        trainer.fit()
    path = out / f"{name}.rank{distributed.rank()}.of{distributed.world_size()}.pt"
    grads = {key: p.grad for key, p in trainer.model.named_parameters() if p.grad is not None}  # the last step's
    shared = trainer.method.shared_state()
    if trainer.camera_stats is not None:  # model.camera_bn: the per-camera running statistics, compared bit for bit
        shared = {**shared, "camera_bn": trainer.camera_stats.state_dict()["statistics"]}
    torch.save({"model": trainer.model.state_dict(), "before": before, "optimizer_before": optimizer_before,
                "shared": shared, "grads": grads, "history": trainer.history,
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "compiled_calls": getattr(compiled_embed(trainer.model), "calls", 0)}, path)
    return path


def split_run(data_root: Path, out: Path) -> Path:
    """The first epoch of run ``cluster_contrast`` as a run folder (``train``: config, log, metrics, checkpoints),
    to resume."""
    cfg = run_config("cluster_contrast")
    cfg.train.epochs = 1
    train(cfg, load_dataset("market", data_root), out / "split", log_to_stderr=False)
    return out / "split"


def main(data_root: str, out: str, *names: str) -> None:
    torch.set_num_threads(1)
    if os.environ.get("HARDREID_TEST_COMPILE_BACKEND"):
        compiled.BACKEND = os.environ["HARDREID_TEST_COMPILE_BACKEND"]
    for name in names:
        if name == "split":
            split_run(Path(data_root), Path(out))
        else:
            run(name, Path(data_root), Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
