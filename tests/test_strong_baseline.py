"""OpenUnReID's strong baseline (method.base: strong_baseline): losses against naive loops, classifier, configs, training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hardreid.config import load_config
from hardreid.data.datasets import load_dataset
import hardreid.methods as M
from hardreid.methods.bases.strong_baseline import StrongBaseline, softmax_triplet_loss
from hardreid.training.trainer import Trainer

from conftest import tiny_config
from rounding import U32

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = torch.device("cpu")


def naive_softmax_triplet(emb: torch.Tensor, labels: list[int], margin: float) -> torch.Tensor:
    """OpenUnReID's loss written out per anchor: hardest positive / negative by Euclidean distance to the
    detached batch, -m log p_ap - (1 - m) log p_an with p = softmax(d_ap, d_an)."""
    ref = emb.detach()
    total = 0.0
    for i in range(len(labels)):
        dists = [torch.sqrt(((emb[i] - ref[j]) ** 2).sum().clamp(min=1e-12)) for j in range(len(labels))]
        d_ap = max((dists[j] for j in range(len(labels)) if labels[j] == labels[i]), key=lambda t: float(t.detach()))
        d_an = min((dists[j] for j in range(len(labels)) if labels[j] != labels[i]), key=lambda t: float(t.detach()))
        z = torch.logsumexp(torch.stack([d_ap, d_an]), 0)
        total = total - margin * (d_ap - z) - (1 - margin) * (d_an - z)
    return total / len(labels)


def _selection_margin(emb: torch.Tensor, labels: list[int]) -> float:
    """Smallest gap, in units of the rounding bound of a distance, between each anchor's hardest positive (negative)
    distance and its runner-up. The loss computes |a|^2 + |b|^2 - 2 a.b (d + 3 roundings of terms up to
    (|a| + |b|)^2, so within (d + 3) u (|a| + |b|)^2 / (2 dist) after the root), the loop sqrt(sum (a - b)^2)
    (within (d / 2 + 2) u dist): two computations pick the same pair when the gap exceeds twice their sum."""
    x = emb.detach().double()
    dist = torch.cdist(x, x)
    size = x.norm(dim=1)
    bound = (5 + 3) * U32 * (size[:, None] + size[None, :]) ** 2 / (2 * dist.clamp(min=1e-3)) + (5 / 2 + 2) * U32 * dist
    worst = float("inf")
    for i in range(len(labels)):
        for same in (True, False):
            js = [j for j in range(len(labels)) if (labels[j] == labels[i]) == same and j != i]
            if len(js) > 1:
                d = sorted(((float(dist[i, j]), float(bound[i, j])) for j in js), reverse=same)
                worst = min(worst, abs(d[0][0] - d[1][0]) / (2 * (d[0][1] + d[1][1])))
    return worst


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_softmax_triplet_matches_a_naive_loop_and_reaches_the_anchor_side_only(margin):
    torch.manual_seed(0)
    labels = [0, 0, 1, 1, 2, 2, 2]
    emb = torch.randn(7, 5, requires_grad=True)
    # no near-tie among the hardest positives / negatives: the loss and the loop pick the same pairs on every CPU
    # (the gradient goes to the picked pairs only); the values then agree within the same bound, far inside rel 1e-5
    assert _selection_margin(emb, labels) > 10
    loss = softmax_triplet_loss(emb, torch.tensor(labels), margin)
    naive = naive_softmax_triplet(emb, labels, margin)
    assert loss.item() == pytest.approx(naive.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, emb)
    (naive_grad,) = torch.autograd.grad(naive_softmax_triplet(emb, labels, margin), emb)
    torch.testing.assert_close(grad, naive_grad)
    # without the official detach (gradient through both ends of every distance) the gradient differs
    dist = torch.cdist(emb, emb)
    same = torch.tensor(labels)[:, None] == torch.tensor(labels)[None, :]
    d_ap, d_an = dist.masked_fill(~same, -1).max(1).values, dist.masked_fill(same, 1e9).min(1).values
    log_p = torch.stack([d_ap, d_an], 1).log_softmax(1)
    both = (-margin * log_p[:, 0] - (1 - margin) * log_p[:, 1]).mean()
    assert both.item() == pytest.approx(loss.item(), rel=1e-4)
    assert not torch.allclose(grad, torch.autograd.grad(both, emb)[0], atol=1e-4)


def _epoch(n: int = 12, clusters: int = 3, dim: int = 4) -> M.EpochData:
    torch.manual_seed(0)
    labels = torch.arange(n) % clusters
    labels[-1] = -1  # an outlier: in no centre
    return M.EpochData(0, F.normalize(torch.randn(n, dim), dim=1), labels, torch.zeros(n, dtype=torch.long), clusters)


def test_classifier_starts_at_the_normalised_centres_and_the_loss_is_ce_plus_triplet():
    cfg = tiny_config(method={"base": "strong_baseline"})
    base = StrongBaseline(cfg, CPU)
    data = _epoch()
    base.start_epoch(data, torch.nn.Linear(3, 4))
    for k in range(3):
        centre = data.features[data.labels == k].mean(0)
        torch.testing.assert_close(base.prototypes()[k], centre / centre.norm())
    assert base.classifier.requires_grad and not base.prototypes().requires_grad
    assert [o.param_groups[0]["params"][0] is base.classifier for o in base.optimizers()] == [True]
    method = M.ComposedMethod(base)
    linear = torch.nn.Linear(3, 4)
    batch = M.Batch(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6, dtype=torch.long), torch.arange(6))
    out = method.training_step(lambda x: F.normalize(linear(x), dim=1), batch)
    f = F.normalize(linear(batch.images), dim=1)  # a model without pool_and_embed: its features stand for both
    logits = f @ base.prototypes().t()  # no temperature
    smooth = torch.full((6, 3), 0.1 / 3) + 0.9 * F.one_hot(batch.labels, 3)
    ce = -(smooth * logits.log_softmax(1)).sum(1).mean()  # CrossEntropyLoss(epsilon 0.1) of OpenUnReID
    assert out.logs["loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert out.logs["loss_softmax_triplet"] == pytest.approx(softmax_triplet_loss(f, batch.labels).item(), rel=1e-5)
    out.loss.backward()
    assert base.classifier.grad is not None and base.classifier.grad.abs().sum() > 0  # trained by its optimiser
    base.start_epoch(data, linear)
    assert base.classifier.grad is None  # a fresh classifier (and optimiser) per epoch


def test_trainer_steps_the_classifier_and_resets_adam_each_epoch(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    cfg = tiny_config(method={"base": "strong_baseline"}, model={"pooling": "gem"},
                      train={"epochs": 1, "iters": 1, "eval_every": 0})
    trainer = Trainer(cfg, data, tmp_path / "run")
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    before_labels: list[int] = []  # Adam moments of the re-ID optimiser when the new labels come ...
    at_steps: list[int] = []  # ... and when the epoch's steps start
    start_epoch, train_steps = trainer.method.base.start_epoch, trainer.train_steps

    def spy_labels(epoch_data, model):
        before_labels.append(len(trainer.optimizer.state))
        start_epoch(epoch_data, model)

    def spy_steps(epoch, labels):
        at_steps.append(len(trainer.optimizer.state))
        return train_steps(epoch, labels)
    trainer.method.base.start_epoch, trainer.train_steps = spy_labels, spy_steps
    row = trainer.run_epoch(0)
    assert {"loss_ce", "loss_softmax_triplet"} <= set(row) and math.isfinite(row["loss"])
    base = trainer.method.base
    assert len(base.optimizer.state) == 1  # the classifier's Adam stepped
    initial = F.normalize(base.classifier.detach(), dim=1)
    assert not torch.allclose(base.classifier.detach(), initial)  # moved away from the unit centres
    assert len(trainer.optimizer.state) > 0
    trainer.run_epoch(1)
    assert before_labels[0] == 0 and before_labels[1] > 0 and at_steps == [0, 0]  # cleared: OpenUnReID's reset_optim
    pooling = trainer.model.pool
    assert isinstance(pooling.p, torch.nn.Parameter) and pooling.p.grad is not None  # learnable GeM is trained


def test_configs_follow_the_official_strong_baseline_and_table_1_names():
    cfg = load_config(CONFIGS / "strong_baseline" / "market1501.yaml")
    assert cfg.method.base == "strong_baseline" and cfg.model.pooling == "gem" and cfg.model.gem_learnable
    assert (cfg.cluster.eps, cfg.train.bn_chunk, cfg.data.batch_size, cfg.data.num_instances) == (0.6, 16, 64, 4)
    assert (cfg.train.epochs, cfg.train.iters, cfg.optim.lr, cfg.optim.gamma) == (50, 400, 3.5e-4, 1.0)
    cpu = load_config(CONFIGS / "strong_baseline" / "cpu_mobilenet.yaml")
    assert (cpu.model.backbone, cpu.data.height, cpu.train.bn_chunk, cpu.train.epochs) == ("mobilenet_v2", 128, 16, 20)
    for ds in ("market", "duke", "msmt17"):
        baseline = load_config(CONFIGS / "hng" / f"baseline_{ds}.yaml")
        assert baseline.method.base == "strong_baseline" and baseline.method.hard_samples == ["hng"]
        star = load_config(CONFIGS / "hng" / f"spcl_star_{ds}.yaml")
        assert star.method.base == "spcl" and star.model.pooling == "gem" and star.train.bn_chunk == 16
        assert "Not in the paper" in (CONFIGS / "hng" / f"cluster_contrast_{ds}.yaml").read_text().splitlines()[0]
    for row in ("fusion_mixup", "fusion_global", "warmup_no_gen", "warmup_none"):
        assert load_config(CONFIGS / "hng" / f"{row}.yaml").method.base == "strong_baseline"


def test_bad_settings_fail_before_training(tiny_root, tmp_path):
    from hardreid.errors import UserError

    with pytest.raises(UserError, match="label_smoothing"):
        M.build_method(tiny_config(method={"base": "strong_baseline"}, strong_baseline={"label_smoothing": 1.5}), CPU)
    data = load_dataset("market", tiny_root)
    with pytest.raises(UserError, match="data.sampler"):
        Trainer(tiny_config(data={"sampler": "random"}), data, tmp_path / "a")
    with pytest.raises(UserError, match="erasing_area"):
        Trainer(tiny_config(data={"erasing_area": [0.4]}), data, tmp_path / "b")
