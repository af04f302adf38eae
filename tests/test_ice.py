"""ICE base and the camera_proxy / mean_teacher add-ons: losses against naive loops, EMA, training and resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hardreid.config import Config
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.memory import CameraProxies
from hardreid.models.ema import ModelEMA
import hardreid.methods as M
from hardreid.methods.bases.ice import hard_instance_loss, soft_instance_consistency
from hardreid.runs import train

from conftest import tiny_config
from rounding import U64, forward_error


def _proxies() -> CameraProxies:
    features = F.normalize(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, -1, 0])
    camids = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1, 0, 1])
    return CameraProxies.from_clusters(features, labels, camids)


def test_proxies_are_per_label_and_camera_means():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
    proxies = CameraProxies.from_clusters(features, torch.tensor([0, 0, 0, -1]), torch.tensor([0, 0, 1, 0]))
    assert proxies.proxy_labels.tolist() == [0, 0] and proxies.proxy_cams.tolist() == [0, 1]
    torch.testing.assert_close(proxies.proxies, F.normalize(torch.tensor([[0.5, 0.5], [1.0, 1.0]]), dim=1))


def test_hardest_negative_selection():
    sims = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3]])
    positive = torch.tensor([[True, False, False, False, False]])
    hard = CameraProxies.hardest_negatives(sims, positive, k=2)
    assert hard.tolist() == [[False, False, True, True, False]]  # 0.7 and 0.5, never the positive 0.9
    assert CameraProxies.hardest_negatives(sims, positive, k=50).sum() == 4


# The naive loops below add in float64 what the losses compute in float32, the CPU only changing the order of the
# sums: each logit is a dot product of <= 4 terms of unit vectors over tau >= 0.07, within 4 u / 0.07 = 3.4e-6 (plus
# the column scaling of "official", a few u more); a log-sum-exp or cross-entropy moves by at most twice that, and a
# mean over cameras or queries adds a few u. The losses here are >= 1, so rel=1e-5 (>= 1e-5 absolute) holds that bound.
@pytest.mark.parametrize("scoring", ["official", "cosine"])
def test_cross_camera_loss_matches_a_naive_loop(scoring):
    proxies = _proxies()
    f = F.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    labels, camids = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 0])
    loss = proxies.cross_camera_loss(f, labels, camids, temperature=0.07, num_hard_negatives=2, scoring=scoring)
    p = proxies.proxies.tolist()
    # official: normalize(P.t()) scales each feature dimension d by 1 / sqrt(sum_j P[j][d]^2)
    scale = [math.sqrt(sum(row[d] ** 2 for row in p)) if scoring == "official" else 1.0 for d in range(4)]
    per_query = []
    for q, y in zip(f, labels.tolist()):
        sims = [sum(q[d].item() * row[d] / scale[d] for d in range(4)) for row in p]
        pos = [j for j in range(proxies.num_proxies) if proxies.proxy_labels[j] == y]
        neg = sorted((j for j in range(proxies.num_proxies) if j not in pos), key=lambda j: -sims[j])[:2]
        denom = math.log(sum(math.exp(sims[j] / 0.07) for j in pos + neg))
        per_query.append(sum(denom - sims[j] / 0.07 for j in pos) / len(pos))
    naive = (per_query[0] + per_query[1] + per_query[3]) / 3 + per_query[2]  # camera 0 mean + camera 1 mean
    assert loss.item() == pytest.approx(naive, rel=1e-5)


def test_intra_camera_loss_matches_a_naive_loop():
    proxies = _proxies()
    f = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    labels, camids = torch.tensor([1, 3]), torch.tensor([0, 1])
    loss = proxies.intra_camera_loss(f, labels, camids, temperature=0.07)
    naive = 0.0
    for q, y, c in zip(f, labels.tolist(), camids.tolist()):
        own = [j for j in range(proxies.num_proxies) if proxies.proxy_cams[j] == c]
        target = next(j for j in own if proxies.proxy_labels[j] == y)
        logits = {j: float(proxies.proxies[j] @ q) / 0.07 for j in own}
        naive += math.log(sum(math.exp(v) for v in logits.values())) - logits[target]
    assert loss.item() == pytest.approx(naive, rel=1e-5)  # one query per camera: sum of the two


def test_hard_instance_loss_matches_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    s, t = F.normalize(torch.randn(4, 3, generator=g), dim=1), F.normalize(torch.randn(4, 3, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    loss = hard_instance_loss(s, t, labels, temperature=0.1)
    naive = 0.0
    for i in range(4):
        pos = min(float(s[i] @ t[j]) for j in range(4) if labels[j] == labels[i])
        negs = [float(s[i] @ t[j]) for j in range(4) if labels[j] != labels[i]]
        naive += math.log(sum(math.exp(v / 0.1) for v in [pos] + negs)) - pos / 0.1
    assert loss.item() == pytest.approx(naive / 4, rel=1e-5)


def test_soft_consistency_value_and_stop_gradient_on_the_target():
    g = torch.Generator().manual_seed(4)
    s, t, w = (torch.randn(3, 4, generator=g).requires_grad_() for _ in range(3))
    loss = soft_instance_consistency(s, t, w, temperature=0.4)
    sn, tn, wn = (F.normalize(x.detach(), dim=1) for x in (s, t, w))
    p = (sn @ tn.t() / 0.4).softmax(1)
    q = (wn @ wn.t() / 0.4).softmax(1)
    assert loss.item() == pytest.approx(float((q * (q.log() - p.log())).sum() / 3), rel=1e-5)
    loss.backward()
    assert w.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_teacher_ema_value_and_buffers():
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(student, momentum=0.9, ema_buffers=True)
    before = student[0].weight.detach().clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(2.0)
    ema.update(student)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * before + 0.1 * (before + 1.0))
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((2,), 0.2))
    assert not any(p.requires_grad for p in ema.module.parameters())
    frozen_stats = ModelEMA(student, momentum=0.9, ema_buffers=False)
    student[1].running_mean.fill_(5.0)
    frozen_stats.update(student)
    assert frozen_stats.module[1].running_mean.tolist() == [2.0, 2.0]


def test_addons_refuse_redundant_compositions():
    cfg = tiny_config(method={"base": "ice", "hard_samples": ["camera_proxy"]})
    with pytest.raises(UserError, match="already part of the ICE base"):
        M.build_method(cfg, torch.device("cpu"))
    with pytest.raises(UserError, match="SpCL"):
        M.build_method(tiny_config(method={"base": "spcl", "hard_samples": ["mean_teacher"]}), torch.device("cpu"))


class ShiftPositives(M.Component):
    """A dummy generator: lowers each row's positive prototype logit (labels -1 untouched)."""

    name = "shift"

    def __init__(self) -> None:
        super().__init__(Config(), torch.device("cpu"))

    def attach(self, base: M.BaseMethod) -> None:
        def adjust(features, labels, prototypes, logits):
            hit = F.one_hot(labels.clamp(min=0), prototypes.shape[0]) * (labels >= 0)[:, None]
            return logits - 5.0 * hit
        base.logit_adjusters.append(adjust)


@pytest.mark.parametrize("base", ["cluster_contrast", "spcl", "ice", "strong_baseline"])
def test_logit_adjusters_change_every_base_loss(base):
    torch.manual_seed(0)
    n, dim = 12, 4
    labels = torch.arange(n) % 3
    camids = torch.arange(n) // 6
    import scipy.sparse as sp
    distance = sp.csr_matrix(((labels[:, None] != labels[None, :]).float() * 0.9).numpy())  # 3 tight clusters
    data = M.EpochData(0, F.normalize(torch.randn(n, dim), dim=1), labels, camids, 3, distance)
    model = torch.nn.Linear(3, dim)
    batch = M.Batch(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1]),
                    torch.tensor([0, 3, 1, 4, 2, 5]), [torch.randn(6, 3)], torch.randn(6, 3))
    losses = []
    for generators in ([], [ShiftPositives()]):
        cfg = tiny_config()
        method = M.ComposedMethod(M.BASES[base](cfg, torch.device("cpu")), generators)
        method.start_epoch(data, model)
        torch.manual_seed(1)
        losses.append(method.training_step(model, batch).loss.item())
    assert losses[1] > losses[0] + 0.1


@pytest.mark.slow  # ~60-160 s on 2 shared cores (three views and teacher passes per step)
@pytest.mark.parametrize("setting", [{"base": "ice"}, {"base": "cluster_contrast", "hard_samples": ["camera_proxy", "mean_teacher"]}])
def test_trains_and_resumes_exactly(tiny_root, tmp_path, setting):
    data = load_dataset("market", tiny_root)
    straight = train(tiny_config(method=setting), data, tmp_path / "straight", log_to_stderr=False)
    assert any(k.startswith(("loss_ice_camera", "loss_camera_proxy")) for k in straight.history[0])
    train(tiny_config(method=setting, train={"epochs": 1}), data, tmp_path / "split", log_to_stderr=False)
    resumed = train(tiny_config(method=setting), data, tmp_path / "split", resume=True, log_to_stderr=False)
    # a resumed run repeats the straight run's computations (same shapes, order, thread count; saved state exact): equal by construction
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    assert resumed.history[1]["loss"] == pytest.approx(straight.history[1]["loss"])


def test_official_proxy_scoring_on_a_toy_case_by_hand():
    """ice.proxy_scoring official: normalize(f) @ normalize(P.t()) scales each feature dimension across the proxies."""
    proxies = CameraProxies(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), torch.tensor([0, 1, 2]),
                            torch.tensor([0, 1, 0]))
    f = torch.tensor([[0.8, 0.6]])
    col0, col1 = math.sqrt(1 + 0.36), math.sqrt(0.64 + 1)  # norms of the two feature dimensions over the 3 proxies
    official = [0.8 / col0, 0.8 * 0.6 / col0 + 0.6 * 0.8 / col1, 0.6 / col1]  # 0.686, 0.786, 0.469
    cosine = [0.8, 0.96, 0.6]
    for scoring, scores in (("official", official), ("cosine", cosine)):
        torch.testing.assert_close(f @ proxies.scored_proxies(scoring).t(), torch.tensor([scores]))
        expected = math.log(sum(math.exp(s / 0.07) for s in scores)) - scores[0] / 0.07  # positive: proxy 0
        loss = proxies.cross_camera_loss(f, torch.tensor([0]), torch.tensor([0]), 0.07, 50, scoring)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert official[1] < cosine[1]  # the scores (and so the loss and its hardest negatives) really differ
    with pytest.raises(UserError, match="proxy_scoring"):
        M.build_method(tiny_config(method={"base": "ice"}, ice={"proxy_scoring": "l2"}), torch.device("cpu"))


def _ice_step_setup(dtype: torch.dtype = torch.float32, **ice):
    from hardreid.models import build_model

    torch.manual_seed(0)
    cfg = tiny_config(method={"base": "ice"}, ice=ice)
    model = build_model("mobilenet_v2", last_stride=2).train().to(dtype)
    method = M.build_method(cfg, torch.device("cpu"))
    n = 12
    labels = torch.arange(n) % 3
    data = M.EpochData(0, F.normalize(torch.randn(n, model.feat_dim), dim=1), labels, torch.arange(n) % 2, 3)
    method.start_epoch(data, model)
    images = lambda: torch.randn(6, 3, 32, 16).to(dtype)  # noqa: E731
    batch = M.Batch(images(), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1]), torch.arange(6),
                    [images()], images())
    return method, model, batch


@pytest.mark.parametrize("on_view1", [True, False])
def test_teacher_runs_on_view_1_view_2_and_the_weak_images(on_view1):
    """As ice/trainers.py: three teacher forwards per step (view 1's output unused), three BN statistic updates."""
    method, model, batch = _ice_step_setup(teacher_on_view1=on_view1)
    teacher = method.base.teacher.get(model).module
    seen: list[torch.Tensor] = []
    handle = teacher.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    tracked = teacher.neck.num_batches_tracked.item()
    method.training_step(model, batch)
    handle.remove()
    inputs = [batch.images, batch.views[0], batch.weak] if on_view1 else [batch.views[0], batch.weak]
    assert len(seen) == len(inputs) and teacher.neck.num_batches_tracked.item() == tracked + len(inputs)
    for got, images in zip(seen, inputs):  # ShuffleBN permutes each batch: compare as sets of images
        assert sorted(got.flatten(1).sum(1).tolist()) == pytest.approx(sorted(images.flatten(1).sum(1).tolist()))


def test_shuffle_bn_puts_the_teacher_features_back_in_order():
    # float64: the teacher runs in train mode, so the shuffled batch gives BatchNorm statistics summed in another
    # order (and other rows to the kernels): in float32 the two differ by the CPU's rounding, up to ~2 u * the sum of
    # the reduction lengths (about 1e-3 here, no useful tolerance); in float64 by at most 4 * forward_error
    # (tests/rounding.py: two unit features), ~1e-11, while a wrong order moves a row by > 1
    method, model, batch = _ice_step_setup(torch.float64, shuffle_bn=True)
    plain, plain_model, _ = _ice_step_setup(torch.float64, shuffle_bn=False)  # the same seed: the same networks
    shuffled = method.base.teacher_features(model, batch.images)
    expected = plain.base.teacher_features(plain_model, batch.images)
    assert shuffled.dtype == torch.float64
    torch.testing.assert_close(shuffled, expected, atol=4 * forward_error(plain_model, batch.images, U64), rtol=0)
    assert float(torch.cdist(expected, expected).masked_fill(torch.eye(6, dtype=torch.bool), 9).min()) > 0.1  # rows apart
    method.base.teacher.get(model).module.bn_chunk = 2  # per-GPU chunks: shuffled chunks mix images, features change
    plain.base.teacher.get(plain_model).module.bn_chunk = 2
    assert not torch.allclose(method.base.teacher_features(model, batch.images),
                              plain.base.teacher_features(plain_model, batch.images), atol=1e-3)
