"""Method composition: a base plus hard-sample generators, hooks in order, registries, multi-view batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardreid.config import Config
from hardreid.data.datasets import load_dataset
from hardreid.data.loaders import InfiniteIdentityLoader
from hardreid.data.transforms import train_transform
from hardreid.errors import UserError
from hardreid.training import methods as M

from conftest import tiny_config


class Linear(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(x), dim=1)


class Recorder(M.Component):
    """Logs every hook call; optionally adds a loss term and a logit adjuster."""

    def __init__(self, name: str, calls: list[str], term: str | None = None, shift: float = 0.0) -> None:
        super().__init__(Config(), torch.device("cpu"))
        self.name, self.calls, self.term, self.shift = name, calls, term, shift

    def attach(self, base: M.BaseMethod) -> None:
        self.calls.append(f"{self.name}.attach")
        if self.shift:
            base.logit_adjusters.append(lambda f, y, c, logits: logits + self.shift * F.one_hot(y, c.shape[0]))

    def start_epoch(self, data, model):
        self.calls.append(f"{self.name}.start_epoch")

    def before_step(self, model, batch, epoch, step):
        self.calls.append(f"{self.name}.before_step")
        return {f"{self.name}_seen": float(step)}

    def losses(self, ctx):
        self.calls.append(f"{self.name}.losses")
        return {self.term: ctx.features.sum() * 0 + 1.5} if self.term else {}

    def after_step(self, ctx):
        self.calls.append(f"{self.name}.after_step")

    def end_epoch(self, epoch, run_dir):
        self.calls.append(f"{self.name}.end_epoch")
        return {f"{self.name}_epoch": float(epoch)}


def _epoch(n: int = 12, clusters: int = 3, dim: int = 4) -> M.EpochData:
    torch.manual_seed(0)
    labels = torch.arange(n) % clusters
    return M.EpochData(0, F.normalize(torch.randn(n, dim), dim=1), labels, torch.zeros(n, dtype=torch.long), clusters)


def _batch() -> M.Batch:
    return M.Batch(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6, dtype=torch.long), torch.arange(6))


def test_hooks_run_base_first_then_generators_and_terms_add_up():
    calls: list[str] = []
    base = M.ClusterContrast(Config(), torch.device("cpu"))
    method = M.ComposedMethod(base, [Recorder("a", calls, term="extra_a"), Recorder("b", calls)])
    model = Linear()
    method.start_epoch(_epoch(), model)
    out = method.training_step(model, _batch(), epoch=0, step=3)
    assert calls == ["a.attach", "b.attach", "a.start_epoch", "b.start_epoch", "a.before_step", "b.before_step",
                     "a.losses", "b.losses"]
    assert set(out.logs) == {"a_seen", "b_seen", "loss_contrast", "loss_extra_a"} and out.logs["a_seen"] == 3.0
    assert out.loss.item() == pytest.approx(out.logs["loss_contrast"] + 1.5, rel=1e-6)
    before = base.memory.prototypes.clone()
    method.after_step(out)
    assert calls[-2:] == ["a.after_step", "b.after_step"]
    assert not torch.equal(before, base.memory.prototypes)
    assert method.end_epoch(4, None) == {"a_epoch": 4.0, "b_epoch": 4.0} and calls[-1] == "b.end_epoch"
    data = _epoch()
    assert torch.equal(method.sampling_labels(data), data.labels)  # default: the pseudo labels


def test_logit_adjusters_change_the_base_loss():
    model = Linear()
    plain = M.ComposedMethod(M.ClusterContrast(Config(), torch.device("cpu")))
    harder = M.ComposedMethod(M.ClusterContrast(Config(), torch.device("cpu")), [Recorder("h", [], shift=-2.0)])
    for method in (plain, harder):
        method.start_epoch(_epoch(), model)
    batch = _batch()
    a = plain.training_step(model, batch).loss
    b = harder.training_step(model, batch).loss
    # lowering the positive logit by 2 / ... raises the cross-entropy
    assert b.item() > a.item() + 0.5


def test_duplicate_terms_and_components_are_rejected():
    base = M.ClusterContrast(Config(), torch.device("cpu"))
    with pytest.raises(UserError, match="distinct"):
        M.ComposedMethod(base, [Recorder("x", []), Recorder("x", [])])
    method = M.ComposedMethod(M.ClusterContrast(Config(), torch.device("cpu")), [Recorder("y", [], term="contrast")])
    method.start_epoch(_epoch(), Linear())
    with pytest.raises(RuntimeError, match="given twice"):
        method.training_step(Linear(), _batch())


def test_build_method_checks_names():
    cfg = tiny_config(method={"base": "nope"})
    with pytest.raises(UserError, match="method.base"):
        M.build_method(cfg, torch.device("cpu"))
    cfg = tiny_config(method={"hard_samples": ["not_a_generator"]})
    with pytest.raises(UserError, match="not_a_generator"):
        M.build_method(cfg, torch.device("cpu"))
    method = M.build_method(tiny_config(), torch.device("cpu"))
    assert isinstance(method.base, M.ClusterContrast) and method.generators == []


def test_state_dict_is_keyed_by_component():
    method = M.ComposedMethod(M.ClusterContrast(Config(), torch.device("cpu")), [Recorder("r", [])])
    assert set(method.state_dict()) == {"cluster_contrast", "r"}


def test_loader_gives_independent_views_and_batch_splits_them(tiny_root):
    data = load_dataset("market", tiny_root)
    cfg = tiny_config(data={"erasing_p": 0.0})
    samples = data.train[:16]
    labels = [i // 4 for i in range(16)]
    loader = InfiniteIdentityLoader(samples, labels, train_transform(cfg.data), 8, 4, 0, seed=1, num_views=3)
    images, y, cams, idx = loader.next()
    assert images.shape == (8, 3, 3, cfg.data.height, cfg.data.width)
    batch = M.Batch.from_loader(images, y, cams, idx, torch.device("cpu"))
    assert batch.images.shape == (8, 3, cfg.data.height, cfg.data.width) and len(batch.views) == 2
    assert torch.equal(batch.views[1], images[:, 2])
    # random flips/crops make the views differ for at least one image
    assert any(not torch.equal(batch.images[i], batch.views[0][i]) for i in range(8))
    single = InfiniteIdentityLoader(samples, labels, train_transform(cfg.data), 8, 4, 0, seed=1).next()[0]
    assert single.dim() == 4 and M.Batch.from_loader(single, y, cams, idx, torch.device("cpu")).views == []
