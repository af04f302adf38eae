"""Speed-ups of the training step that must change no number (issue 28 item 6, ``benchmarks/step_profile.py``).

``biased_variance`` replaces ``torch.var`` in the frozen-batch statistics of ACFL's hard positive instances
(``acfl.hpi_bn: frozen_batch``): it must give the same float32 bits, and a full-ACFL step (HPF + HPI, momentum
memory) must give the same loss and the same parameters after its optimiser step as with the naive statistics
kept here as the reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from hardreid.config import load_config
from hardreid.models import batchnorm
from hardreid.models.batchnorm import biased_variance

# bit-identity with torch.var: run again under another kernel set and 1 and 2 threads (python3 dev.py kernels)
pytestmark = pytest.mark.exactness

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "hardreid" / "configs"
FAST_BATCH_STATISTICS = batchnorm.batch_statistics  # the code under test (biased_variance)


def reference_variance(value: torch.Tensor) -> torch.Tensor:
    return value.var(dim=[d for d in range(value.dim()) if d != 1], unbiased=False)


@torch.no_grad()
def reference_batch_statistics(model, x):
    """batch_statistics as it was before biased_variance (torch.var)."""
    stats, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            def record(mod, inputs, prefix=name):
                value = inputs[0].float()
                dims = [d for d in range(value.dim()) if d != 1]
                stats[f"{prefix}.running_mean"] = value.mean(dim=dims)
                stats[f"{prefix}.running_var"] = value.var(dim=dims, unbiased=False)
            hooks.append(module.register_forward_pre_hook(record))
    try:
        batchnorm.scratch_forward(model)(x)
    finally:
        for h in hooks:
            h.remove()
    return stats


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("shape", [(8, 5), (32, 24, 16, 8), (7, 3, 33, 17), (2, 64, 4, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1.0, 300.0])  # a mean far from 0: the two-pass error grows with mean^2/var
def test_biased_variance_is_torch_var_bit_for_bit(shape, channels_last, offset):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * torch.rand(shape[1], generator=g).view(1, -1, *[1] * (len(shape) - 2)) + offset
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    assert same_bits(biased_variance(x), reference_variance(x))


def test_biased_variance_special_channels_and_dtypes():
    x = torch.randn(16, 6, 5, 3)
    x[:, 1] = 2.5  # constant: variance 0
    x[0, 2, 0, 0] = float("nan")
    x[0, 3, 0, 0] = float("inf")
    x[:, 4] = F.relu(x[:, 4])  # many exact zeros
    got, want = biased_variance(x), reference_variance(x)
    assert torch.equal(got.isnan(), want.isnan())
    assert same_bits(got[~want.isnan()], want[~want.isnan()])
    assert got[1] == 0
    x64 = x.double()
    assert torch.equal(biased_variance(x64).nan_to_num(), reference_variance(x64).nan_to_num())
    assert biased_variance(torch.empty(0, 3, 2, 2)).shape == (3,)


def test_biased_variance_recomputes_doubtful_channels_with_torch_var(monkeypatch):
    # every channel declared doubtful (a huge tolerance): the torch.var path on the selected channels alone
    monkeypatch.setattr(batchnorm, "UNIT_ROUNDOFF_64", 1.0)
    x = (torch.randn(32, 40, 16, 8) * 3 + 1).contiguous(memory_format=torch.channels_last)
    assert same_bits(biased_variance(x), reference_variance(x))
    calls = []
    real = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select", lambda self, *a: calls.append(a) or real(self, *a))
    biased_variance(x)
    assert calls and calls[0][1].numel() == 40


def test_batch_statistics_of_a_real_network_match_the_reference():
    from hardreid.models.reid import ReidModel

    torch.manual_seed(0)
    model = ReidModel("mobilenet_v2", last_stride=2, img_size=(64, 32)).use_channels_last().train()
    x = torch.randn(16, 3, 64, 32)
    got, want = batchnorm.batch_statistics(model, x), reference_batch_statistics(model, x)
    assert got.keys() == want.keys() and len(got) > 50
    assert all(same_bits(got[k], want[k]) for k in want)


def acfl_steps(statistics, monkeypatch) -> tuple[list[float], list[torch.Tensor], dict]:
    """Two train_step calls of the full ACFL (HPF + HPI) on the momentum memory, fixed batches and seeds, with
    ``statistics`` as the frozen-batch statistics of the HPI ascent."""
    from hardreid.data.types import ReidDataset, Sample
    from hardreid.methods import Batch, EpochData
    from hardreid.training.trainer import Trainer

    monkeypatch.setattr(batchnorm, "batch_statistics", statistics)
    clusters, images = 6, 48
    cfg = load_config(CONFIGS / "acfl" / "cpu_momentum_memory.yaml",
                      ["method.hard_samples=[hpf, hpi]", "train.device=cpu", "data.workers=0", "train.seed=0",
                       "model.pretrained=false", "model.weights=", "data.batch_size=8", "data.height=64",
                       "data.width=32", "train.bn_chunk=4"])
    dataset = ReidDataset("identity", "(in memory)", [Sample(f"/nonexistent/{i % clusters:04d}_c{1 + i % 2}s1_{i:06d}.jpg",
                                                             i % clusters, i % 2) for i in range(images)])
    torch.manual_seed(0)
    trainer = Trainer(cfg, dataset, Path("/nonexistent/run"))
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(images, trainer.model.feat_dim, generator=g), dim=1)
    trainer.method.start_epoch(EpochData(0, features, torch.arange(images) % clusters, torch.arange(images) % 2,
                                         clusters), trainer.model)
    trainer.model.train()
    losses = []
    for step in range(2):
        indices = torch.tensor([0, 6, 12, 18, 1, 7, 13, 19]) + step * 2
        batch = Batch(torch.randn(8, 3, 64, 32, generator=g), indices % clusters, indices % 2, indices)
        losses.append(trainer.train_step(batch, 0, step))
    return ([o.loss.item() for o in losses], [p.detach().clone() for p in trainer.model.parameters()],
            {k: v.clone() for k, v in trainer.model.state_dict().items()})


@torch.no_grad()
def one_ulp_off_statistics(model, x):
    """The negative twin: the reference statistics with every variance moved by one float32 ulp."""
    stats = reference_batch_statistics(model, x)
    return {k: torch.nextafter(v, torch.full_like(v, float("inf"))) if k.endswith("running_var") else v
            for k, v in stats.items()}


def test_full_acfl_step_is_bit_identical_to_the_reference_statistics(monkeypatch):
    runs = {}
    for name, statistics in (("reference", reference_batch_statistics), ("new", FAST_BATCH_STATISTICS),
                             ("one ulp off", one_ulp_off_statistics)):
        with monkeypatch.context() as m:
            runs[name] = acfl_steps(statistics, m)
    ref, new, off = runs["reference"], runs["new"], runs["one ulp off"]
    assert ref[0] == new[0]  # the loss of both steps
    assert all(same_bits(a, b) for a, b in zip(ref[1], new[1]))  # the parameters after the optimiser steps
    assert all(torch.equal(ref[2][k], new[2][k]) for k in ref[2])  # and the BatchNorm buffers
    # the check sees a one-ulp change of the statistics (the second step's loss or the parameters move)
    assert ref[0] != off[0] or not all(same_bits(a, b) for a, b in zip(ref[1], off[1]))
