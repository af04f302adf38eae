"""Self-guided hard negative generation: networks, fusion, losses, alternating updates, schedule, end to end."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hardreid.config import load_config
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.methods.generators.hng import HardNegativeGeneration
from hardreid.methods.generators.hng import fusion as FU
from hardreid.methods.generators.hng import losses as L
from hardreid.methods.generators.hng.networks import Decoder, Encoder, Generator, PatchDiscriminator, to_gan_space, to_reid_space
from hardreid.runs import train
from hardreid.methods import Batch, EpochData, build_method
from hardreid.models import model_from_config
from hardreid.training.trainer import build_optimizer, piecewise_lr_factor

from conftest import tiny_config
from rounding import U32

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hng"
CPU = torch.device("cpu")
SMALL = {"ngf": 4, "ndf": 4}


# --------------------------------------------------------------------------- networks

@pytest.mark.parametrize("size", [(128, 64), (256, 128)])
def test_generator_reproduces_the_input_size(size):
    g = Generator(ngf=8)
    x = torch.rand(2, 3, *size) * 2 - 1
    f = g.encode(x)
    assert f.shape == (2, 32, size[0] // 4, size[1] // 4)
    y = g.decode(f)
    assert y.shape == x.shape and y.abs().max() <= 1  # tanh range
    assert g(x).shape == x.shape


def test_network_structure_and_discriminator_patches():
    enc = Encoder(ngf=8, res_blocks=3)
    convs = [m for m in enc.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(7, 7), (3, 3), (3, 3)] and [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2)]
    assert sum(type(m).__name__ == "ResidualBlock" for m in enc.net) == 3
    dec = Decoder(ngf=8)
    assert sum(type(m).__name__ == "ResidualBlock" for m in dec.net) == 3
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in dec.net) == 2 and isinstance(dec.net[-1], torch.nn.Tanh)
    d = PatchDiscriminator(ndf=8)
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in d.net) == 3
    scores = d(torch.randn(2, 3, 128, 64))
    assert scores.shape[:2] == (2, 1) and scores.shape[2] > 1 and scores.shape[3] > 1  # one score per patch
    concat = Decoder(ngf=8, in_channels=64)
    assert concat(torch.randn(1, 64, 8, 4)).shape == (1, 3, 32, 16)
    with pytest.raises(UserError, match="divisible by 4"):
        Generator(ngf=8).encode(torch.randn(1, 3, 30, 16))


def test_image_space_round_trip():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x01 = torch.rand(2, 3, 8, 4)
    reid = (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(to_gan_space(reid, mean, std), x01 * 2 - 1)
    torch.testing.assert_close(to_reid_space(to_gan_space(reid, mean, std), mean, std), reid)


# --------------------------------------------------------------------------- fusion

def _mean_relative_error(x: torch.Tensor) -> float:
    """Relative rounding bound of the channel vector of means of x (C x rows x W, float32): each of the C means sums
    n = rows * W values within n u sum|x| (tests/rounding.py), and is divided once."""
    n = x[0].numel()
    return float((n * U32 * x.abs().sum(dim=(1, 2)) / n + U32 * x.mean(dim=(1, 2)).abs()).norm() / x.mean(dim=(1, 2)).norm())


def naive_part_fusion(f_anc, f_neg, lam, stride):
    """A plain loop over windows and rows (Eq. 2-3); also the smallest margin, over the images, between the chosen
    window's cosine similarity and the runner-up's, in units of the rounding bound of a similarity."""
    b, c, h, w = f_neg.shape
    size = h // 2
    out, chosen, margin = torch.empty_like(f_anc), [], math.inf
    for i in range(b):
        g_anc = f_anc[i].mean(dim=(1, 2))
        sims, bounds = [], []
        for start in range(0, h - size + 1, stride):
            g = f_neg[i, :, start:start + size, :].mean(dim=(1, 2))
            sims.append((float(torch.dot(g_anc, g) / (g_anc.norm() * g.norm())), start))
            # a cosine moves by at most twice the relative errors of its two vectors, plus its own C-term dot and norms
            bounds.append(2 * (_mean_relative_error(f_anc[i]) + _mean_relative_error(f_neg[i, :, start:start + size, :]))
                          + (2 * c + 4) * U32)
        best_sim, best = max(sims, key=lambda t: t[0])  # first of equals: as the implementation's argmax
        if len(sims) > 1:  # two computations (the implementation's, this loop's) agree when the gap exceeds both bounds
            runner_up = sorted(sim for sim, _ in sims)[-2]
            margin = min(margin, (best_sim - runner_up) / (2 * max(bounds)))
        chosen.append((best, best + size))
        for r in range(h):
            a = lam if best <= r < best + size else 1 - lam
            out[i, :, r, :] = a * f_anc[i, :, r, :] + (1 - a) * f_neg[i, :, r, :]
    return out, torch.tensor(chosen), margin


def test_part_fusion_selects_the_most_similar_window_and_mixes_lambda_inside():
    # hand-made latent maps: H = 8, windows of 4 rows at starts 0, 2, 4; the negative's rows 4..7 point the anchor's way
    c, h, w = 3, 8, 2
    f_anc = torch.zeros(1, c, h, w)
    f_anc[:, 0] = 1.0
    f_neg = torch.zeros(1, c, h, w)
    f_neg[:, 1, :4] = 1.0  # rows 0-3: orthogonal to the anchor
    f_neg[:, 0, 4:] = 1.0  # rows 4-7: parallel to it
    fused = FU.part_fusion(f_anc, f_neg, lam=0.75, stride=2)
    assert fused.part_rows.tolist() == [[4, 8]]
    assert FU.part_windows(8, 2) == [(0, 4), (2, 6), (4, 8)]
    torch.testing.assert_close(fused.features[0, :, 5], 0.75 * f_anc[0, :, 5] + 0.25 * f_neg[0, :, 5])  # inside, Eq. 2
    torch.testing.assert_close(fused.features[0, :, 1], 0.25 * f_anc[0, :, 1] + 0.75 * f_neg[0, :, 1])  # outside, Eq. 3
    torch.manual_seed(0)
    for h, stride in ((16, 2), (7, 2), (8, 1), (32, 3)):
        a, n = torch.randn(4, 5, h, 3), torch.randn(4, 5, h, 3)
        fused = FU.part_fusion(a, n, 0.75, stride)
        expected, rows, margin = naive_part_fusion(a, n, 0.75, stride)
        assert margin > 10  # no near-tie between windows: both computations choose the same one on every CPU
        assert torch.equal(fused.part_rows, rows)
        # the same elementwise w a + (1 - w) n with w in {0.75, 0.25} (exact in binary): equal on every CPU
        torch.testing.assert_close(fused.features, expected)


def test_other_fusions_follow_table_2():
    torch.manual_seed(1)
    a, n = torch.randn(2, 4, 6, 3), torch.randn(2, 4, 6, 3)
    torch.testing.assert_close(FU.fuse("global", a, n, 0.75).features, 0.75 * a + 0.25 * n)
    cat = FU.fuse("concat", a, n, 0.75).features
    assert cat.shape == (2, 8, 6, 3) and torch.equal(cat[:, :4], a) and torch.equal(cat[:, 4:], n)
    noisy1 = FU.fuse("noise", a, n, 0.75, noise_std=0.5, generator=torch.Generator().manual_seed(3)).features
    noisy2 = FU.fuse("noise", a, torch.zeros_like(n), 0.75, noise_std=0.5, generator=torch.Generator().manual_seed(3)).features
    assert torch.equal(noisy1, noisy2)  # the negative is not used
    assert abs(float((noisy1 - a).std()) - 0.5) < 0.1 and not torch.equal(noisy1, a)
    assert FU.fuse("global", a, n, 0.75).part_rows is None
    va, vn = F.normalize(torch.randn(3, 5), dim=1), F.normalize(torch.randn(3, 5), dim=1)
    torch.testing.assert_close(FU.mixup_features(va, vn, 0.75), F.normalize(0.75 * va + 0.25 * vn, dim=1))
    with pytest.raises(UserError, match="hng.fusion"):
        FU.fuse("mixup", a, n, 0.75)  # mixup works on re-ID features, not on the generator's latent maps


def test_random_negatives_have_another_label_and_cover_all_of_them():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        neg = FU.pick_negatives(labels, g)
        assert (labels[neg] != labels).all()
        seen.add(int(neg[0]))
    assert seen == {2, 3, 4, 5}
    with pytest.raises(UserError, match="two pseudo identities"):
        FU.pick_negatives(torch.tensor([1, 1, 1]))


# --------------------------------------------------------------------------- losses

def test_lsgan_losses_by_hand():
    d_real = torch.tensor([[0.5, 1.0]])  # (x - 1)^2: 0.25, 0 -> mean 0.125
    d_rec = torch.tensor([[0.2, 0.4]])  # x^2: 0.04, 0.16 -> 0.1;   (x - 1)^2: 0.64, 0.36 -> 0.5
    d_gen = torch.tensor([[1.0, -1.0]])  # x^2: 1, 1 -> 1;          (x - 1)^2: 0, 4 -> 2
    assert L.lsgan_discriminator_loss(d_real, d_rec, d_gen).item() == pytest.approx((0.125 + 0.1 + 1.0) / 3)
    assert L.lsgan_generator_loss(d_rec, d_gen).item() == pytest.approx((0.5 + 2.0) / 2)
    assert L.reconstruction_loss(torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.0])).item() == pytest.approx(0.75)


def _direct_nce(anchor, candidates, pos, tau):
    num = sum(math.exp(float(anchor @ c) / tau) for c in pos)
    den = sum(math.exp(float(anchor @ c) / tau) for c in candidates)
    return -math.log(num / den)


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_hng_loss_matches_eq_4_and_5():
    torch.manual_seed(2)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    v, v_gen, v_aug = _unit(6, 4), _unit(6, 4), _unit(6, 4)
    tau = 0.5
    expected = []
    for i in range(6):
        positives = [v_gen[k] for k in range(6) if labels[k] == labels[i]]  # P^i
        negatives = [v_gen[k] for k in range(6) if labels[k] != labels[i]] + list(v_aug) + [v[k] for k in range(6) if k != i]
        expected.append(_direct_nce(v[i], positives + negatives, positives, tau))
    assert L.hng_loss(v, v_gen, v_aug, labels, tau).item() == pytest.approx(sum(expected) / 6, rel=1e-9)


def test_con_loss_matches_eq_7_and_8_with_generated_images_and_parts():
    torch.manual_seed(3)
    labels = torch.tensor([0, 0, 1, 1, 2])  # anchor 4 has its augmented view as only positive
    v, v_aug, v_gen, v_pa = _unit(5, 4), _unit(5, 4), _unit(5, 4), _unit(5, 4)
    tau = 0.3
    expected = []
    for i in range(5):
        positives = [v[k] for k in range(5) if labels[k] == labels[i] and k != i] + [v_aug[k] for k in range(5) if labels[k] == labels[i]]
        negatives = [v[k] for k in range(5) if labels[k] != labels[i]] + [v_aug[k] for k in range(5) if labels[k] != labels[i]]
        negatives += list(v_gen) + list(v_pa)  # X_gen and X_pa: all negatives
        expected.append(_direct_nce(v[i], positives + negatives, positives, tau))
    got = L.con_loss(v, v_aug, labels, tau, [v_gen, v_pa]).item()
    assert got == pytest.approx(sum(expected) / 5, rel=1e-9)
    # without generated negatives the loss is lower (fewer terms in the denominator)
    assert L.con_loss(v, v_aug, labels, tau).item() < got


def test_pair_statistics_hardest_mined_negative():
    v = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    stats = L.pair_statistics(v, labels, v.flip(0), 0.05)
    sim = v @ v.t()
    mined = [max(sim[0, 2], sim[0, 3]), max(sim[1, 2], sim[1, 3]), max(sim[2, 0], sim[2, 1]), max(sim[3, 0], sim[3, 1])]
    assert stats["hng_sim_mined"] == pytest.approx(float(sum(mined) / 4), rel=1e-6)
    assert stats["hng_sim_generated"] == pytest.approx(float((v * v.flip(0)).sum(1).mean()), rel=1e-6)


# --------------------------------------------------------------------------- alternating updates

def _setup(warmup_epochs: int = 0, **hng):
    torch.manual_seed(0)
    cfg = tiny_config(method={"hard_samples": ["hng"]}, hng={"warmup_epochs": warmup_epochs, **SMALL, **hng})
    model = model_from_config(cfg)
    optimizer, _ = build_optimizer(cfg, model)
    method = build_method(cfg, CPU)
    labels = torch.arange(16) % 4
    method.start_epoch(EpochData(0, F.normalize(torch.randn(16, model.feat_dim), dim=1), labels,
                                 torch.zeros(16, dtype=torch.long), 4), model)
    batch = Batch(torch.randn(8, 3, 64, 32), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.zeros(8, dtype=torch.long),
                  torch.arange(8), [torch.randn(8, 3, 64, 32)])
    model.train()
    hng = method.generators[0]
    assert isinstance(hng, HardNegativeGeneration)
    return cfg, model, optimizer, method, hng, batch


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module, before):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def test_each_update_step_changes_only_its_own_network():
    cfg, model, optimizer, method, hng, batch = _setup()
    x = to_gan_space(batch.images, cfg.data.mean, cfg.data.std)
    negatives = FU.pick_negatives(batch.labels, hng.rng)
    nets = {"G": hng.generator, "D": hng.discriminator, "E": model}

    before = {k: _snapshot(m) for k, m in nets.items()}
    generated = hng.generate(x, negatives)
    hng.discriminator_step(x, generated)
    assert _changed(hng.discriminator, before["D"]) and not _changed(hng.generator, before["G"]) and not _changed(model, before["E"])

    before = {k: _snapshot(m) for k, m in nets.items()}
    d_grads = [p.grad.clone() for p in hng.discriminator.parameters()]  # left by the D step
    hng.generator_step(model, batch, x, generated)
    assert _changed(hng.generator, before["G"])
    assert not _changed(hng.discriminator, before["D"])
    assert not _changed(model, before["E"])  # parameters and BatchNorm running statistics
    assert all(p.grad is None for p in model.parameters())  # no gradient into the re-ID network
    assert all(torch.equal(p.grad, g) for p, g in zip(hng.discriminator.parameters(), d_grads))  # nor into D
    assert model.training and all(p.requires_grad for p in model.parameters() if p is not model.neck.bias)

    # the re-ID step: the trainer's optimiser on the base's loss + L_con; G and D are constants
    out = method.training_step(model, batch, epoch=0, step=0)
    assert set(out.logs) >= {"loss_contrast", "loss_hng_con", "hng_d_adv", "hng_g_adv", "hng_rec", "hng_hng"}
    assert not hng.pending.generated.requires_grad and not hng.pending.parts.requires_grad
    before = {k: _snapshot(m) for k, m in nets.items()}
    g_grads = [None if p.grad is None else p.grad.clone() for p in hng.generator.parameters()]
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    method.after_step(out)
    assert _changed(model, before["E"])
    assert not _changed(hng.generator, before["G"]) and not _changed(hng.discriminator, before["D"])
    for p, g in zip(hng.generator.parameters(), g_grads):  # the re-ID backward put nothing into G
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


@pytest.mark.parametrize("bn_synthetic", ["frozen", pytest.param("update", marks=pytest.mark.slow)])
def test_running_statistics_after_a_joint_step_come_from_the_real_images(bn_synthetic):
    """hng.bn_synthetic: frozen = the running statistics equal those of one forward over the real anchors only."""
    cfg, model, optimizer, method, hng, batch = _setup(bn_synthetic=bn_synthetic)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference(batch.images)  # what the base alone would do to the statistics
    out = method.training_step(model, batch, epoch=0, step=0)
    assert "loss_hng_con" in out.logs
    out.loss.backward()  # L_con still trains the network through the synthetic forward
    assert model.neck.weight.grad is not None
    same = [torch.equal(a, b) for (k, a), (_, b) in zip(model.named_buffers(), reference.named_buffers())
            if "running" in k]
    assert all(same) == (bn_synthetic == "frozen") and same
    with pytest.raises(UserError, match="bn_synthetic"):
        build_method(tiny_config(method={"hard_samples": ["hng"]}, hng={"bn_synthetic": "never"}), CPU)


def test_part_images_keep_only_the_selected_rows():
    _, _, _, _, hng, _ = _setup()
    images = torch.ones(2, 3, 16, 4)
    parts = hng.part_images(images, torch.tensor([[0, 2], [2, 4]]), latent_height=4)
    assert parts[0, :, :8].eq(1).all() and parts[0, :, 8:].eq(0).all()
    assert parts[1, :, 8:].eq(1).all() and parts[1, :, :8].eq(0).all()


def test_warmup_trains_only_the_generator_with_reconstruction():
    cfg, model, optimizer, method, hng, batch = _setup(warmup_epochs=1)
    g0, d0 = _snapshot(hng.generator), _snapshot(hng.discriminator)
    out = method.training_step(model, batch, epoch=0, step=0)
    assert set(out.logs) == {"hng_rec", "loss_contrast"}  # no L_con, no L_hng / L_adv
    assert _changed(hng.generator, g0) and not _changed(hng.discriminator, d0)
    assert hng.pending is None
    # "w/o gen warm-up": G stays as initialised during the warm-up
    cfg, model, optimizer, method, hng, batch = _setup(warmup_epochs=1, warmup_generator=False)
    g0 = _snapshot(hng.generator)
    out = method.training_step(model, batch, epoch=0, step=0)
    assert set(out.logs) == {"loss_contrast"} and not _changed(hng.generator, g0)


def test_mixup_and_concat_variants_run_a_joint_step():
    for fusion, extra in (("mixup", set()), ("concat", {"hng_d_adv"}), ("noise", {"hng_d_adv"}), ("global", {"hng_d_adv"})):
        cfg, model, optimizer, method, hng, batch = _setup(fusion=fusion)
        out = method.training_step(model, batch, epoch=0, step=0)
        assert "loss_hng_con" in out.logs and extra <= set(out.logs) and torch.isfinite(out.loss)
        assert (hng.generator is None) == (fusion == "mixup")
        if fusion != "mixup":
            assert hng.pending.parts is None  # only part fusion selects parts


def test_every_fusion_warms_up_its_generator_on_reconstruction():
    """The warm-up step (L_rec only) works for every decoder, the concatenation one included ([f, f] input)."""
    for fusion in ("part", "concat"):
        cfg, model, optimizer, method, hng, batch = _setup(warmup_epochs=1, fusion=fusion)
        x = to_gan_space(batch.images, cfg.data.mean, cfg.data.std)
        f = hng.generator.encode(x)
        wide = torch.cat([f, f], dim=1) if fusion == "concat" else f
        assert torch.equal(hng.generator(x), hng.generator.decode(wide))
        g0 = _snapshot(hng.generator)
        logs = hng.before_step(model, batch, epoch=0, step=0)
        assert set(logs) == {"hng_rec"} and _changed(hng.generator, g0)


def test_generator_lr_schedule_and_reid_lr_schedule():
    cfg, model, optimizer, method, hng, batch = _setup(warmup_epochs=50)
    assert [hng.lr_factor(e) for e in (0, 19, 20, 49, 50, 59, 60, 69)] == [1, 1, 0.1, 0.1, 1, 1, 0.1, 0.1]
    full = load_config(CONFIGS / "cluster_contrast_duke.yaml")
    factor = piecewise_lr_factor(full.optim.lr_schedule)
    assert [factor(e) for e in (0, 19, 20, 40, 49, 50, 59, 60, 69)] == [1, 1, 0.1, 0.01, 0.01, 1, 1, 0.1, 0.1]
    assert full.train.epochs == full.hng.warmup_epochs + 20
    opt, sched = build_optimizer(full, model)
    lrs = []
    for _ in range(61):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: nothing changes (keeps the scheduler's order check quiet)
        sched.step()
    assert lrs[19] == pytest.approx(3.5e-4) and lrs[20] == pytest.approx(3.5e-5) and lrs[50] == pytest.approx(3.5e-4)
    assert lrs[60] == pytest.approx(3.5e-5)
    with pytest.raises(UserError, match="start at epoch 0"):
        piecewise_lr_factor([[5, 1.0]])


def test_table3_configs():
    rows = {name: load_config(CONFIGS / f"warmup_{name}.yaml") for name in ("none", "no_gen", "no_reid")}
    assert rows["none"].hng.warmup_epochs == 0 and rows["none"].train.epochs == 20
    assert rows["no_gen"].hng.warmup_generator is False and rows["no_gen"].hng.warmup_epochs == 50
    factor = piecewise_lr_factor(rows["no_reid"].optim.lr_schedule)
    assert factor(0) == 0 and factor(49) == 0 and factor(50) == 1 and factor(60) == 0.1  # E frozen in the warm-up
    for row in rows.values():
        assert row.method.hard_samples == ["hng"]


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="hng.fusion"):
        build_method(tiny_config(method={"hard_samples": ["hng"]}, hng={"fusion": "blend"}), CPU)
    with pytest.raises(UserError, match="fusion_lambda"):
        build_method(tiny_config(method={"hard_samples": ["hng"]}, hng={"fusion_lambda": 1.5}), CPU)
    with pytest.raises(UserError, match="divisible by 4"):
        build_method(tiny_config(method={"hard_samples": ["hng"]}, data={"height": 62}), CPU)


# --------------------------------------------------------------------------- end to end

def test_hng_on_cluster_contrast_resumes_exactly_and_draws(tiny_root, tmp_path):
    """Epoch 1 = warm-up, epoch 2 = joint; 2 epochs straight == 1 epoch + resume."""
    data = load_dataset("market", tiny_root)
    settings = dict(method={"hard_samples": ["hng"]}, hng={"warmup_epochs": 1, "pictures": 4, **SMALL},
                    train={"eval_every": 1})  # evaluation draws from the global RNG: evaluate at the split point in both runs
    straight = train(tiny_config(**settings), data, tmp_path / "straight", log_to_stderr=False)
    first = tiny_config(**settings)
    first.train.epochs = 1
    train(first, data, tmp_path / "split", log_to_stderr=False)
    resumed = train(tiny_config(**settings), data, tmp_path / "split", resume=True, log_to_stderr=False)
    # a resumed run repeats the straight run's computations (same shapes, order, thread count; saved state exact): equal by construction
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    from hardreid.training.checkpoint import load_checkpoint

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pth")["method"]["hng"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pth")["method"]["hng"]
    for net in ("generator", "discriminator"):
        for key, value in a[net].items():
            torch.testing.assert_close(b[net][key], value, msg=f"{net}.{key}")
    rows = straight.history
    assert rows[0]["hng_stage_joint"] == 0 and "loss_hng_con" not in rows[0] and "hng_rec" in rows[0]
    assert rows[1]["hng_stage_joint"] == 1 and {"loss_hng_con", "hng_d_adv", "hng_sim_generated", "hng_sim_mined"} <= set(rows[1])
    assert resumed.history[1]["loss"] == pytest.approx(rows[1]["loss"])
    pictures = sorted((tmp_path / "straight" / "hng").glob("epoch_*.png"))
    assert [p.name for p in pictures] == ["epoch_001.png", "epoch_002.png"]
    from PIL import Image

    width, height = Image.open(pictures[0]).size
    assert height == 2 + 4 * (64 + 2) and width == 2 + 4 * (32 + 2)  # 4 rows (anchor, negative, generated, reconstruction) x 4
    assert (tmp_path / "straight" / "hng_similarity.png").is_file()


@pytest.mark.parametrize("setting", [{"base": "spcl", "hard_samples": ["hng"]}, {"base": "ice", "hard_samples": ["hng"]},
                                     {"base": "strong_baseline", "hard_samples": ["hng"]},
                                     {"base": "cluster_contrast", "hard_samples": ["hpf", "hpi", "hng"]}],
                         ids=["spcl", "ice", "strong_baseline", "acfl"])
def test_hng_plugs_into_every_base_and_acfl(tiny_root, tmp_path, setting):
    """Joint stage from the start: the base's own losses are kept and L_con is added."""
    data = load_dataset("market", tiny_root)
    cfg = tiny_config(method=setting, hng={"warmup_epochs": 0, "pictures": 0, **SMALL}, train={"epochs": 1, "eval_every": 0})
    row = train(cfg, data, tmp_path / "run", log_to_stderr=False).history[0]
    own = {"spcl": "loss_spcl", "ice": "loss_ice_agnostic", "cluster_contrast": "loss_contrast",
           "strong_baseline": "loss_ce"}[setting["base"]]
    assert {own, "loss_hng_con", "hng_d_adv", "hng_rec"} <= set(row), sorted(row)
    if "hpi" in setting["hard_samples"]:
        assert "loss_ins" in row
