"""Mixed precision without a GPU: the run's autocast settings, the float32 guards of the delicate parts
(each compared with and without CPU bfloat16 autocast), and every base x generator training under autocast
with a device-placement audit of its steps (tests/device_audit.py)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardreid.config import Config
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.methods.generators.hng import losses as hng_losses
from hardreid.methods.generators.hpf import HardPersonFeatures, hard_person_feature_coefficients
from hardreid.methods.generators.hpi import hard_positive_instances
from hardreid.losses import distance_loss, relative_entropy_loss
from hardreid.memory import CameraProxies, ClusterMemory, HybridMemory, InstanceMemory, QueueMemory
from hardreid.memory.cluster_memory import cluster_centroids
from hardreid.models.ema import ModelEMA
from hardreid.precision import autocast_off, cpu_bf16_speed_note, float32, training_precision
import hardreid.methods as M
from hardreid.methods.bases.cluster_contrast import ClusterContrast
from hardreid.methods.bases.ice import soft_instance_consistency
from hardreid.training.trainer import Trainer

from conftest import tiny_config
from device_audit import PACKAGE, DeviceAudit

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one torch thread (on a loaded 2-core machine, thread oversubscription costs 10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# -- settings --------------------------------------------------------------------------------------------------
def test_training_precision_follows_the_config():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    p = training_precision(True, "auto", False, cuda)
    assert p.enabled and p.dtype == torch.float16 and p.scaler  # float16 needs loss scaling
    assert not training_precision(True, "auto", False, cpu).enabled  # CPU: only when asked for
    p = training_precision(True, "auto", True, cpu)
    assert p.enabled and p.dtype == torch.bfloat16 and not p.scaler
    p = training_precision(True, "bfloat16", False, cuda)
    assert p.dtype == torch.bfloat16 and not p.scaler
    assert not training_precision(False, "auto", True, cpu).enabled and not training_precision(False, "auto", True, cuda).enabled
    with pytest.raises(UserError, match="train.amp_dtype"):
        training_precision(True, "half", False, cuda)


def test_cpu_bfloat16_warns_where_it_was_measured_slower(monkeypatch):
    """A CPU with AMX: no note; AVX-512 BF16 without AMX: the 1.13-1.30x measured; AVX2: the ~9x; the run's
    precision says it once, only for CPU bfloat16 autocast."""
    assert cpu_bf16_speed_note(amx=True, avx512_bf16=True) is None
    assert "1.13-1.30x" in cpu_bf16_speed_note(amx=False, avx512_bf16=True)
    note = cpu_bf16_speed_note(amx=False, avx512_bf16=False)
    assert "about 9x" in note and "train.amp_cpu=false" in note
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    cpu = torch.device("cpu")
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)  # on the logger itself: it stops propagating once a run logged
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("hardreid").addHandler(handler)
    try:
        training_precision(True, "auto", True, cpu)
        training_precision(True, "auto", False, cpu)  # autocast off: nothing to say
        training_precision(True, "float16", True, cpu)  # not measured: nothing said
    finally:
        logging.getLogger("hardreid").removeHandler(handler)
    assert said == [note]
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_bf16_speed_note() is None


def test_float32_switches_autocast_off_and_upcasts_half_arguments():
    seen = {}

    @float32
    def probe(a, b, items, n, *, k):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["dtypes"] = (a.dtype, b.dtype, [t.dtype for t in items], n.dtype, k.dtype)
        return a @ a.t()

    a = torch.randn(4, 8).bfloat16()
    with bf16_autocast():
        out = probe(a, torch.randn(2, dtype=torch.float64), [a.half(), a], torch.arange(3), k=a)
        assert torch.is_autocast_enabled("cpu")  # restored after the call
    assert seen["autocast"] is False and out.dtype == torch.float32

    @float32
    def append(history: list, x: torch.Tensor) -> None:
        history.append(x.dtype)

    history: list = []
    append(history, a)
    assert history == [torch.float32]  # a list without half tensors is the caller's own object
    assert seen["dtypes"] == (torch.float32, torch.float64, [torch.float32, torch.float32], torch.int64, torch.float32)
    with bf16_autocast(), autocast_off():
        assert not torch.is_autocast_enabled("cpu")


# -- the guarded functions, with and without autocast ------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))), dim=1)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# Each case makes its inputs in float32 (autocast off) and calls ``fn`` in the caller's autocast state.
def _hpf_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, c = _unit(16, 64), _unit(10, 64, seed=1)
    with autocast_off():
        return q, c, torch.arange(16) % 10, q @ c.t() / 0.05


def _hpf_coefficients(fn: Callable) -> torch.Tensor:
    q, _, labels, logits = _hpf_inputs()
    return fn(logits, labels, (q * q).sum(1), 0.05, 10, 0.00035, 0.0028)


def _hpf_adjust(fn: Callable) -> torch.Tensor:
    q, c, labels, logits = _hpf_inputs()
    return fn(HardPersonFeatures(Config(), CPU), q, labels, c, logits)


def _cluster_logits(fn: Callable) -> torch.Tensor:
    base = ClusterContrast(Config(), CPU)
    HardPersonFeatures(Config(), CPU).attach(base)
    base.memory = ClusterMemory(_unit(10, 64, seed=1))
    return fn(base, _unit(16, 64), torch.arange(16) % 10)


def _hpi(fn: Callable) -> torch.Tensor:
    torch.manual_seed(0)
    net = TinyNet().train()
    images = torch.randn(6, 3, 8, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), autocast_off():
        anchor = net(images)
    return fn(net, anchor, images.flip(0), _unit(4, 16, seed=4), 3, 1.0, 0.05, "re")


def _relative_entropy(fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    anchor = _unit(16, 64).requires_grad_(True)
    value = fn(anchor, _unit(16, 64, seed=2), _unit(10, 64, seed=1), 0.05)
    with autocast_off():  # backward outside autocast, as the trainer does
        (grad,) = torch.autograd.grad(value, anchor)
    return value, grad


def _distance(fn: Callable) -> torch.Tensor:
    return fn(_unit(16, 64).bfloat16(), _unit(16, 64, seed=2))


def _multi_positive_nce(fn: Callable) -> torch.Tensor:
    labels = torch.arange(12) % 4
    positive = labels[:, None] == labels[None, :]
    return fn(_unit(12, 64), _unit(12, 64, seed=2), positive, torch.ones_like(positive), 0.05)


def _lsgan(fn: Callable) -> torch.Tensor:  # patch scores as a discriminator under autocast gives them: bfloat16
    scores = [torch.rand(4, 1, 7, 3, generator=torch.Generator().manual_seed(s)).bfloat16() for s in range(3)]
    return fn(*scores[: 3 if fn.__name__.startswith("lsgan_discriminator") else 2])


def _soft_consistency(fn: Callable) -> torch.Tensor:
    return fn(_unit(12, 64), _unit(12, 64, seed=2), _unit(12, 64, seed=3), 0.4)


def _cluster_memory_update(fn: Callable) -> torch.Tensor:
    memory = ClusterMemory(_unit(6, 32))
    fn(memory, _unit(4, 32, seed=5).bfloat16(), torch.tensor([0, 2, 2, 5]))  # a row may repeat
    return memory.prototypes


def _centroids(fn: Callable) -> torch.Tensor:
    return fn(_unit(20, 32).bfloat16(), torch.arange(20) % 5 - (torch.arange(20) == 3).long() * 10, 5)


def _cluster_memory(fn: Callable) -> torch.Tensor:
    memory = fn(_unit(5, 32).bfloat16())
    memory.update(_unit(4, 32, seed=6).bfloat16(), torch.tensor([0, 1, 1, 4]))
    return memory.prototypes


def _instance_memory(fn: Callable) -> torch.Tensor:
    features, labels = _unit(20, 32), torch.arange(20) % 5
    memory = InstanceMemory(features, labels, 5)
    fn(memory, _unit(4, 32, seed=7).bfloat16(), labels[:4], torch.tensor([0, 1, 2, 3]))
    return torch.cat([memory.prototypes, memory.features])


def _queue_memory(fn: Callable) -> torch.Tensor:
    features, labels = _unit(20, 32), torch.arange(20) % 5
    memory = QueueMemory(features, labels, 5, 0.5, generator=torch.Generator().manual_seed(0))
    fn(memory, _unit(4, 32, seed=7).bfloat16(), torch.tensor([0, 1, 1, 3]))
    return torch.cat([memory.prototypes, memory.features])


def _hybrid_memory(fn: Callable) -> torch.Tensor:
    memory = HybridMemory(_unit(10, 32))
    memory.set_labels(torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 6, 7]), 2)
    fn(memory, _unit(3, 32, seed=8).bfloat16(), torch.tensor([1, 4, 9]))
    return torch.cat([memory.features, memory.centroids()])


def _camera_proxies(fn: Callable) -> torch.Tensor:
    labels, cams = torch.arange(24) % 6, torch.arange(24) % 3
    return fn(CameraProxies, _unit(24, 32).bfloat16(), labels, cams).proxies


def _ema(fn: Callable) -> torch.Tensor:
    torch.manual_seed(0)
    student = TinyNet()
    ema = ModelEMA(TinyNet(), momentum=0.9)
    fn(ema, student)
    return torch.cat([p.flatten() for p in ema.module.state_dict().values() if p.is_floating_point()])


# name -> (the guarded function, a case that calls what it is given, does bfloat16 autocast change the unguarded result?)
GUARDED = {
    "hpf_closed_form": (hard_person_feature_coefficients, _hpf_coefficients, False),
    "hpf_adjust_logits": (HardPersonFeatures.adjust_logits, _hpf_adjust, False),
    "cluster_logits": (M.BaseMethod.cluster_logits, _cluster_logits, True),
    "hpi_normalised_ascent": (hard_positive_instances, _hpi, True),
    "relative_entropy": (relative_entropy_loss, _relative_entropy, True),
    "distance_loss": (distance_loss, _distance, False),
    "hng_multi_positive_nce": (hng_losses.multi_positive_nce, _multi_positive_nce, True),
    "lsgan_discriminator": (hng_losses.lsgan_discriminator_loss, _lsgan, True),
    "lsgan_generator": (hng_losses.lsgan_generator_loss, _lsgan, True),
    "ice_soft_consistency_kl": (soft_instance_consistency, _soft_consistency, True),
    "cluster_memory_update": (ClusterMemory.update, _cluster_memory_update, False),
    "memory_centroids": (cluster_centroids, _centroids, True),
    "cluster_memory": (ClusterMemory, _cluster_memory, True),
    "instance_memory_update": (InstanceMemory.update, _instance_memory, False),
    "queue_memory_update": (QueueMemory.update, _queue_memory, False),
    "hybrid_memory_update": (HybridMemory.update, _hybrid_memory, False),
    "camera_proxies": (CameraProxies.from_clusters.__func__, _camera_proxies, False),
    "ema_update": (ModelEMA.update, _ema, False),
}


def _flat(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]


def _unguarded(fn: Callable) -> Callable:
    if isinstance(fn, type):  # a class whose __init__ is guarded
        init = fn.__init__.__wrapped__

        def build(*args):
            obj = fn.__new__(fn)
            init(obj, *args)
            return obj

        return build
    inner = fn
    while hasattr(inner, "__wrapped__"):
        inner = inner.__wrapped__
    return inner


@pytest.mark.parametrize("name", list(GUARDED))
def test_guarded_function_under_autocast_equals_float32(name):
    fn, case, sensitive = GUARDED[name]
    plain = _flat(case(fn))
    with bf16_autocast():
        guarded = _flat(case(fn))
    for a, b in zip(plain, guarded):
        assert b.dtype == torch.float32, name
        # the guard turns autocast off and upcasts: both calls run the same float32 kernels on the same shapes with one
        # thread (the module fixture), so they agree bit for bit on every CPU; the tolerance is only a courtesy
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=name)
    if sensitive:  # without the guard, autocast (or bfloat16 inputs) would change the numbers or the dtype
        with bf16_autocast():
            unguarded = _flat(case(_unguarded(fn)))
        assert any(u.dtype != torch.float32 or not torch.allclose(u.float(), a, rtol=1e-4, atol=1e-4)
                   for u, a in zip(unguarded, plain)), name


def test_every_guarded_function_carries_the_guard():
    for name, (fn, _, _) in GUARDED.items():
        target = fn.__init__ if isinstance(fn, type) else fn
        assert hasattr(target, "__wrapped__"), f"{name} is not wrapped by precision.float32"


# -- every base x generator under CPU autocast --------------------------------------------------------------------
BASES = {"cc_momentum": ("cluster_contrast", "momentum"), "cc_instance": ("cluster_contrast", "instance"),
         "cc_queue": ("cluster_contrast", "queue"), "spcl": ("spcl", "momentum"), "ice": ("ice", "momentum")}
GENERATORS = {"none": [], "hpf": ["hpf"], "hpi": ["hpi"], "align": ["align"], "hng": ["hng"],
              "camera_proxy": ["camera_proxy"], "mean_teacher": ["mean_teacher"], "acfl": ["hpf", "hpi"]}
REDUNDANT = {("ice", "camera_proxy"), ("ice", "mean_teacher"), ("spcl", "mean_teacher")}  # refused by the add-ons
COMBINATIONS = [(b, g) for b in BASES for g in GENERATORS if (b, g) not in REDUNDANT]


# Host placements inside a training step that are there on purpose (everything else must stay on the device).
INTENDED_HOST_WORK = {
    ("methods/generators/hng/fusion.py:pick_negatives", "cpu"):
        "x_neg is drawn with hng's CPU generator (the same negatives on every device, exact resume): B labels a step",
    ("methods/generators/hng/fusion.py:pick_negatives", "torch.rand without device"): "the same draw, on that generator",
    ("memory/cluster_memory.py:momentum_update_rows_", "tolist"): "the sizes of the K update rounds (K integers)",
}


def audit_steps(trainer: Trainer) -> DeviceAudit:
    """Run every ``trainer.train_step`` (losses, backward, optimiser, memory updates) under a DeviceAudit."""
    audit, step = DeviceAudit(), trainer.train_step

    def audited(batch, epoch, index):
        for value in (batch.images, batch.labels, batch.camids, batch.indices, *batch.views):
            assert value.device == trainer.device
        with audit:
            return step(batch, epoch, index)

    trainer.train_step = audited
    return audit


@pytest.fixture(scope="module")
def train_only(tiny_root):
    """The tiny synthetic set without query / gallery: the epochs train, no evaluation."""
    return dataclasses.replace(load_dataset("market", tiny_root), query=[], gallery=[])


@pytest.mark.parametrize("base,generator", COMBINATIONS, ids=[f"{b}-{g}" for b, g in COMBINATIONS])
def test_every_method_trains_under_cpu_autocast(train_only, tmp_path, base, generator):
    name, kind = BASES[base]
    cfg = tiny_config(method={"base": name, "hard_samples": GENERATORS[generator]}, memory={"kind": kind},
                      train={"epochs": 1, "iters": 2, "eval_every": 0, "amp_cpu": True},
                      hng={"warmup_epochs": 0, "ngf": 8, "ndf": 8, "pictures": 0})
    trainer = Trainer(cfg, train_only, tmp_path)
    assert trainer.precision.enabled and trainer.precision.dtype == torch.bfloat16
    dtypes: list[torch.dtype] = []
    trainer.model.backbone.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    audit = audit_steps(trainer)
    row = trainer.run_epoch(0)
    assert audit.records <= set(INTENDED_HOST_WORK), sorted(audit.records - set(INTENDED_HOST_WORK))
    assert torch.isfinite(torch.tensor(row["loss"])) and row["loss"] > 0
    assert torch.bfloat16 in dtypes  # the training forward really ran under autocast
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.method.base.prototypes().dtype == torch.float32
    for key, value in row.items():
        if isinstance(value, float):
            assert value == value, key  # no NaN in any logged term



def test_device_audit_reports_host_placements_made_by_package_code():
    source = """
def step(x):
    offset = torch.zeros(x.shape[1])  # no device: a CPU tensor on a GPU run
    index = torch.arange(3, device=x.device)  # named: fine
    like = torch.zeros_like(x) + torch.as_tensor(x)  # derived: fine
    rows = x.argmax(1).tolist()  # a host copy
    return x.to("cpu") + offset + like
"""
    audit = DeviceAudit()
    for where, recorded in (("memory/audit_example.py", True), ("data/audit_example.py", False)):
        namespace = {"torch": torch}
        exec(compile(source, str(PACKAGE / where), "exec"), namespace)  # code that reads as the package's own
        with audit:
            namespace["step"](torch.randn(4, 3))
            torch.zeros(2)  # this file is not the package: not recorded
    assert audit.records == {("memory/audit_example.py:step", what)
                             for what in ("torch.zeros without device", "tolist", 'to("cpu")')}


def test_float16_autocast_with_loss_scaling_resumes_exactly(train_only, tmp_path):
    """float16 needs the gradient scaler; its scale is part of the checkpoint, so a resumed run matches."""
    from hardreid.runs import train
    from hardreid.training.checkpoint import load_checkpoint

    def cfg(epochs: int):
        return tiny_config(train={"amp_cpu": True, "amp_dtype": "float16", "epochs": epochs, "iters": 6, "eval_every": 0})

    straight = train(cfg(2), train_only, tmp_path / "straight", log_to_stderr=False)
    skipped = [row["amp_skipped_steps"] for row in straight.history]
    assert skipped[0] > 0 and skipped[1] < 6  # the scaler backed off from 2^16 by skipping steps, then stepped
    train(cfg(1), train_only, tmp_path / "split", log_to_stderr=False)
    scale = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pth")["scaler"]["scale"]
    assert scale == 2.0**16 / 2**skipped[0]
    resumed = train(cfg(2), train_only, tmp_path / "split", resume=True, log_to_stderr=False)
    # a resumed run repeats the straight run's computations (same shapes, order, thread count; saved state exact): equal by construction
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
