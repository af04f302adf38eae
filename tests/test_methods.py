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
import hardreid.methods as M
from hardreid.methods.bases.cluster_contrast import ClusterContrast

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
    base = ClusterContrast(Config(), torch.device("cpu"))
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
    plain = M.ComposedMethod(ClusterContrast(Config(), torch.device("cpu")))
    harder = M.ComposedMethod(ClusterContrast(Config(), torch.device("cpu")), [Recorder("h", [], shift=-2.0)])
    for method in (plain, harder):
        method.start_epoch(_epoch(), model)
    batch = _batch()
    a = plain.training_step(model, batch).loss
    b = harder.training_step(model, batch).loss
    # lowering the positive logit by 2 / ... raises the cross-entropy
    assert b.item() > a.item() + 0.5


def test_duplicate_terms_and_components_are_rejected():
    base = ClusterContrast(Config(), torch.device("cpu"))
    with pytest.raises(UserError, match="distinct"):
        M.ComposedMethod(base, [Recorder("x", []), Recorder("x", [])])
    method = M.ComposedMethod(ClusterContrast(Config(), torch.device("cpu")), [Recorder("y", [], term="contrast")])
    method.start_epoch(_epoch(), Linear())
    with pytest.raises(RuntimeError, match="given twice"):
        method.training_step(Linear(), _batch())


def test_build_method_checks_names():
    cfg = tiny_config()
    cfg.method.base = "nope"  # (a config file or override with it is refused when it is loaded)
    with pytest.raises(UserError, match="method.base"):
        M.build_method(cfg, torch.device("cpu"))
    cfg = tiny_config()
    cfg.method.hard_samples = ["not_a_generator"]
    with pytest.raises(UserError, match="not_a_generator"):
        M.build_method(cfg, torch.device("cpu"))
    method = M.build_method(tiny_config(), torch.device("cpu"))
    assert isinstance(method.base, ClusterContrast) and method.generators == []


def test_state_dict_is_keyed_by_component():
    method = M.ComposedMethod(ClusterContrast(Config(), torch.device("cpu")), [Recorder("r", [])])
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


def test_lr_factor_warmup_then_milestones_or_steps():
    from hardreid.config import OptimConfig
    from hardreid.training.trainer import build_optimizer, lr_factor

    ice = OptimConfig(gamma=1.0, warmup_epochs=10, warmup_factor=0.1)
    # ICE's WarmupMultiStepLR: 0.1 * (1 - e/10) + e/10 during warm-up, then 1
    assert [round(lr_factor(ice, e), 6) for e in (0, 1, 5, 9, 10, 39)] == [0.1, 0.19, 0.55, 0.91, 1.0, 1.0]
    steps = OptimConfig(step_size=20, gamma=0.1)
    assert [lr_factor(steps, e) for e in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.1, 0.01])
    milestones = OptimConfig(milestones=[20, 60], gamma=0.1, step_size=5)
    assert [lr_factor(milestones, e) for e in (0, 19, 20, 59, 60)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(UserError, match="milestones"):
        lr_factor(OptimConfig(milestones=[30, 10]), 0)
    model = nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(tiny_config(optim={"lr": 1e-3, "warmup_epochs": 2}), model)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: a no-op that keeps the scheduler's order check quiet
        scheduler.step()
    assert seen == pytest.approx([1e-4, 5.5e-4, 1e-3])


def test_blur_is_applied_with_its_probability_and_checked(tiny_root):
    from PIL import Image

    from hardreid.data.transforms import RandomGaussianBlur, train_transform

    image = Image.effect_noise((32, 64), 60).convert("RGB")
    blurred = RandomGaussianBlur((2.0, 2.0))(image)
    import numpy as np

    assert np.asarray(blurred, float).std() < 0.8 * np.asarray(image, float).std()
    cfg = tiny_config(data={"blur_p": 1.0, "erasing_p": 0.0, "flip_p": 0.0, "pad": 0}).data
    assert "RandomGaussianBlur" in repr(train_transform(cfg))
    assert "RandomGaussianBlur" not in repr(train_transform(tiny_config().data))
    with pytest.raises(UserError, match="blur_sigma"):
        train_transform(tiny_config(data={"blur_p": 0.5, "blur_sigma": [2.0, 1.0]}).data)


def test_evaluation_model_is_the_teacher_when_asked_and_checkpoint_keeps_it(tiny_root, tmp_path):
    from hardreid.models import model_from_config
    from hardreid.runs import train
    from hardreid.training.checkpoint import load_checkpoint, load_model_state

    data = load_dataset("market", tiny_root)
    cfg = tiny_config(method={"hard_samples": ["mean_teacher"]}, train={"epochs": 1, "iters": 2})
    method = M.build_method(cfg, torch.device("cpu"))
    student = model_from_config(cfg)
    teacher = method.evaluation_model(student)
    assert teacher is not student and teacher is method.clustering_model(student)
    off = tiny_config(method={"hard_samples": ["mean_teacher"]}, ice={"evaluate_teacher": False})
    assert M.build_method(off, torch.device("cpu")).evaluation_model(student) is student

    result = train(cfg, data, tmp_path / "run", log_to_stderr=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert "eval_model" in state
    evaluated, trained = model_from_config(cfg), model_from_config(cfg)
    load_model_state(evaluated, state, "last.pth", for_evaluation=True)
    load_model_state(trained, state, "last.pth")
    for key, value in result.model.state_dict().items():  # the run returns the evaluated network
        assert torch.equal(value, evaluated.state_dict()[key])
    differs = [k for k, v in trained.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, evaluated.state_dict()[k])]
    assert differs  # teacher (EMA 0.999) != student after two steps


def test_epoch_means_average_tensors_and_numbers_and_skip_empty_keys():
    means = M.EpochMeans()
    means.add("a", torch.tensor([1.0, 2.0, 3.0]).sum(), torch.tensor(3))
    means.add("a", 6.0, 1)
    means.add("b", torch.tensor(0.0), torch.tensor(0))  # nothing counted: left out
    means.add("c", 0.5)
    assert means.means() == {"a": pytest.approx(3.0), "c": 0.5}


def test_random_erasing_as_the_official_codes():
    """Area fraction in [0.02, 0.4], aspect in [0.3, 1/0.3], the ImageNet mean written into the normalised tensor."""
    from hardreid.data.transforms import RandomErasing

    torch.manual_seed(0)
    erase = RandomErasing(1.0)
    fill = torch.tensor([0.485, 0.456, 0.406])
    fractions = []
    for _ in range(200):
        image = erase(torch.full((3, 64, 32), 9.0))
        mask = image[0] != 9.0
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert int(mask.sum()) == h * w and (rows.diff() == 1).all() and (cols.diff() == 1).all()  # one rectangle
        assert torch.equal(image[:, mask], fill[:, None].expand(3, h * w))
        fractions.append(h * w / (64 * 32))
        assert 0.3 - 0.15 <= h / w <= 1 / 0.3 + 1.2  # rounding of small rectangles widens the ratio a little
    assert 0.015 <= min(fractions) and max(fractions) <= 0.43 and max(fractions) > 0.33  # beyond torchvision's 0.33
    untouched = RandomErasing(0.0)(torch.ones(3, 8, 4))
    assert untouched.eq(1).all()
    with pytest.raises(UserError, match="erasing_area"):
        RandomErasing(0.5, (0.5, 0.2))
    assert "RandomErasing(p=0.5, area=(0.02, 0.4)" in repr(train_transform(tiny_config().data))


def test_base_configs_follow_the_official_scripts():
    from pathlib import Path

    from hardreid.config import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    cc = load_config(configs / "cluster_contrast" / "market1501.yaml")
    assert (cc.data.batch_size, cc.data.num_instances, cc.cluster.eps, cc.train.iters, cc.train.bn_chunk) == (256, 16, 0.6, 200, 64)
    assert cc.model.pooling == "gem" and cc.model.gem_learnable and cc.data.erasing_area == [0.02, 0.4]
    assert load_config(configs / "cluster_contrast" / "msmt17.yaml").train.iters == 400
    assert load_config(configs / "spcl" / "msmt17.yaml").train.iters == 800
    assert load_config(configs / "ice" / "msmt17.yaml").cluster.eps == 0.55
    # CPU configs: CPU-sized cost, the rest official; bn_chunk = the per-GPU share of the official batch
    chunks = {"cluster_contrast": 64, "spcl": 16, "ice": 8, "acfl": 32, "strong_baseline": 16}
    for base, chunk in chunks.items():
        cpu = load_config(configs / base / "cpu_mobilenet.yaml")
        assert cpu.train.bn_chunk == chunk, base
        assert (cpu.model.backbone, cpu.data.height, cpu.data.width, cpu.train.epochs, cpu.train.iters) == \
            ("mobilenet_v2", 128, 64, 20, 100), base
    cc_cpu = load_config(configs / "cluster_contrast" / "cpu_mobilenet.yaml")
    assert (cc_cpu.data.batch_size, cc_cpu.data.num_instances, cc_cpu.cluster.eps, cc_cpu.model.pooling) == (64, 16, 0.6, "gem")
