"""Camera-based BatchNorm (ECCV 2020, ``model.camera_bn``): the training path (per-camera batch statistics, per-camera
running statistics, same-camera pairs from the samplers), the test-time step (per-camera recalibration before
extraction), and the wiring: every base and generator trains with it, checkpoints keep the per-camera statistics
and load into a plain model, evaluate / extract / search recalibrate (issue 26, item 2)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from hardreid.data.datasets import load_dataset
from hardreid.data.transforms import eval_transform
from hardreid.data.types import Sample
from hardreid.errors import UserError
from hardreid.evaluation.camera_bn import extract_features_camera_bn
from hardreid.evaluation.features import calibrate_batchnorm, extract_features
from hardreid.models.camera_bn import per_camera_pool_and_embed
from hardreid.models.reid import ReidModel

from conftest import tiny_config

CPU = torch.device("cpu")


def small_model() -> ReidModel:
    torch.manual_seed(0)
    return ReidModel("resnet18", last_stride=2, img_size=(64, 32)).train()


def test_each_camera_is_normalised_with_its_own_batch_statistics():
    model = small_model()
    reference = copy.deepcopy(model)
    x = torch.randn(8, 3, 64, 32)
    cams = torch.tensor([2, 0, 2, 1, 0, 1, 0, 2])
    pooled, embedded = per_camera_pool_and_embed(model, x, cams)
    for cam in (0, 1, 2):  # what one forward per camera gives (cameras in increasing order, as the groups run)
        rows = torch.nonzero(cams == cam).flatten()
        p, e = reference.embed_chunk(x[rows])
        torch.testing.assert_close(pooled[rows], p, rtol=0, atol=0)
        torch.testing.assert_close(embedded[rows], e, rtol=0, atol=0)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.equal(a, b), name  # the running statistics moved as the per-camera forwards moved them
    plain = copy.deepcopy(reference).pool_and_embed(x)[1]  # the whole batch in one group differs
    assert (plain - embedded).abs().max() > 1e-2
    embedded.sum().backward()  # gradients flow through every camera's group
    assert model.neck.weight.grad is not None and torch.isfinite(model.neck.weight.grad).all()


def test_eval_mode_and_refusals():
    model = small_model()
    x = torch.randn(6, 3, 64, 32)
    with pytest.raises(UserError, match=r"at least 2 images of each camera.*\[1\] have 1"):
        per_camera_pool_and_embed(model, x, torch.tensor([0, 0, 1, 2, 2, 2]))
    with pytest.raises(UserError, match="one camera id per image"):
        per_camera_pool_and_embed(model, x, torch.tensor([0, 0, 1]))
    model.eval()
    torch.testing.assert_close(per_camera_pool_and_embed(model, x, torch.tensor([0, 0, 1, 2, 2, 2]))[1],
                               model.pool_and_embed(x)[1], rtol=0, atol=0)


def test_features_are_extracted_with_each_cameras_recalibrated_statistics(tiny_root, caplog):
    cfg = tiny_config()
    data = load_dataset("market", tiny_root)
    transform = eval_transform(cfg.data)
    model = ReidModel("mobilenet_v2", last_stride=2, img_size=(64, 32))
    calibrate_batchnorm(model, data.train, transform, batch_size=16, workers=0)  # some global statistics
    samples = list(data.gallery[:12])
    samples.append(Sample(samples[0].path, -1, -1))  # an image without a camera
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="hardreid"):
        got = extract_features_camera_bn(model, samples, transform, batch_size=4, workers=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # statistics restored
    assert sum("no camera" in r.getMessage() for r in caplog.records) == 1
    cams = sorted({s.camid for s in samples if s.camid >= 0})
    assert len(cams) >= 2
    for cam in cams:  # expected: a fresh copy calibrated on that camera's images only
        rows = [i for i, s in enumerate(samples) if s.camid == cam]
        part = [samples[i] for i in rows]
        calibrated = copy.deepcopy(model)
        calibrate_batchnorm(calibrated, part, transform, batch_size=4, workers=0)
        torch.testing.assert_close(got[rows], extract_features(calibrated, part, transform, batch_size=4, workers=0))
    torch.testing.assert_close(got[-1:], extract_features(model, samples[-1:], transform, workers=0))  # global
    assert (got[-1] - got[0]).abs().max() > 1e-3  # the same image with its camera's statistics differs


# -- the samplers' same-camera pairs ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pk", "multi_camera", "more_camera"])
def test_samplers_draw_same_camera_pairs(name):
    """``camera_pairs``: every group is pairs of one identity and one camera (an image alone in its camera is
    paired with itself), so every even-sized block of the stream holds each of its cameras an even number of
    times, at least 2; ``len`` stays exact."""
    from hardreid.data.sampler import SAMPLERS

    rng = torch.Generator().manual_seed(0)
    labels = [i // 5 for i in range(40)] + [8, 9]  # 8 identities of 5 images, 2 of one image
    camids = torch.randint(0, 4, (len(labels),), generator=rng).tolist()
    sampler = SAMPLERS[name](labels, 4, seed=1, camids=camids, camera_pairs=True, singletons_once=True)
    stream = list(sampler)
    singleton = {"pk": 2, "multi_camera": 2, "more_camera": 4}[name]  # one draw made a pair, or K draws
    assert len(stream) == len(sampler) == 8 * 4 + 2 * singleton
    for first, second in zip(stream[::2], stream[1::2]):
        assert labels[first] == labels[second] and camids[first] == camids[second]
        if first == second:  # only when the camera has no other image of the identity
            assert sum(1 for i, (lab, c) in enumerate(zip(labels, camids))
                       if lab == labels[first] and c == camids[first]) == 1
    for start in range(0, len(stream), 8):
        counts = torch.bincount(torch.tensor([camids[i] for i in stream[start:start + 8]]))
        assert ((counts == 0) | (counts % 2 == 0)).all()
    plain = list(SAMPLERS[name](labels, 4, seed=1, camids=camids))  # without pairs: cameras alone in a block happen
    assert any((torch.bincount(torch.tensor([camids[i] for i in plain[s:s + 8]])) == 1).any()
               for s in range(0, len(plain) - 7, 8))


# -- training: per-camera groups and statistics ----------------------------------------------------------------
def _bn_state(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def test_per_camera_running_statistics_and_their_mixture():
    """With CameraStatistics each camera's running statistics move by its own batch statistics (the layer's
    momentum), the model's own become their mixture weighted by the cameras' shares, and the outputs are those
    of one forward per camera."""
    from hardreid.models.camera_bn import CameraStatistics

    model = small_model()
    stats = CameraStatistics(model, {0: 3, 1: 1})
    x = torch.randn(8, 3, 64, 32)
    cams = torch.tensor([1, 0, 0, 1, 0, 0, 1, 1])
    start = _bn_state(model)
    _, embedded = per_camera_pool_and_embed(model, x, cams, stats)
    for cam in (0, 1):
        reference = copy.deepcopy(small_model())
        reference.load_state_dict({**reference.state_dict(), **start})
        rows = torch.nonzero(cams == cam).flatten()
        torch.testing.assert_close(embedded[rows], reference.embed_chunk(x[rows])[1])
        for k, v in stats.stats[cam].items():  # the camera's statistics: where one plain forward takes them
            torch.testing.assert_close(v, dict(reference.named_buffers())[k], msg=k)
    buffers = dict(model.named_buffers())
    key = "neck.running_mean"
    mean = 0.75 * stats.stats[0][key] + 0.25 * stats.stats[1][key]
    var = 0.75 * (stats.stats[0]["neck.running_var"] + stats.stats[0][key] ** 2) + \
        0.25 * (stats.stats[1]["neck.running_var"] + stats.stats[1][key] ** 2) - mean ** 2
    torch.testing.assert_close(buffers[key], mean)
    torch.testing.assert_close(buffers["neck.running_var"], var)
    assert not torch.allclose(stats.stats[0][key], stats.stats[1][key])  # the cameras' statistics differ
    embedded.sum().backward()
    assert model.neck.weight.grad is not None and torch.isfinite(model.neck.weight.grad).all()


@pytest.mark.parametrize("camera_bn", [True, False])
def test_a_cameras_features_do_not_depend_on_another_cameras_images(camera_bn):
    """Per-camera normalisation is real: with camera BN, changing camera 1's images leaves camera 0's training
    features unchanged (bit for bit); with plain BatchNorm they change."""
    model = small_model()
    x = torch.randn(8, 3, 64, 32)
    cams = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    other = x.clone()
    other[cams == 1] = torch.randn(4, 3, 64, 32) * 3 + 1

    def forward(images):
        m = copy.deepcopy(model)
        return per_camera_pool_and_embed(m, images, cams)[1] if camera_bn else m.pool_and_embed(images)[1]

    a, b = forward(x)[cams == 0], forward(other)[cams == 0]
    if camera_bn:
        assert torch.equal(a, b)
    else:
        assert (a - b).abs().max() > 1e-2


def test_bn_chunk_groups_are_per_camera_within_each_chunk():
    """train.bn_chunk with camera BN: each chunk (an emulated GPU's share) is normalised per camera; the running
    statistics follow the first chunk only, as plain bn_chunk."""
    model = small_model()
    model.bn_chunk = 4
    reference = copy.deepcopy(model)
    x = torch.randn(8, 3, 64, 32)
    cams = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])
    _, embedded = per_camera_pool_and_embed(model, x, cams)
    expected = torch.empty_like(embedded)
    for chunk in (slice(0, 4), slice(4, 8)):
        for cam in (0, 1):
            rows = torch.nonzero(cams == cam).flatten()
            rows = rows[(rows >= chunk.start) & (rows < chunk.stop)]
            before = _bn_state(reference)
            expected[rows] = reference.embed_chunk(x[rows])[1]
            if chunk.start > 0:  # later chunks leave the running statistics alone
                for k, v in reference.named_buffers():
                    v.copy_(before[k])
    torch.testing.assert_close(embedded, expected)
    for (k, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(UserError, match=r"^camera-based BatchNorm needs at least 2 images of each camera in each "
                                        r"BatchNorm group \(train.bn_chunk chunks of 4\); camera\(s\) \[0, 1\] have 1"):
        per_camera_pool_and_embed(model, x, torch.tensor([0, 1, 2, 2, 1, 1, 0, 0]))


# -- test time: a hand-computed reference ------------------------------------------------------------------------
class TinyBN(torch.nn.Module):
    """features = BatchNorm2d(image) flattened: its statistics are the per-channel mean and variance of the pixels."""

    feat_dim = 3 * 8 * 4

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):
        return self.bn(x).flatten(1)


def test_recalibration_uses_each_cameras_own_statistics(tiny_root):
    """camera_statistics and extract_with_camera_statistics against a hand computation: camera c's statistics are
    the per-channel mean and unbiased variance of camera c's (eval-transformed) pixels, and its features are its
    images normalised with them; the model's own statistics are untouched."""
    from hardreid.config import DataConfig
    from hardreid.data.loaders import ImageDataset
    from hardreid.evaluation.camera_bn import camera_statistics, extract_with_camera_statistics

    transform = eval_transform(DataConfig(height=8, width=4))
    samples = list(load_dataset("market", tiny_root).gallery[:14])
    model = TinyBN()
    before = _bn_state(model)
    stats = camera_statistics(model, samples, transform, batch_size=64, workers=0)
    assert _bn_state(model).keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in _bn_state(model).items())
    got = extract_with_camera_statistics(model, samples, stats, transform, batch_size=5, workers=0)
    images = torch.stack([ImageDataset(samples, transform)[i][0] for i in range(len(samples))])
    cams = torch.tensor([s.camid for s in samples])
    assert sorted(stats) == sorted(set(cams.tolist())) and len(stats) >= 2
    for cam in stats:
        pixels = images[cams == cam]
        mean, var = pixels.mean(dim=(0, 2, 3)), pixels.var(dim=(0, 2, 3), unbiased=True)
        torch.testing.assert_close(stats[cam]["bn.running_mean"], mean)
        torch.testing.assert_close(stats[cam]["bn.running_var"], var)
        w, b = model.bn.weight.detach()[:, None, None], model.bn.bias.detach()[:, None, None]
        expected = ((pixels - mean[:, None, None]) / (var[:, None, None] + model.bn.eps).sqrt() * w + b).flatten(1)
        torch.testing.assert_close(got[cams == cam], torch.nn.functional.normalize(expected, dim=1))


# -- refusals ------------------------------------------------------------------------------------------------------
def test_refusals_are_one_line(tmp_path):
    from hardreid.config.schema import Config
    from hardreid.data.types import ReidDataset
    from hardreid.training.preflight import require_cameras

    for settings, expected in [
        ({"data": {"num_instances": 3, "batch_size": 12}}, "data.num_instances must be even, got 3"),
        ({"train": {"bn_chunk": 3}}, "use an even train.bn_chunk, got 3"),
        ({"train": {"sync_bn": True}}, "set train.sync_bn=false"),
    ]:
        with pytest.raises(UserError) as info:
            Config(**settings, model={"camera_bn": True})
        assert expected in str(info.value) and "\n" not in str(info.value)
        Config(**settings)  # fine without camera BN
    cfg = tiny_config(model={"camera_bn": True})
    one_camera = ReidDataset("folder", str(tmp_path), [Sample(f"{i}.jpg", -1, 0) for i in range(8)],
                             has_train_labels=False)
    with pytest.raises(UserError, match=r"^model.camera_bn normalises each camera's images apart, .*all come from 1 "
                                        r"camera\): set model.camera_bn=false, or name the cameras") as info:
        require_cameras(cfg, one_camera)
    assert "\n" not in str(info.value)
    require_cameras(tiny_config(), one_camera)  # plain BatchNorm: fine


# -- wired end to end ----------------------------------------------------------------------------------------------
RUNS = {  # 1 epoch x 1 step each
    "cluster_contrast": {},
    "spcl": {"method": {"base": "spcl"}},
    "ice": {"method": {"base": "ice"}},
    "strong_baseline": {"method": {"base": "strong_baseline"}},
    "hpf": {"method": {"hard_samples": ["hpf"]}},
    "hpi": {"method": {"hard_samples": ["hpi"]}},
    "hng": {"method": {"hard_samples": ["hng"]}, "hng": {"warmup_epochs": 0, "ngf": 4, "ndf": 4}},
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_base_and_generator_trains_with_camera_bn(tiny_root, tmp_path, name, monkeypatch):
    """A tiny run with model.camera_bn on each base and generator: the step's forward goes through the per-camera
    groups with the batch's cameras (counted), the loss is finite, extraction recalibrates per camera."""
    import math

    import hardreid.evaluation.camera_bn as evaluation_camera_bn
    import hardreid.models.camera_bn as models_camera_bn
    from hardreid.training.trainer import train

    calls = {"forward": 0, "statistics": 0}
    forward, statistics = models_camera_bn.per_camera_pool_and_embed, evaluation_camera_bn.camera_statistics

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counted_statistics(*args, **kwargs):
        calls["statistics"] += 1
        return statistics(*args, **kwargs)

    monkeypatch.setattr(models_camera_bn, "per_camera_pool_and_embed", counted_forward)
    monkeypatch.setattr("hardreid.training.trainer.per_camera_pool_and_embed", counted_forward)
    monkeypatch.setattr("hardreid.methods.bases.ice.per_camera_pool_and_embed", counted_forward)
    monkeypatch.setattr(evaluation_camera_bn, "camera_statistics", counted_statistics)
    monkeypatch.setattr("hardreid.training.trainer.camera_statistics", counted_statistics)
    settings = {**RUNS[name], "model": {"camera_bn": True},
                "train": {"epochs": 1, "iters": 1, "eval_every": 0, "eval_at_start": False}}
    result = train(tiny_config(**settings), load_dataset("market", tiny_root), tmp_path / name, log_to_stderr=False)
    row = result.history[0]
    assert math.isfinite(row["loss"]) and "mAP" in row
    state = torch.load(tmp_path / name / "checkpoints" / "last.pth", weights_only=False)
    saved = state["camera_bn"]  # the model's own statistics are the cameras' mixture after the step, whatever
    mixture = sum(w * saved["statistics"][c]["neck.running_mean"] for c, w in saved["weights"].items())
    torch.testing.assert_close(state["model"]["neck.running_mean"], mixture)  # other forwards (hpi, hng) did
    assert calls["forward"] == (1 + 3 if name == "ice" else 1)  # the student's step (+ ICE's teacher: 3 passes)
    # per-camera calibration at the start, then clustering, query and gallery extraction recalibrate per camera
    assert calls["statistics"] == 4


def test_checkpoints_keep_per_camera_statistics_and_load_into_a_plain_model(tiny_root, tmp_path):
    """The checkpoint holds every training camera's running statistics and, as the model's own, their mixture;
    it loads into a plain model (evaluate, export: global statistics), and resuming restores the per-camera ones."""
    from hardreid.export.formats import export_model
    from hardreid.models import model_from_config
    from hardreid.training.checkpoint import load_checkpoint, load_model_state
    from hardreid.training.trainer import Trainer, train

    data = load_dataset("market", tiny_root)
    cfg = tiny_config(model={"camera_bn": True}, train={"epochs": 1, "iters": 1, "eval_every": 0})
    train(cfg, data, tmp_path / "run", log_to_stderr=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    saved = state["camera_bn"]
    assert sorted(saved["statistics"]) == sorted({s.camid for s in data.train}) == [0, 1]
    weights = saved["weights"]
    key = "neck.running_mean"
    mixture = sum(w * saved["statistics"][c][key] for c, w in weights.items())
    torch.testing.assert_close(state["model"][key], mixture)
    assert not torch.allclose(saved["statistics"][0][key], saved["statistics"][1][key])
    plain = model_from_config(tiny_config(), initial_weights=False)
    load_model_state(plain, state, "last.pth")  # strict: no extra keys in the model's state
    assert plain.camera_bn_images is None
    export = export_model(plain.eval(), "torchscript", tmp_path / "model.ts", 64, 32)
    x = torch.randn(2, 3, 64, 32)
    torch.testing.assert_close(torch.jit.load(str(export))(x), plain(x))  # global statistics in the export
    resumed = Trainer(cfg, data, tmp_path / "again")
    resumed.resume(tmp_path / "run" / "checkpoints" / "last.pth", state)
    for cam, values in saved["statistics"].items():
        assert all(torch.equal(resumed.camera_stats.stats[cam][k], v) for k, v in values.items())


def test_extract_and_search_recalibrate_per_camera(tiny_root, tmp_path, caplog):
    """``hardreid extract`` / ``search`` with a camera-BN checkpoint: features are camera-based BatchNorm's (each
    camera's statistics from that camera's images in the whole folder, across shards; an image without a camera
    in its name with the global statistics, said once), and the manifest records it."""
    import shutil
    from hardreid.retrieval.features import camera_samples, extract_folder, list_images
    from hardreid.retrieval.model import load_feature_model
    from hardreid.retrieval.search import queries_from_images
    from hardreid.training.trainer import train

    cfg = tiny_config(model={"camera_bn": True, "camera_bn_images": 5}, train={"epochs": 1, "iters": 1, "eval_every": 0})
    train(cfg, load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
    fm = load_feature_model(tmp_path / "run" / "checkpoints" / "last.pth")
    assert fm.model.camera_bn_images == 5
    folder = tmp_path / "images"
    shutil.copytree(tiny_root / "query", folder)
    for name in ("000_no_camera.jpg", "zz_no_camera.jpg"):  # in the first shard and in the last
        shutil.copy(next(folder.glob("0*.jpg")), folder / name)
    logger = logging.getLogger("hardreid")
    logger.addHandler(caplog.handler)  # train's logging setup may have stopped propagation
    try:
        fs = extract_folder(fm, folder, tmp_path / "feats", batch_size=4, workers=0, shard_size=3, progress=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert sum("no camera" in r.getMessage() for r in caplog.records) == 1
    assert fs.manifest["model"]["camera_bn"] == 5
    root, paths = list_images(folder)
    samples = camera_samples(root, paths)
    assert len({s.camid for s in samples}) >= 2 and [s.camid for s in samples].count(-1) == 2
    assert samples[0].camid == samples[-1].camid == -1
    expected = extract_features_camera_bn(fm.model, samples, eval_transform(fm.cfg.data), 4, 0, max_images=5)
    torch.testing.assert_close(torch.from_numpy(fs.features.copy()), expected)
    plain = extract_features(fm.model, samples, eval_transform(fm.cfg.data), 4, 0)
    assert (plain - expected).abs().max() > 1e-4  # recalibration changed them
    queries = queries_from_images(fm, folder, batch_size=4, workers=0)
    torch.testing.assert_close(torch.from_numpy(queries.features), expected)


def test_sharded_extraction_makes_the_batches_of_one_process(tiny_root, monkeypatch):
    """extract_model_features under two (simulated) processes: each takes a contiguous run of the batches one process
    makes (camera after camera), so together they give every feature bit for bit."""
    from hardreid import distributed
    from hardreid.config import DataConfig
    from hardreid.evaluation.camera_bn import extract_model_features

    transform = eval_transform(DataConfig(height=8, width=4))
    samples = list(load_dataset("market", tiny_root).gallery[:15])
    samples.append(Sample(samples[0].path, -1, -1))
    model = TinyBN()
    model.camera_bn_images = 3200
    whole = extract_model_features(model, samples, transform, batch_size=2, workers=0)
    torch.testing.assert_close(whole, extract_features_camera_bn(model, samples, transform, 2, 0), rtol=0, atol=0)
    parts: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "all_gather_cat", lambda t, r=rank: parts[r].append(t) or t)
        extract_model_features(model, samples, transform, batch_size=2, workers=0)
    (feats0, rows0), (feats1, rows1) = parts[0], parts[1]
    rows = torch.cat([rows0, rows1])
    assert sorted(rows.tolist()) == list(range(len(samples))) and len(rows0) > 0 and len(rows1) > 0
    assert torch.equal(torch.cat([feats0, feats1]), whole[rows])


def test_per_camera_statistics_with_bn_chunk_keep_backward_valid():
    """Per-camera running statistics with train.bn_chunk: the first chunk updates them (and the global mixture is
    written before any later chunk's forward), the later chunks update nothing, and backward runs."""
    from hardreid.models.camera_bn import CameraStatistics

    model = small_model()
    model.bn_chunk = 4
    stats = CameraStatistics(model, {0: 1, 1: 1})
    x = torch.randn(8, 3, 64, 32)
    cams = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])
    first = copy.deepcopy(model)
    first.bn_chunk = 0
    expected = CameraStatistics(first, {0: 1, 1: 1})
    per_camera_pool_and_embed(first, x[:4], cams[:4], expected)  # the first chunk alone
    _, embedded = per_camera_pool_and_embed(model, x, cams, stats)
    embedded.sum().backward()
    for cam in (0, 1):
        for k, v in stats.stats[cam].items():
            assert torch.equal(v, expected.stats[cam][k]), k
    for (k, a), (_, b) in zip(model.named_buffers(), first.named_buffers()):
        assert torch.equal(a, b), k
