"""ACFL Fig. 4 / 5a / 5b from a tiny run: files, pixel sizes, chosen identities and colours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hardreid.cli import main
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.runs import train
from hardreid.viz import figures
from hardreid.viz.figures import fig4_size, hard_positive_figure, load_run_model, run_state, tsne_figure, tsne_of_run

from conftest import tiny_config

CALLS: list[dict] = []


def stand_in_hpi(model, anchor_features, positives, prototypes, steps, lr, temperature, loss="re"):
    """Stand-in for hardreid.methods.generators.hpi.hard_positive_instances: ``steps`` normalised ascent steps on
    KL(v(anchor) || v(model(x))), v = softmax(f . C / tau) (ACFL Eq. 4, 7), per-image gradient norm."""
    CALLS.append({"steps": steps, "lr": lr, "temperature": temperature, "loss": loss, "prototypes": prototypes.shape})
    target = F.softmax(anchor_features.detach() @ prototypes.t() / temperature, dim=1)
    x = positives.detach().clone()
    for _ in range(steps):
        x.requires_grad_(True)
        log_v = F.log_softmax(model(x) @ prototypes.t() / temperature, dim=1)
        grad, = torch.autograd.grad(F.kl_div(log_v, target, reduction="sum"), x)
        x = (x + lr * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)).detach()
    return x


@pytest.fixture(scope="module")
def tiny_run(tiny_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("figs") / "run"
    train(tiny_config(train={"epochs": 1, "iters": 2}), load_dataset("market", tiny_root), run, log_to_stderr=False)
    return run


@pytest.fixture(scope="module")
def state(tiny_run, tiny_root):
    cfg, model = load_run_model(tiny_run)
    return run_state(cfg, model, load_dataset("market", tiny_root))


def test_run_state_rebuilds_the_epoch(state, tiny_root):
    data = load_dataset("market", tiny_root)
    n = len(data.train)
    assert state.features.shape == (n, state.model.feat_dim) and state.labels.shape == (n,)
    nc = int(state.labels.max()) + 1
    assert state.prototypes.shape == (nc, state.model.feat_dim)
    # prototype = normalised mean of the cluster's features: two float32 means of n unit vectors in another order, each
    # within n u max|x| (n <= 12, |x| < 0.2), at most doubled by normalising means of norm > 0.5: < 1e-6 << atol 1e-5
    for c in range(nc):
        torch.testing.assert_close(state.prototypes[c], F.normalize(state.features[state.labels == c].mean(0), dim=0))


def test_fig4_layout_and_generator_inputs(state, tiny_root, tmp_path):
    CALLS.clear()
    data = load_dataset("market", tiny_root)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    out = hard_positive_figure(state, data, tmp_path / "fig4.png", num_queries=3, generate=stand_in_hpi)
    image = Image.open(out)
    assert fig4_size(3) == (4 * 64 + 5 * 6, 16 + 3 * (128 + 14 + 6) + 6)
    assert image.size == (286, 466)
    cfg = state.cfg
    assert CALLS == [{"steps": cfg.acfl.hpi_steps, "lr": cfg.acfl.hpi_lr, "temperature": cfg.memory.temperature,
                      "loss": "re", "prototypes": state.prototypes.shape}]
    pixels = np.asarray(image).astype(int)
    y0, y1 = 16, 16 + 128
    easy = pixels[y0:y1, 6 + 70:6 + 70 + 64]
    hard = pixels[y0:y1, 6 + 140:6 + 140 + 64]
    assert np.abs(easy - hard).max() > 0  # the generated positive differs from the easy one
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_easy_pairs_come_from_distinct_clusters(state):
    pairs = figures.choose_easy_pairs(state.features, state.labels, 4, seed=1)
    clusters = [int(state.labels[q]) for q, _ in pairs]
    assert len(set(clusters)) == len(pairs) and all(q != p and state.labels[q] == state.labels[p] for q, p in pairs)
    # easy = the most similar other member. Values are compared, not indices: a near-tie the two products (matrix vs
    # dot) break differently changes the value by less than the tie's gap, far inside rel 1e-6
    for q, p in pairs:
        members = [m for m in (state.labels == state.labels[q]).nonzero().flatten().tolist() if m != q]
        assert float(state.features[p] @ state.features[q]) == pytest.approx(max(float(state.features[m] @ state.features[q]) for m in members))


def test_fig5b_all_identities_of_a_small_set_one_colour_each(state, tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    result = tsne_of_run(state, data, tmp_path / "tsne.png")
    truth = sorted({s.pid for s in data.train})
    assert result.labelled_by == "true identity" and result.identities == truth  # 10 < 15: all of them
    assert len(result.point_ids) == len(data.train)
    image = Image.open(result.path).convert("RGB")
    assert image.size == (600, 600)
    colours = set(result.colours.values())
    assert len(colours) == len(truth)
    present = {tuple(p) for p in np.asarray(image).reshape(-1, 3).tolist()}
    assert colours <= present  # every identity's colour is drawn


def test_fig5b_picks_15_random_identities_seeded(tmp_path):
    ids = np.repeat(np.arange(-1, 25), 4)  # 25 identities and outliers (-1)
    a = figures.choose_identities(ids, 15, seed=5)
    assert len(a) == 15 == len(set(a)) and -1 not in a and set(a) <= set(range(25))
    assert a == figures.choose_identities(ids, 15, seed=5) != figures.choose_identities(ids, 15, seed=6)
    assert figures.choose_identities(ids, 40, seed=5) == list(range(25))
    feats = F.normalize(torch.randn(len(ids), 16), dim=1)
    result = tsne_figure(feats, ids, tmp_path / "a.png", seed=5)
    assert result.identities == a and sorted(set(result.point_ids.tolist())) == a and len(result.point_ids) == 15 * 4
    assert len(set(result.colours.values())) == 15
    with pytest.raises(UserError, match="no identity"):
        figures.choose_identities(np.full(4, -1), 15)


def test_figures_command(tiny_run, tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(figures, "_default_generator", lambda: stand_in_hpi)
    out = tmp_path / "figs"
    assert main(["figures", "--run", str(tiny_run), "--data-root", str(tiny_root), "--output", str(out),
                 "--workers", "0", "--device", "cpu", "--queries", "2", "--identities", "4"]) == 0
    assert Image.open(out / "fig4_hard_positives.png").size == fig4_size(2)
    assert Image.open(out / "fig5a_curves.png").size == (1100, 396)  # viz/curves.py: 10 x 3.6 in at 110 dpi
    assert Image.open(out / "fig5b_tsne.png").size == (600, 600)
    assert "4 identities, colour = true identity" in capsys.readouterr().out
    history = json.loads((tiny_run / "metrics.json").read_text())
    assert len(history) == 1


def test_figures_command_errors(tiny_run, tmp_path, capsys):
    assert main(["figures", "--run", str(tiny_run), "--which", "fig4", "--output", str(tmp_path)]) == 2
    assert "fig4 need the training images: pass --data-root" in capsys.readouterr().err
    assert main(["figures", "--run", str(tmp_path / "nothing"), "--which", "fig5a"]) == 2
    assert "has no metrics.json" in capsys.readouterr().err
    assert main(["figures", "--run", str(tiny_run), "--which", "fig5a", "--output", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "fig5a_curves.png").is_file()


def test_fig4_with_the_real_hard_positive_generator(state, tiny_root, tmp_path):
    """Fig. 4 through hardreid.methods.generators.hpi (Eq. 3-4): the picture is made and the model is untouched."""
    data = load_dataset("market", tiny_root)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    image = np.asarray(Image.open(hard_positive_figure(state, data, tmp_path / "fig4.png", num_queries=2))).astype(int)
    easy = image[16:16 + 128, 6 + 70:6 + 70 + 64]
    hard = image[16:16 + 128, 6 + 140:6 + 140 + 64]
    assert np.abs(easy - hard).max() > 0
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, before[key]), key
