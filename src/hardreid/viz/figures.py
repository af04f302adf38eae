"""The ACFL paper's pictures from a run (ACFL Fig. 4, Fig. 5a, Fig. 5b).

* Fig. 4 (``hard_positive_figure``): each row a query, an easy positive (the
  most similar other image of its cluster) and the hard positive that
  ``hard_positive_instances`` (ACFL Eq. 3-4) makes from it, plus the
  perturbation magnified.
* Fig. 5a (``hardreid.viz.curves.plot_training_curves``): top-1, mAP, clusters
  and outliers per epoch.
* Fig. 5b (``tsne_figure``): t-SNE of the training features of 15 random
  identities, one colour per identity.

``run_state`` rebuilds what a checkpoint's epoch knew: the training features
of the checkpoint model, clustered with the run's config
(``pseudo_labels.cluster_epoch``), and prototypes = cluster means.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import Config, load_config
from ..data.images import read_image
from ..data.transforms import eval_transform
from ..data.types import ReidDataset
from ..errors import UserError
from ..evaluation.features import extract_features
from ..memory.cluster_memory import cluster_centroids
from ..models import ReidModel

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from ..files import atomic_save_figure, atomic_save_image

# hard_positive_instances(model, anchor_features, positives, prototypes, steps, lr, temperature, loss) -> images
HardPositiveFn = Callable[..., torch.Tensor]

# Fig. 4 layout (pixels): 4 columns of CELL images, PAD between, a header line and a caption line under each image.
CELL = (64, 128)  # width, height of one image
PAD, HEADER, CAPTION = 6, 16, 14
COLUMNS = ("query", "easy pos.", "hard pos.", "change")  # "change": (hard - easy) magnified
TSNE_SIZE = (6.0, 6.0)  # inches at TSNE_DPI: 600 x 600 pixels
TSNE_DPI = 100


def fig4_size(rows: int) -> tuple[int, int]:
    """(width, height) of the Fig. 4 picture with ``rows`` queries."""
    return len(COLUMNS) * CELL[0] + (len(COLUMNS) + 1) * PAD, HEADER + rows * (CELL[1] + CAPTION + PAD) + PAD


@dataclass
class RunState:
    """A checkpoint's model with the epoch data rebuilt from it."""

    cfg: Config
    model: ReidModel
    features: torch.Tensor  # N x D, training images, L2-normalised
    labels: torch.Tensor  # N pseudo labels, -1 = outlier
    prototypes: torch.Tensor  # Nc x D, L2-normalised cluster means


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[Config, ReidModel]:
    """The run's config (``config.yaml``) and the checkpoint's model (default ``checkpoints/last.pth``)."""
    from ..models import model_from_config
    from ..training.checkpoint import load_checkpoint, load_model_state

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass the --output folder of 'hardreid train'")
    cfg = load_config(run_dir / "config.yaml")
    path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.pth"
    state = load_checkpoint(path)
    cfg.model.weights, cfg.model.pretrained = "", False  # the checkpoint holds every weight
    model = model_from_config(cfg)
    load_model_state(model, state, path)
    return cfg, model.eval()


def run_state(cfg: Config, model: ReidModel, dataset: ReidDataset, device: torch.device | str = "cpu") -> RunState:
    """Features of the training set, pseudo labels with the run's clustering settings, prototypes = cluster means."""
    from ..pseudo_labels import cluster_epoch

    features = extract_features(model.to(device), dataset.train, eval_transform(cfg.data), cfg.eval.batch_size,
                                cfg.data.workers, device, desc="training features")
    clusters = cluster_epoch(features, [s.camid for s in dataset.train], cfg.cluster)
    labels = torch.as_tensor(clusters.labels, dtype=torch.long)
    prototypes = cluster_centroids(features, labels, clusters.stats.num_clusters)
    return RunState(cfg, model, features, labels, prototypes)


# -- Fig. 4 --------------------------------------------------------------------------------------
def _default_generator() -> HardPositiveFn:
    try:
        from ..methods.generators.hpi import hard_positive_instances
    except ImportError as exc:
        raise UserError(f"fig4 needs ACFL's hard positive generator (hardreid.methods.generators.hpi), which is not "
                        f"available here ({exc}); make only fig5a / fig5b with --which fig5a fig5b") from None
    return hard_positive_instances


def choose_easy_pairs(features: torch.Tensor, labels: torch.Tensor, num: int, seed: int = 0) -> list[tuple[int, int]]:
    """``num`` (query, easy positive) pairs from distinct random clusters; easy = the most similar other member."""
    clusters = [c for c in labels.unique().tolist() if c >= 0 and int((labels == c).sum()) >= 2]
    if not clusters:
        raise UserError("fig4 needs a cluster with two images or more; the checkpoint's clustering found none")
    rng = random.Random(seed)
    pairs = []
    for c in sorted(rng.sample(clusters, min(num, len(clusters)))):
        members = (labels == c).nonzero().flatten().tolist()
        query = rng.choice(members)
        others = [m for m in members if m != query]
        sims = features[others] @ features[query]
        pairs.append((query, others[int(sims.argmax())]))
    return pairs


def _load(paths: list[str], cfg: Config) -> torch.Tensor:
    transform = eval_transform(cfg.data)
    return torch.stack([transform(read_image(p)) for p in paths])


def _to_pil(image: torch.Tensor, cfg: Config) -> Image.Image:
    """Normalised C x H x W -> display image (de-normalised with the config's mean/std), CELL size."""
    mean = torch.tensor(cfg.data.mean).view(3, 1, 1)
    std = torch.tensor(cfg.data.std).view(3, 1, 1)
    pixels = (image.detach().cpu().float() * std + mean).clamp(0, 1)
    array = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize(CELL, Image.NEAREST)


def _perturbation(hard: torch.Tensor, easy: torch.Tensor, cfg: Config) -> tuple[Image.Image, float]:
    """The pixel change hard - easy, magnified so its largest value reaches the grey range's end."""
    std = torch.tensor(cfg.data.std).view(3, 1, 1)
    delta = ((hard - easy).detach().cpu().float() * std)  # in [0, 1] pixel units
    gain = 0.5 / max(float(delta.abs().max()), 1e-8)
    array = ((0.5 + gain * delta).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize(CELL, Image.NEAREST), gain


def hard_positive_figure(state: RunState, dataset: ReidDataset, out_path: str | Path, num_queries: int = 4,
                         seed: int = 0, generate: HardPositiveFn | None = None, loss: str | None = None,
                         device: torch.device | str = "cpu") -> Path:
    """ACFL Fig. 4: query | easy positive | hard positive (Eq. 3-4 from the easy one) | perturbation magnified.

    Captions give the cosine similarity of each positive to the query under the checkpoint model.
    ``loss``: the L_ins that drives the ascent (default: the run's ``acfl.alignment``, re or distance).
    """
    generate = generate or _default_generator()
    cfg, model = state.cfg, state.model.to(device).eval()
    pairs = choose_easy_pairs(state.features, state.labels, num_queries, seed)
    queries = _load([dataset.train[q].path for q, _ in pairs], cfg).to(device)
    easy = _load([dataset.train[p].path for _, p in pairs], cfg).to(device)
    with torch.no_grad():
        anchors = model(queries)
    hard = generate(model, anchors, easy, state.prototypes.to(device), steps=cfg.acfl.hpi_steps, lr=cfg.acfl.hpi_lr,
                    temperature=cfg.memory.temperature, loss=loss or cfg.acfl.alignment).detach()
    with torch.no_grad():
        cos_easy = (model(easy) * anchors).sum(1).tolist()
        cos_hard = (model(hard) * anchors).sum(1).tolist()
    width, height = fig4_size(len(pairs))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(COLUMNS):
        draw.text((PAD + col * (CELL[0] + PAD), 2), title, fill="black")
    for row in range(len(pairs)):
        y = HEADER + row * (CELL[1] + CAPTION + PAD)
        delta, gain = _perturbation(hard[row], easy[row], cfg)
        cells = [(_to_pil(queries[row], cfg), f"cluster {state.labels[pairs[row][0]].item()}"),
                 (_to_pil(easy[row], cfg), f"cos {cos_easy[row]:.2f}"),
                 (_to_pil(hard[row], cfg), f"cos {cos_hard[row]:.2f}"),
                 (delta, f"x{gain:.0f}")]
        for col, (image, caption) in enumerate(cells):
            x = PAD + col * (CELL[0] + PAD)
            canvas.paste(image, (x, y))
            draw.text((x, y + CELL[1] + 1), caption, fill="black")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(out_path, canvas)
    return out_path


# -- Fig. 5b -------------------------------------------------------------------------------------
@dataclass
class TsneResult:
    path: Path
    identities: list[int]  # the chosen identities, sorted
    point_ids: np.ndarray  # identity of every plotted point
    colours: dict[int, tuple[int, int, int]]  # identity -> RGB (0-255) of its points
    labelled_by: str  # "true identity" or "pseudo label"


def choose_identities(identities: np.ndarray, num_ids: int = 15, seed: int = 0) -> list[int]:
    """``num_ids`` distinct identities (all if fewer) drawn at random (seeded); negative ids are never chosen."""
    identities = np.asarray(identities)
    pool = np.unique(identities[identities >= 0])
    if pool.size == 0:
        raise UserError("fig5b: no identity to show (every image is an outlier)")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(pool, size=min(num_ids, pool.size), replace=False).tolist())


def tsne_figure(features: torch.Tensor, identities: np.ndarray, out_path: str | Path, num_ids: int = 15,
                seed: int = 0, labelled_by: str = "true identity") -> TsneResult:
    """ACFL Fig. 5b: t-SNE (scikit-learn) of the features of ``num_ids`` random identities (all if fewer).

    ``identities`` gives every row's identity (true or pseudo label); negative values are never chosen.
    """
    from sklearn.manifold import TSNE

    identities = np.asarray(identities)
    chosen = choose_identities(identities, num_ids, seed)
    rows = np.flatnonzero(np.isin(identities, chosen))
    points = features[rows].float().numpy()
    perplexity = float(min(30.0, max(1.0, (len(rows) - 1) / 3)))  # must stay below the number of points
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
    palette = plt.get_cmap("tab20" if len(chosen) > 10 else "tab10")
    colours = {pid: tuple(int(round(255 * c)) for c in palette(i % palette.N)[:3]) for i, pid in enumerate(chosen)}
    fig, ax = plt.subplots(figsize=TSNE_SIZE, dpi=TSNE_DPI)
    for pid in chosen:
        mine = identities[rows] == pid
        ax.scatter(xy[mine, 0], xy[mine, 1], s=36, color=np.array(colours[pid]) / 255, edgecolors="none", label=str(pid))
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(chosen)} identities ({len(rows)} images), colour = {labelled_by}", fontsize=9)
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.94)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(out_path, fig, dpi=TSNE_DPI)
    plt.close(fig)
    return TsneResult(out_path, chosen, identities[rows], colours, labelled_by)


def tsne_of_run(state: RunState, dataset: ReidDataset, out_path: str | Path, num_ids: int = 15, seed: int = 0) -> TsneResult:
    """Fig. 5b from a run: coloured by true identity when the training set has labels, else by pseudo label."""
    if dataset.has_train_labels:
        ids, by = np.array([s.pid for s in dataset.train]), "true identity"
    else:
        ids, by = state.labels.numpy(), "pseudo label"
    return tsne_figure(state.features, ids, out_path, num_ids, seed, by)
